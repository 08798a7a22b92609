"""Sluice management commands: ``seed_demo`` and ``sluice_dev``."""

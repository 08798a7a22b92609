"""Management commands for running Sluice locally."""

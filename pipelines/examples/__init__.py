"""Example workflows, not loaded by default: add a module's dotted path to
``SLUICE_WORKFLOW_MODULES`` to try it (e.g. ``pipelines.examples.trip_booking``)."""

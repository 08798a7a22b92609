"""Peer implementations for the Sluice benchmark (DBOS Transact, plain Celery chains).

Each peer runs its workload in subprocesses of its own so that the peer's global state
(DBOS's singleton, a Celery app) never enters the caller's process. Importing these
modules imports neither ``dbos`` nor the project's Django settings.
"""

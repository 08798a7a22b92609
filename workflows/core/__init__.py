"""The durable engine: definitions, the run context, the executor, the services, leases,
the doorbell, the sweep, the outbox, payloads and the engine's models.

Nothing here imports the product (the JSON API, keys, webhooks, operator pages, admin) or the
apps built on the engine (``reviews``, ``pipelines``); ``make lint`` checks that with
import-linter. Public names are re-exported by ``workflows`` itself (``from workflows import
start``); import from here only for engine internals.
"""

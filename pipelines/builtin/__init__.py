"""The built-in pipelines: thread_analysis (a state machine), support_ticket and
document_batch (code-first). Imported by ``PipelinesConfig.ready``, so every process that
loads Django (web, workers, beat) registers them."""

"""The Celery side of timemark: thin tasks around short, idempotent bodies.

`app` builds the worker app (core.queue settings + the tasks in `tasks`); `pipeline` runs a job
(probe → infer per chunk → finalize), `delivery` sends webhooks, `ingest` expands batches, `sweeper`
re-sends what a broker outage lost. `context` holds the per-process resources (the engine is loaded
lazily, once). `embedded` and `demo` run the whole service on one machine with no servers.
"""

"""Video ingestion jobs: a video file uploaded to the API becomes stored features, done by workers.

- :mod:`ingestion.storage`: where uploads wait for a worker (a shared directory or an S3 bucket);
- :mod:`ingestion.jobs`: job records in Redis (status, progress, timestamps, error, result);
- :mod:`ingestion.queue`: the queue, a Redis stream with a consumer group (why: see its docstring);
- :mod:`ingestion.worker`: the worker loop (take, heartbeat, extract, store, end or retry);
- :mod:`ingestion.wiring`, :mod:`ingestion.cli`: building workers from the settings, ``trdetr-worker``;
- :mod:`ingestion.metrics`: Prometheus metrics.

The HTTP side (``PUT /v1/videos/{id}/video``, ``GET /v1/jobs/{id}``) is in :mod:`service.routers.ingest`
and :mod:`service.ingest`. Nothing here imports torch: features come from :mod:`extraction` (ONNX
Runtime) and are stored through the service's own validation and feature store.
"""

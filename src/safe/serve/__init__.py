"""``safe serve``: an OpenAI-compatible chat endpoint over a trained SAFE run (FastAPI + uvicorn).

Modules: :mod:`~safe.serve.schemas` (request shapes and the 4xx errors), :mod:`~safe.serve.media`
(data: URLs, base64 audio -> images and waveforms, with the server's limits), :mod:`~safe.serve.engine`
(one policy pass and one ``generate`` per batch), :mod:`~safe.serve.batcher` (dynamic batching),
:mod:`~safe.serve.clip_cache` (LRU of encoder outputs by clip content), :mod:`~safe.serve.metrics`
(Prometheus), :mod:`~safe.models.certificate` (the deployment check) and :mod:`~safe.serve.app` (the app).

The server is a consumer of the library (it builds on :class:`safe.inference.pipeline.Pipeline`); nothing
in the library imports it.
"""

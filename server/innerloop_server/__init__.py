"""The innerloop HTTP server: checkpoints in, per-request few-shot adaptation out.

One module per job:

- :mod:`~innerloop_server.schemas`: the request/response contract (pydantic, strict);
- :mod:`~innerloop_server.limits`: every bound a request must respect, with defaults and flags;
- :mod:`~innerloop_server.errors`: 4xx errors that name the offending field;
- :mod:`~innerloop_server.decoding`: base64 images and vectors -> model inputs, labels -> indices;
- :mod:`~innerloop_server.registry`: the checkpoints being served and their cards;
- :mod:`~innerloop_server.batching`: many requests -> one padded ``adapt_and_predict`` call;
- :mod:`~innerloop_server.loop`: the inference-worker loop that keeps one bad request from failing
  the others in its batch;
- :mod:`~innerloop_server.api`: the LitServe ``LitAPI`` hooks wiring the above together;
- :mod:`~innerloop_server.middleware`: API key, overload shedding, body size, request logs;
- :mod:`~innerloop_server.metrics` and :mod:`~innerloop_server.logs`: Prometheus and JSON logs;
- :mod:`~innerloop_server.app`: builds and runs the ``LitServer``;
- :mod:`~innerloop_server.cli_serve` / :mod:`~innerloop_server.cli_models`: ``innerloop serve`` and
  ``innerloop models``.
"""

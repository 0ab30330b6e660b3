"""Every bound a request must respect: documented defaults, command-line flags, status codes.

Limits are part of the API (DESIGN principle 4). Each has a default below and a flag of
``innerloop serve``; exceeding one gets a 4xx whose ``detail`` names the field, the value found
and the bound, e.g. ``support[3].x: image is 5000x5000 = 25.0 Mpx; at most 1.0 Mpx allowed``.

Status codes: **413** for sizes (body bytes, encoded image bytes, image pixels, an image's
pixels once padded to a square, pixels per request, number of support or query items, work
per request), **408** for a body not received within ``--body-timeout``, **422** for
everything else (ways, steps, lr, top_k, label length, vector length, types, an adaptation that
diverged), **404** for an unknown model, **401** for a missing or wrong API key, **503** (with
``Retry-After``) when ``max_in_flight`` requests are already being served or the server drains.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

MiB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Request bounds enforced by the server (defaults suit Omniglot-sized few-shot tasks)."""

    max_body_bytes: int = 8 * MiB
    """Largest request body, in bytes (also given to LitServe as ``max_payload_size``)."""
    max_image_bytes: int = 1 * MiB
    """Largest single image after base64 decoding (the PNG/JPEG file), in bytes."""
    max_image_pixels: int = 1024 * 1024
    """Largest width x height of a single image, checked before its pixels are decoded."""
    max_request_pixels: int = 32 * 1024 * 1024
    """Most pixels one request may make the server decode, every image counted padded to a
    square (a 4096x1 strip costs 4096x4096): bounds decoding time per request."""
    max_support: int = 500
    """Most support items in one request."""
    max_query: int = 500
    """Most query items in one request."""
    max_ways: int = 100
    """Most classes in one request; a model's own card ``max_ways`` can only lower it."""
    max_steps: int = 100
    """Most inner-loop steps a request may ask for."""
    max_lr: float = 10.0
    """Largest inner-loop step size a request may ask for (the range is (0, max_lr])."""
    max_work: int = 5000
    """Most work one request may ask for, in ``support items x max(steps, 1) + query items``
    (one unit = one example through the model): bounds how long one request holds a worker.
    50-way 10-shot at 100 steps is 50,000 units, ~5 minutes of a 2-core CPU for a Conv4."""
    max_label_chars: int = 200
    """Longest string label."""
    max_in_flight: int = 128
    """Most /v1/predict requests being served at once (all HTTP processes); more get 503."""
    max_adapter_cache_bytes: int = 64 * MiB
    """Bytes of adapted parameters kept for ``/v1/adapt`` adapters (by the HTTP process, for
    all workers); the least recently used adapter is evicted first, and predicting with it is
    then a 404."""

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if not value > 0:
                raise ValueError(f"limit {item.name} must be positive, got {value!r}")

    def ways_for(self, card_max_ways: int) -> int:
        """The most ways a model accepts: its card's ``max_ways`` capped by ``max_ways``."""
        return max(2, min(int(card_max_ways), self.max_ways))

    @staticmethod
    def work(support: int, steps: int, query: int) -> int:
        """The work units of a request (see :attr:`max_work`)."""
        return support * max(steps, 1) + query


_HELP = {
    "max_body_bytes": "largest request body in bytes (413 above)",
    "max_image_bytes": "largest encoded image in bytes after base64 decoding (413 above)",
    "max_image_pixels": "largest image width*height, checked before decoding pixels (413 above)",
    "max_request_pixels": "most pixels per request, each image counted padded to a square "
    "(413 above)",
    "max_support": "most support items per request (413 above)",
    "max_query": "most query items per request (413 above)",
    "max_ways": "most classes per request; a model card's max_ways can lower it (422 above)",
    "max_steps": "most inner-loop steps a request may ask for (422 above)",
    "max_lr": "largest inner-loop lr a request may ask for; range is (0, max_lr] (422 outside)",
    "max_work": "most work per request: support items x max(steps, 1) + query items (413 above)",
    "max_label_chars": "longest string label (422 above)",
    "max_in_flight": "most /v1/predict requests served at once; more get 503 + Retry-After",
    "max_adapter_cache_bytes": "bytes of adapted parameters kept for /v1/adapt adapters (one "
    "cache for all workers); least recently used evicted first (then 404: adapt again)",
}


def add_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--max-...`` flag per limit, defaulting to :class:`Limits`' defaults."""
    group = parser.add_argument_group("request limits")
    defaults = Limits()
    for item in fields(Limits):
        kind = float if item.name == "max_lr" else int
        group.add_argument(
            "--" + item.name.replace("_", "-"),
            type=kind,
            default=getattr(defaults, item.name),
            metavar="N",
            help=_HELP[item.name] + " (default: %(default)s)",
        )


def limits_from_args(args: argparse.Namespace) -> Limits:
    return Limits(**{item.name: getattr(args, item.name) for item in fields(Limits)})

"""A WarpGrad checkpoint is served like any other: its card lists the warp-layers, a request
adapts only the task-adaptable layers (warp-layers held fixed) and gets the same predictions as
``Learner.adapt_and_predict`` offline."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from server_harness import ServerProcess, glyph

from innerloop.checkpoint import build_card, load_checkpoint, save_checkpoint
from innerloop.learner import InnerDefaults, Learner
from innerloop.models import ArchConfig
from innerloop.preprocessing import images_to_tensor_array, prepare_image


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("warp-checkpoints")
    learner = Learner.create(
        ArchConfig(kind="conv4", filters=8, norm_groups=4, blocks=3, warp="conv"),
        head="proto",
        inner=InnerDefaults(steps=3, lr=0.05),
        max_ways=10,
    )
    # warp-layers start as the identity; give them a (meta-learned-looking) non-trivial value
    generator = torch.Generator().manual_seed(0)
    for name in learner.frozen:
        learner.params[name] = learner.params[name] + 0.05 * torch.randn(
            learner.params[name].shape, generator=generator
        )
    save_checkpoint(learner, folder / "warped.safetensors", build_card(learner, "warped"))
    return folder


@pytest.fixture(scope="module")
def server(checkpoints: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(checkpoints, tmp_path_factory.mktemp("logs") / "server.log")
    try:
        yield process.wait_healthy()
    finally:
        process.stop()


def _png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_card_lists_warp_layers(server: ServerProcess) -> None:
    models = httpx.get(server.url + "/v1/models", timeout=30.0).json()
    (card,) = models.get("models", models)
    assert card["adaptation"]["warp"] == "conv"
    assert card["adaptation"]["frozen"] and all("warp" in n for n in card["adaptation"]["frozen"])


def test_served_warpgrad_predictions_match_offline_adaptation(
    server: ServerProcess, checkpoints: Path
) -> None:
    learner, _ = load_checkpoint(checkpoints / "warped.safetensors")
    support = [(glyph(c, s), c) for c in range(4) for s in range(2)]
    queries = [glyph(q % 4, 40 + q) for q in range(6)]
    body = {
        "support": [{"x": _png(image), "y": f"letter {c}"} for image, c in support],
        "query": [_png(image) for image in queries],
    }
    response = httpx.post(server.url + "/v1/predict", json=body, timeout=60.0)
    assert response.status_code == 200, response.text
    served = [p["label"] for p in response.json()["predictions"]]

    def tensor(images: list[Image.Image]) -> torch.Tensor:
        pixels = np.stack([prepare_image(image, 28) for image in images])
        return torch.from_numpy(images_to_tensor_array(pixels))[None]

    sx = tensor([image for image, _ in support])
    sy = torch.tensor([[c for _, c in support]])
    offline = learner.adapt_and_predict(
        sx, sy, torch.ones(1, 8), torch.ones(1, 4, dtype=torch.bool), tensor(queries)
    )
    expected = [f"letter {int(i)}" for i in offline.outputs[0].argmax(-1)]
    assert served == expected
    # a request never mutates the served model: asked again, the same answer
    again = httpx.post(server.url + "/v1/predict", json=body, timeout=60.0).json()
    assert [p["label"] for p in again["predictions"]] == served

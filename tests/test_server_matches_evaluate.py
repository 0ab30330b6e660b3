"""Served accuracy equals evaluated accuracy, episode by episode.

The same fixed, seeded episodes are scored twice: by ``evaluate_learner`` (what ``innerloop
evaluate`` runs) and by sending each episode to a real server as PNG images with the dataset's
class names as labels. Both paths must see the same tensors (``prepare_image`` is shared and PNG
is lossless) and adapt through the same ``Learner.adapt_and_predict``, so the per-episode
accuracies must match exactly, for balanced and unbalanced support sets.
"""

from __future__ import annotations

import base64
import io
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from innerloop_training.data.labelled_images import LabelledImages
from innerloop_training.episodes import EpisodeBatch, fixed_episodes
from innerloop_training.evaluation import evaluate_learner
from innerloop_training.tasks import task_batch
from PIL import Image, ImageDraw
from server_harness import ServerProcess, glyph, make_checkpoints

from innerloop.checkpoint import build_card, load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = make_checkpoints(tmp_path_factory.mktemp("checkpoints"))
    # the same model with the per-request choice on: 0 steps, its own loop, a larger step
    learner, _ = load_checkpoint(folder / "omniglot.safetensors")
    learner.inner = replace(learner.inner, candidates=((2, 0.01), (3, 0.2)))
    save_checkpoint(learner, folder / "choosing.safetensors", build_card(learner, "choosing"))
    return folder


@pytest.fixture(scope="module")
def server(checkpoints: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(checkpoints, tmp_path_factory.mktemp("logs") / "server.log")
    try:
        yield process.wait_healthy()
    finally:
        process.stop()


def _drawing(cls: int, example: int) -> np.ndarray:
    """Class ``cls``'s glyph plus two random distractor strokes, ink-high uint8 [28, 28]."""
    image = glyph(500 + cls, example)
    draw = ImageDraw.Draw(image)
    rng = np.random.default_rng(cls * 31 + example)
    for _ in range(2):
        draw.line([int(v) for v in rng.integers(2, 26, 4)], fill=0, width=2)
    return 255 - np.asarray(image, dtype=np.uint8)


@pytest.fixture(scope="module")
def dataset() -> LabelledImages:
    """12 classes of 8 drawings each (Omniglot-shaped: uint8 [n, 28, 28], ink-high); hard
    enough that the random-init model scores 50-80%, so mistakes are compared too."""
    images = [np.stack([_drawing(c, e) for e in range(8)]) for c in range(12)]
    return LabelledImages(
        [f"glyph-{c:02d}" for c in range(12)], images, source={"dataset": "synthetic glyphs (test)"}
    )


def _png(pixels: np.ndarray) -> str:
    """A model input (float32 [1, H, W] in [0, 1]) back to the PNG a user would send."""
    image = Image.fromarray(np.rint(pixels[0] * 255.0).astype(np.uint8), mode="L")
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _requests(batch: EpisodeBatch, model: str) -> Iterator[tuple[dict[str, Any], list[str]]]:
    for b in range(batch.batch_size):
        names = batch.class_names[b]
        weight = batch.support_weight[b].numpy()
        support = [
            {"x": _png(x), "y": names[int(y)]}
            for x, y, w in zip(
                batch.support_x[b].numpy(), batch.support_y[b].tolist(), weight, strict=True
            )
            if w > 0
        ]
        query = [_png(x) for x in batch.query_x[b].numpy()]
        truth = [names[int(y)] for y in batch.query_y[b].tolist()]
        yield {"model": model, "support": support, "query": query}, truth


@pytest.mark.parametrize("model", ["omniglot", "choosing"])
@pytest.mark.parametrize("unbalanced", [False, True], ids=["balanced", "unbalanced"])
def test_served_accuracy_equals_evaluated_accuracy(
    server: ServerProcess, checkpoints: Path, dataset: LabelledImages, unbalanced: bool, model: str
) -> None:
    learner, _ = load_checkpoint(checkpoints / f"{model}.safetensors")
    assert learner.choice_on == (model == "choosing")
    episodes = fixed_episodes(
        dataset,
        ways=5,
        shots=2,
        queries=2,
        episodes=12,
        seed=7,
        batch_size=5,
        unbalanced=unbalanced,
    )
    evaluated = evaluate_learner(learner, [task_batch(b) for b in episodes])

    served: list[float] = []
    choices: list[dict[str, Any] | None] = []
    can_choose: list[bool] = []
    with httpx.Client(base_url=server.url, timeout=60.0) as client:
        for batch in episodes:
            for body, truth in _requests(batch, model):
                response = client.post("/v1/predict", json=body)
                assert response.status_code == 200, response.text
                labels = [p["label"] for p in response.json()["predictions"]]
                served.append(float(np.mean([a == b for a, b in zip(labels, truth, strict=True)])))
                choices.append(response.json()["adaptation"]["choice"])
                counts = Counter(item["y"] for item in body["support"])
                can_choose.append(min(counts.values()) >= 2)
    if model == "choosing":
        # a choice is made exactly where every label has two examples to hold one out
        assert [c is not None and c["chosen"] is not None for c in choices] == can_choose
        assert unbalanced or all(can_choose)
    else:
        assert choices == [None] * len(choices)

    assert len(served) == evaluated.episodes == 12
    assert 0.3 < evaluated.mean < 0.95  # not trivially perfect: wrong answers must match too
    assert served == pytest.approx(evaluated.per_episode, abs=1e-6)
    assert float(np.mean(served)) == pytest.approx(evaluated.mean, abs=1e-6)

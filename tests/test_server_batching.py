"""Batching with padding, without HTTP: one padded call answers like one call per request.

Padding is exact in the math (weight-0 support rows, masked ways, dropped queries); what remains
is float32 summation order, held here to the same 1e-5 the HTTP tests use.
"""

from __future__ import annotations

import numpy as np
import pytest
from innerloop_server.batching import groups, pad_group, run_group
from innerloop_server.decoding import Task
from innerloop_server.errors import describe_validation_errors, field_path
from innerloop_server.registry import Registry
from server_harness import glyph, make_checkpoints

from innerloop.preprocessing import prepare_image


def _task(ways: int, shots: int, queries: int, seed: int, steps: int = 2) -> Task:
    support = np.stack(
        [prepare_image(glyph(seed + c, s)) for c in range(ways) for s in range(shots)]
    )
    query = np.stack([prepare_image(glyph(seed + q % ways, 50 + q)) for q in range(queries)])
    return Task(
        model="omniglot",
        task="classification",
        steps=steps,
        lr=0.01,
        top_k=None,
        labels=[f"c{c}" for c in range(ways)],
        support_x=(support.astype(np.float32) / 255.0)[:, None],
        support_y=np.repeat(np.arange(ways), shots),
        query_x=(query.astype(np.float32) / 255.0)[:, None],
    )


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    return Registry.from_folder(make_checkpoints(tmp_path_factory.mktemp("checkpoints")))


def test_registry_skips_the_broken_file(registry: Registry) -> None:
    assert registry.names == ["omniglot", "sine"]
    assert registry.default == "omniglot"
    assert "not a safetensors file" in registry.skipped["broken.safetensors"]


def test_padded_group_matches_solo_calls(registry: Registry) -> None:
    learner = registry.get("omniglot").learner
    tasks = [_task(2, 1, 1, 0), _task(5, 3, 4, 10), _task(3, 2, 7, 20)]
    batched = run_group(learner, tasks, "cpu")
    worst = 0.0
    for task, together in zip(tasks, batched, strict=True):
        (alone,) = run_group(learner, [task], "cpu")
        assert together.outputs.shape == (len(task.query_x), len(task.labels))
        assert together.batch_size == 3 and alone.batch_size == 1
        worst = max(worst, float(np.abs(together.outputs - alone.outputs).max()))
        assert together.loss_after == pytest.approx(alone.loss_after, abs=1e-5)
        np.testing.assert_allclose(together.outputs.sum(-1), 1.0, atol=1e-5)
    assert worst <= 1e-5, worst


def test_padding_layout() -> None:
    tasks = [_task(2, 1, 1, 0), _task(4, 2, 3, 10)]
    support_x, support_y, weight, mask, query_x = pad_group(tasks, "cpu")
    assert tuple(support_x.shape) == (2, 8, 1, 28, 28) and tuple(query_x.shape) == (2, 3, 1, 28, 28)
    assert weight.sum(1).tolist() == [2.0, 8.0]
    assert mask.sum(1).tolist() == [2, 4]
    assert support_y.dtype.is_floating_point is False


def test_groups_split_on_model_steps_lr_and_padding_waste() -> None:
    tasks = [_task(2, 1, 1, 0), _task(2, 1, 1, 1, steps=3), _task(2, 1, 1, 2)]
    assert groups(tasks) == [[0, 2], [1]]
    # 2 + 2 + 3 rows pad to 3 x 3 = 9 <= 2 x 7: together; 20 rows would pad 4 x 20 = 80 > 2 x 27
    mixed = [_task(2, 1, 1, 0), _task(20, 1, 1, 1), _task(3, 1, 1, 2), _task(2, 1, 1, 3)]
    assert groups(mixed) == [[0, 3, 2], [1]]


def test_validation_error_fields() -> None:
    assert field_path(("body", "support", 3, "x", "list[float]", 0)) == "support[3].x[0]"
    assert field_path(("body",)) == "body"
    errors = [
        {"type": "string_type", "loc": ("body", "query", 0, "str"), "msg": "Input should be a "
         "valid string", "input": 5},
        {"type": "list_type", "loc": ("body", "query", 0, "list[float]"), "msg": "Input should "
         "be a valid list", "input": 5},
    ]  # fmt: skip
    assert describe_validation_errors(errors) == [
        {"field": "query[0]", "message": "Input should be a valid string or list (got integer)"}
    ]


def test_task_repr_does_not_print_pixels() -> None:
    # LitServe formats every request into a debug-log f-string whatever the log level
    small, large = _task(5, 1, 5, seed=0), _task(20, 5, 40, seed=0)
    assert repr(small) == "Task(predict, model='omniglot', support=5, query=5, steps=2, lr=0.01)"
    assert len(repr(large)) < 100

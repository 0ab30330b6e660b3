"""The GPU path: the one inner loop and the server on CUDA answer what the CPU answers.

Runs where torch sees a CUDA GPU and skips with a reason everywhere else (CI has none).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from server_harness import ServerProcess, image_request, make_checkpoints

from innerloop.checkpoint import build_card, load_checkpoint, save_checkpoint

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA GPU visible to torch on this machine"
)


def batch(device: str) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    sx = torch.rand(4, 6, 1, 28, 28, generator=generator)
    sy = torch.arange(3).repeat_interleave(2).repeat(4, 1)
    sw = torch.ones(4, 6)
    cm = torch.ones(4, 3, dtype=torch.bool)
    qx = torch.rand(4, 5, 1, 28, 28, generator=generator)
    return tuple(t.to(device) for t in (sx, sy, sw, cm, qx))


@pytest.mark.parametrize("scope", ["all", "film", "head"])
def test_adapt_and_predict_on_cuda_equals_cpu(tmp_path: Path, scope: str) -> None:
    folder = make_checkpoints(tmp_path)
    cpu, _ = load_checkpoint(folder / "omniglot.safetensors")
    cpu = cpu.with_scope(scope)
    gpu, _ = load_checkpoint(folder / "omniglot.safetensors")
    gpu = gpu.with_scope(scope)
    gpu.params = {k: v.cuda() for k, v in gpu.params.items()}
    gpu.step_sizes = {k: v.cuda() for k, v in gpu.step_sizes.items()}
    on_cpu = cpu.adapt_and_predict(*batch("cpu"), steps=3, lr=0.05, keep_params=True)
    on_gpu = gpu.adapt_and_predict(*batch("cuda"), steps=3, lr=0.05, keep_params=True)
    assert on_gpu.outputs.is_cuda
    torch.testing.assert_close(on_gpu.outputs.cpu(), on_cpu.outputs, rtol=1e-3, atol=1e-3)
    assert on_gpu.params is not None
    again = gpu.predict_adapted(on_gpu.params, batch("cuda")[4], batch("cuda")[3])
    torch.testing.assert_close(again, on_gpu.outputs, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    folder = make_checkpoints(tmp_path_factory.mktemp("checkpoints"))
    learner, _ = load_checkpoint(folder / "omniglot.safetensors")
    film = learner.with_scope("film")
    save_checkpoint(film, folder / "omniglot-film.safetensors", build_card(film, "omniglot-film"))
    logs = tmp_path_factory.mktemp("logs")
    gpu = ServerProcess(folder, logs / "gpu.log", "--device", "cuda")
    cpu = ServerProcess(folder, logs / "cpu.log", "--device", "cpu")
    try:
        yield gpu.wait_healthy().url, cpu.wait_healthy().url
    finally:
        gpu.stop()
        cpu.stop()


@pytest.mark.parametrize("model", ["omniglot", "omniglot-film"])
def test_the_server_on_cuda_answers_what_the_cpu_server_answers(
    servers: tuple[str, str], model: str
) -> None:
    body = image_request(5, 1, 5, seed=7, model=model)
    answers = [httpx.post(url + "/v1/predict", json=body, timeout=120).json() for url in servers]
    gpu, cpu = ([p["label"] for p in a["predictions"]] for a in answers)
    assert gpu == cpu

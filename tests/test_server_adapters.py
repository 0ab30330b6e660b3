"""Adapt once, predict many: ``POST /v1/adapt`` and ``/v1/predict`` with ``adapter``, over HTTP.

A real server on 127.0.0.1 serves the fixture models (a tiny Conv4 in the default ``all`` scope
and the same weights in the ``head`` and ``film`` scopes); every check compares an adapter's
answer with what adapting again gives, so it fails if the cache kept the wrong tensors, the
wrong split, or the wrong labels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_harness import (
    ServerProcess,
    http_client,
    image_request,
    make_checkpoints,
    running,
    vector_request,
)

from innerloop.checkpoint import build_card, load_checkpoint, save_checkpoint

SCOPED = ("omniglot-head", "omniglot-film")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = make_checkpoints(tmp_path_factory.mktemp("checkpoints"))
    learner, _ = load_checkpoint(folder / "omniglot.safetensors")
    for name in SCOPED:
        scoped = learner.with_scope(name.split("-")[1])
        save_checkpoint(scoped, folder / f"{name}.safetensors", build_card(scoped, name))
    early = learner.with_scope("head")
    early.inner = dataclasses.replace(early.inner, tolerance=0.05)
    save_checkpoint(early, folder / "omniglot-early.safetensors", build_card(early, "early"))
    # room for a handful of tiny adapters only, so that eviction is reachable in a test
    log = tmp_path_factory.mktemp("logs") / "server.log"
    with running(folder, log, "--max-adapter-cache-bytes", "20000") as process:
        yield process


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with http_client(server) as http:
        yield http


def post(client: httpx.Client, path: str, body: dict[str, Any], status: int = 200) -> Any:
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    return response.json()


def scores(response: dict[str, Any]) -> list[dict[str, float]]:
    return [p["scores"] for p in response["predictions"]]


@pytest.mark.parametrize("model", ["omniglot", *SCOPED])
def test_adapter_answers_what_adapting_again_answers(client: httpx.Client, model: str) -> None:
    body = image_request(4, 2, 5, seed=3, model=model, steps=3, lr=0.05)
    direct = post(client, "/v1/predict", body)
    made = post(client, "/v1/adapt", {k: body[k] for k in ("model", "support", "steps", "lr")})
    assert made["adapter"].startswith("ad-")
    assert sorted(made["labels"]) == [f"class-{c}" for c in range(4)]
    assert made["adaptation"]["scope"] == (model.split("-")[1] if "-" in model else "all")
    again = post(client, "/v1/predict", {"adapter": made["adapter"], "query": body["query"]})
    assert again["adaptation"]["adapter"] == made["adapter"]
    assert [p["label"] for p in again["predictions"]] == [p["label"] for p in direct["predictions"]]
    for mine, theirs in zip(scores(again), scores(direct), strict=True):
        assert mine.keys() == theirs.keys()
        assert all(abs(mine[k] - theirs[k]) < 1e-5 for k in mine)
    assert again["adaptation"]["support_loss"] == pytest.approx(
        direct["adaptation"]["support_loss"], abs=1e-5
    )


def test_the_same_support_gives_the_same_id_in_any_order(client: httpx.Client) -> None:
    body = image_request(3, 2, 1, seed=5, model="omniglot-head")
    first = post(client, "/v1/adapt", {"model": "omniglot-head", "support": body["support"]})
    shuffled = list(reversed(body["support"]))
    second = post(client, "/v1/adapt", {"model": "omniglot-head", "support": shuffled})
    assert first["adapter"] == second["adapter"]
    other = post(
        client, "/v1/adapt", {"model": "omniglot-head", "support": body["support"], "steps": 1}
    )
    assert other["adapter"] != first["adapter"]


def test_regression_adapter(client: httpx.Client) -> None:
    body = vector_request(6, 4, seed=2)
    direct = post(client, "/v1/predict", body)
    made = post(client, "/v1/adapt", {"model": "sine", "support": body["support"]})
    again = post(client, "/v1/predict", {"adapter": made["adapter"], "query": body["query"]})
    for mine, theirs in zip(again["predictions"], direct["predictions"], strict=True):
        assert mine["y"] == pytest.approx(theirs["y"], abs=1e-5)


def test_unknown_adapter_is_a_404_that_says_to_adapt_again(client: httpx.Client) -> None:
    query = image_request(2, 1, 1)["query"]
    detail = post(client, "/v1/predict", {"adapter": "ad-nope", "query": query}, 404)["detail"]
    assert detail.startswith("adapter:") and "/v1/adapt" in detail


def test_evicted_adapter_is_a_404_and_adapting_again_restores_it(client: httpx.Client) -> None:
    # an all-scope tiny Conv4 adapter is ~5 KB of tensors; the cache holds 20,000 bytes
    bodies = [image_request(3, 1, 1, seed=40 + i, model="omniglot") for i in range(8)]
    ids = [
        post(client, "/v1/adapt", {"model": "omniglot", "support": b["support"]})["adapter"]
        for b in bodies
    ]
    oldest = {"adapter": ids[0], "query": bodies[0]["query"]}
    assert "/v1/adapt" in post(client, "/v1/predict", oldest, 404)["detail"]
    again = post(client, "/v1/adapt", {"model": "omniglot", "support": bodies[0]["support"]})
    assert again["adapter"] == ids[0]
    post(client, "/v1/predict", oldest)


@pytest.mark.parametrize(
    ("extra", "field"),
    [({"steps": 2}, "steps"), ({"lr": 0.1}, "lr"), ({"model": "sine"}, "model")],
)
def test_adapter_requests_refuse_what_the_adapter_fixed(
    client: httpx.Client, extra: dict[str, Any], field: str
) -> None:
    body = image_request(2, 1, 1, seed=9, model="omniglot-head")
    made = post(client, "/v1/adapt", {"model": "omniglot-head", "support": body["support"]})
    request = {"adapter": made["adapter"], "query": body["query"], **extra}
    assert post(client, "/v1/predict", request, 422)["detail"].startswith(f"{field}:")


def test_adapt_validates_like_predict(client: httpx.Client, tmp_path: Path) -> None:
    detail = post(client, "/v1/adapt", {"model": "omniglot", "support": []}, 422)["detail"]
    assert detail.startswith("support:")
    assert client.post("/v1/adapt", json={"support": [], "query": []}).status_code == 422


def test_sdk_adapt_then_predict_sync_and_async(server: ServerProcess) -> None:
    import asyncio
    import base64

    from innerloop_client import AsyncClient, Client, NotFoundError

    body = image_request(3, 2, 4, seed=11, model="omniglot-film")
    pairs = [(base64.b64decode(item["x"]), item["y"]) for item in body["support"]]
    query = [base64.b64decode(x) for x in body["query"]]
    with Client(server.url) as client:
        direct = client.predict(pairs, query, model="omniglot-film")
        adapter = client.adapt(pairs, model="omniglot-film")
        assert adapter.result.adaptation.scope == "film"
        result = adapter.predict(query, top_k=2)
        assert [p.label for p in result.predictions] == [p.label for p in direct.predictions]
        assert result.adaptation.adapter == adapter.id
        with pytest.raises(NotFoundError, match="adapt"):
            client._send(
                "POST", "/v1/predict", client._encode_json({"adapter": "ad-0", "query": ["x"]})
            )

    async def run() -> list[str | int]:
        async with AsyncClient(server.url) as client:
            adapter = await client.adapt(pairs, model="omniglot-film")
            answer = await adapter.predict(query)
            return [p.label for p in answer.predictions]

    assert asyncio.run(run()) == [p.label for p in direct.predictions]


def test_the_response_says_how_many_steps_ran(client: httpx.Client) -> None:
    body = image_request(3, 2, 2, seed=21, model="omniglot-early", steps=40, lr=0.05)
    adaptation = post(client, "/v1/predict", body)["adaptation"]
    assert adaptation["max_steps"] == 40
    assert 1 <= adaptation["steps"] < 40
    full = post(client, "/v1/predict", {**body, "model": "omniglot-head"})["adaptation"]
    assert full["steps"] == full["max_steps"] == 40


def test_two_workers_share_one_set_of_adapters(tmp_path: Path) -> None:
    """The HTTP process keeps the adapters, so with two workers every adapter predict finds its
    adapter (when each worker kept its own, 431 of one benchmark level's predicts got 404), and
    answers what adapting again answers."""
    folder = make_checkpoints(tmp_path / "checkpoints")
    with (
        running(folder, tmp_path / "server.log", "--workers", "2", "--threads", "1") as two,
        http_client(two) as client,
    ):
        bodies = [image_request(3, 1, 2, seed=s, model="omniglot", steps=2) for s in (5, 6, 7)]
        made = [
            post(client, "/v1/adapt", {k: b[k] for k in ("model", "support", "steps")})
            for b in bodies
        ]
        assert all("_adapted_params" not in m for m in made)  # tensors never reach the client
        for _ in range(4):
            for body, adapter in zip(bodies, made, strict=True):
                direct = post(client, "/v1/predict", body)
                again = post(
                    client, "/v1/predict", {"adapter": adapter["adapter"], "query": body["query"]}
                )
                for mine, theirs in zip(scores(again), scores(direct), strict=True):
                    assert all(abs(mine[k] - theirs[k]) < 1e-5 for k in mine)


@pytest.mark.parametrize("model", SCOPED)  # small adapters: this server keeps few
def test_concurrent_adapter_predicts_of_mixed_sizes_answer_as_alone(
    client: httpx.Client, model: str
) -> None:
    """Concurrent adapter predicts are combined into shared forwards, padded to the largest
    head and query count of their pack: each must still get exactly its solo answer."""
    from concurrent.futures import ThreadPoolExecutor

    shapes = [(3, 2), (5, 7), (2, 1), (4, 5), (5, 3), (3, 6)]  # (ways, queries)
    bodies = [
        image_request(w, 1, q, seed=20 + i, model=model, steps=2, lr=0.05)
        for i, (w, q) in enumerate(shapes)
    ]
    ids = [
        post(client, "/v1/adapt", {k: b[k] for k in ("model", "support", "steps", "lr")})["adapter"]
        for b in bodies
    ]
    requests = [{"adapter": a, "query": b["query"]} for a, b in zip(ids, bodies, strict=True)]
    alone = [post(client, "/v1/predict", r) for r in requests]

    def burst(_: int) -> list[Any]:
        return [post(client, "/v1/predict", r) for r in requests]

    with ThreadPoolExecutor(8) as pool:
        rounds = list(pool.map(burst, range(8)))
    for answers in rounds:
        for mine, solo in zip(answers, alone, strict=True):
            assert len(mine["predictions"]) == len(solo["predictions"])
            for a, b in zip(scores(mine), scores(solo), strict=True):
                assert a.keys() == b.keys()
                assert all(abs(a[k] - b[k]) < 1e-5 for k in a)

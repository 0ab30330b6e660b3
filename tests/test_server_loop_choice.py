"""The per-request choice of loop over HTTP: what the answer says, the work bound, adapters.

A real server on 127.0.0.1 serves a tiny Conv4 whose card turns the choice on. The answer must
name the loop that ran and the held-out evidence, agree with asking for that loop explicitly,
skip the choice (never refuse the request) past ``--max-work``, and keep adapters of a chosen
loop apart from those of an explicit one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from server_harness import ServerProcess, http_client, image_request, make_checkpoints, running

from innerloop.checkpoint import build_card, load_checkpoint, save_checkpoint
from innerloop.loop_choice import work

CANDIDATES = ((2, 0.01), (3, 0.2))
FOLDS = 2
MAX_WORK = 250  # a 3-way 3-shot request (184 units) chooses; a 5-way 3-shot one (302) does not


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    folder = make_checkpoints(tmp_path_factory.mktemp("checkpoints"))
    learner, _ = load_checkpoint(folder / "omniglot.safetensors")
    learner.inner = dataclasses.replace(learner.inner, candidates=CANDIDATES, choice_folds=FOLDS)
    save_checkpoint(learner, folder / "choosing.safetensors", build_card(learner, "choosing"))
    log = tmp_path_factory.mktemp("logs") / "server.log"
    server: ServerProcess
    with running(folder, log, "--max-work", str(MAX_WORK)) as server, http_client(server) as http:
        yield http


def post(client: httpx.Client, path: str, body: dict[str, Any], status: int = 200) -> Any:
    response = client.post(path, json=body)
    assert response.status_code == status, response.text
    return response.json()


def test_the_answer_names_the_loop_that_ran_and_matches_asking_for_it(
    client: httpx.Client,
) -> None:
    body = image_request(3, 3, 4, seed=2, model="choosing")
    answer = post(client, "/v1/predict", body)
    choice = answer["adaptation"]["choice"]
    assert choice["chosen"] is not None and choice["held_out"] == 3 * FOLDS
    scored = choice["candidates"]
    assert [(c["steps"], c["lr"]) for c in scored] == [(0, 0.01), (2, 0.01), (3, 0.2)]
    best = max(c["held_out_correct"] for c in scored)
    assert choice["chosen"] in [{"steps": c["steps"], "lr": c["lr"]} for c in scored]
    winner = next(c for c in scored if c["steps"] == choice["chosen"]["steps"])
    assert winner["held_out_correct"] == best
    assert answer["adaptation"]["steps"] == choice["chosen"]["steps"]
    assert answer["adaptation"]["lr"] == choice["chosen"]["lr"]
    explicit = post(client, "/v1/predict", {**body, **choice["chosen"]})
    assert explicit["adaptation"]["choice"] is None
    for a, b in zip(answer["predictions"], explicit["predictions"], strict=True):
        assert a["label"] == b["label"]
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-5)


def test_one_example_of_a_label_runs_the_default_loop_and_says_why(client: httpx.Client) -> None:
    answer = post(client, "/v1/predict", image_request(3, 1, 2, seed=3, model="choosing"))
    choice = answer["adaptation"]["choice"]
    assert choice["chosen"] is None and "two support examples" in choice["reason"]
    assert answer["adaptation"]["steps"] == 2 and answer["adaptation"]["lr"] == 0.01


def test_past_max_work_the_choice_is_skipped_not_the_request(client: httpx.Client) -> None:
    support = 5 * 3
    assert (
        support * 2 + 2
        <= MAX_WORK
        < support * 2 + 2 + work(support, ((0, 0.01), *CANDIDATES), FOLDS)
    )
    answer = post(client, "/v1/predict", image_request(5, 3, 2, seed=4, model="choosing"))
    choice = answer["adaptation"]["choice"]
    assert choice["chosen"] is None and "--max-work" in choice["reason"]


def test_adapters_of_a_chosen_loop_answer_as_adapting_again(client: httpx.Client) -> None:
    body = image_request(3, 2, 3, seed=5, model="choosing")
    support = {"model": "choosing", "support": body["support"]}
    adapted = post(client, "/v1/adapt", support)
    chosen = adapted["adaptation"]["choice"]["chosen"]
    assert chosen is not None
    explicit = post(client, "/v1/adapt", {**support, **chosen})
    assert explicit["adapter"] != adapted["adapter"]
    later = post(client, "/v1/predict", {"adapter": adapted["adapter"], "query": body["query"]})
    again = post(client, "/v1/predict", body)
    assert later["adaptation"]["steps"] == chosen["steps"]
    for a, b in zip(later["predictions"], again["predictions"], strict=True):
        assert a["scores"] == pytest.approx(b["scores"], abs=1e-5)

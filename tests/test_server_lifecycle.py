"""Operating the server: API key, overload shedding, start-up refusal, the models CLI, shutdown.

The module's server runs with an API key (from ``INNERLOOP_API_KEY``), ``--max-in-flight 2``
and no batching; its last test stops it with SIGTERM and checks no process is left behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from server_harness import ServerProcess, alive, descendants, image_request, make_checkpoints

KEY = "s3cret-key"


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoints(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(scope="module")
def server(checkpoints: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(
        checkpoints,
        tmp_path_factory.mktemp("logs") / "server.log",
        "--max-in-flight",
        "2",
        "--max-batch-size",
        "1",
        env={"INNERLOOP_API_KEY": KEY},
    )
    try:
        yield process.wait_healthy()
    finally:
        process.stop()


# ---- API key ------------------------------------------------------------------------------------
def test_health_is_open_without_the_key(server: ServerProcess) -> None:
    response = httpx.get(server.url + "/health")
    assert response.status_code == 200 and response.text == "ok"


@pytest.mark.parametrize("path", ["/v1/models", "/metrics", "/info", "/docs", "/openapi.json"])
def test_other_paths_need_the_key(server: ServerProcess, path: str) -> None:
    response = httpx.get(server.url + path)
    assert response.status_code == 401
    assert response.json()["detail"].startswith("X-API-Key: API key missing")
    assert httpx.get(server.url + path, headers={"X-API-Key": KEY}).status_code == 200


@pytest.mark.parametrize(
    ("headers", "status", "expected"),
    [
        ({}, 401, "X-API-Key: API key missing"),
        ({"X-API-Key": "wrong"}, 401, "X-API-Key: API key wrong"),
        ({"Authorization": "Bearer wrong"}, 401, "X-API-Key: API key wrong"),
        ({"Authorization": "Basic czNjcmV0"}, 401, "X-API-Key: API key missing"),
        ({"X-API-Key": KEY}, 200, None),
        ({"Authorization": f"Bearer {KEY}"}, 200, None),
    ],
    ids=["missing", "wrong", "wrong bearer", "basic auth", "x-api-key", "bearer"],
)
def test_predict_api_key(
    server: ServerProcess, headers: dict[str, str], status: int, expected: str | None
) -> None:
    response = httpx.post(
        server.url + "/v1/predict", json=image_request(2, 1, 1), headers=headers, timeout=60.0
    )
    assert response.status_code == status, response.text
    if expected:
        assert expected in response.json()["detail"]
        assert response.headers["www-authenticate"] == "Bearer"


def test_auth_is_checked_before_the_body(server: ServerProcess) -> None:
    response = httpx.post(
        server.url + "/v1/predict",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 401


# ---- overload -----------------------------------------------------------------------------------
def test_overload_gets_503_with_retry_after(server: ServerProcess) -> None:
    body = image_request(10, 5, 10, steps=20)
    responses: list[httpx.Response] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)

    def send() -> None:
        with httpx.Client(timeout=120.0, headers={"X-API-Key": KEY}) as client:
            barrier.wait()
            response = client.post(server.url + "/v1/predict", json=body)
        with lock:
            responses.append(response)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = sorted(r.status_code for r in responses)
    assert 503 in statuses and 200 in statuses, statuses
    assert set(statuses) == {200, 503}, statuses
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.headers["retry-after"] == "1"
    assert "server busy" in busy.json()["detail"]
    # and once the load is gone, the server answers again
    again = httpx.post(
        server.url + "/v1/predict",
        json=image_request(2, 1, 1),
        headers={"X-API-Key": KEY},
        timeout=60.0,
    )
    assert again.status_code == 200


# ---- the command line ---------------------------------------------------------------------------
def test_models_cli_reads_a_folder(checkpoints: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from innerloop.cli import main

    assert main(["models", "--checkpoints", str(checkpoints)]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:3] == ["NAME", "TASK", "INPUT"]
    assert "omniglot *" in table and "image 28x28" in table and "2-20" in table
    assert "sine" in table and "vector 3->2" in table
    assert "test 50.0±1.0%" in table
    assert "unusable: broken.safetensors" in table
    assert main(["models", "--checkpoints", str(checkpoints), "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert [m["name"] for m in listing["models"]] == ["omniglot", "sine"]
    assert "broken.safetensors" in listing["errors"]


def test_models_cli_asks_a_server(
    server: ServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    from innerloop.cli import main

    assert main(["models", "--url", server.url, "--api-key", KEY, "--json"]) == 0
    assert {m["name"] for m in json.loads(capsys.readouterr().out)["models"]} == {
        "omniglot",
        "sine",
    }
    assert main(["models", "--url", server.url]) == 1
    assert "401" in capsys.readouterr().err


def test_serve_refuses_to_start_without_a_loadable_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 4)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "innerloop.cli",
            "serve",
            "--checkpoints",
            str(tmp_path),
            "--port",
            "8999",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1
    assert "no checkpoint in" in done.stderr and "refusing to start" in done.stderr
    assert "bad.safetensors: " in done.stderr and "not a safetensors file" in done.stderr


# ---- shutdown ---------------------------------------------------------------------------------
def _assert_all_gone(pids: set[int], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.2)
    left = {
        p: Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ")[:100]
        for p in pids
        if alive(p)
    }
    assert not left, f"processes left behind: {left}"


def test_sigterm_during_startup_leaves_no_process(checkpoints: Path, tmp_path: Path) -> None:
    process = ServerProcess(checkpoints, tmp_path / "server.log")
    try:
        deadline = time.monotonic() + 60
        while '"event": "starting"' not in process.log_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # workers are being spawned / loading models now
        tree = descendants(process.process.pid) | {process.process.pid}
        process.process.send_signal(signal.SIGTERM)
        assert process.process.wait(60) == 0
        _assert_all_gone(tree | descendants(process.process.pid))
    finally:
        process.stop()


def test_sigterm_leaves_no_process(server: ServerProcess) -> None:
    """Runs last in this module: it stops the module's server."""
    assert httpx.get(server.url + "/health").status_code == 200
    main = server.process.pid
    tree = descendants(main)
    assert len(tree) >= 3, tree  # manager, inference worker, HTTP server (at least)
    os.kill(main, signal.SIGTERM)
    assert server.process.wait(60) == 0
    _assert_all_gone(tree)
    with pytest.raises(httpx.HTTPError):
        httpx.get(server.url + "/health", timeout=2.0)
    assert '"event": "stopped"' in server.log_text()
    assert "Traceback" not in server.log_text()

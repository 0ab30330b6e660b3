"""The README's examples, run as written against a real server on the shipped checkpoints.

A newcomer copies the README's SDK snippet and its curl example from the repository root; these
tests do exactly that (only the port differs: the harness picks a free one), with the sample
drawings the repository ships, and check that the predicted labels are the right ones. The
expected labels come from the sample file names (``char3_drawer2.png`` is character 3,
``fish_2.png`` is a fish), not from a recorded answer.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from server_harness import REPO, ServerProcess

README_URL = "http://127.0.0.1:8000"


def section(title: str) -> str:
    """The README text under ``## title`` up to the next ``## `` heading."""
    text = (REPO / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def blocks(title: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", section(title), flags=re.S)


def block_with(title: str, language: str, needle: str) -> str:
    found = [b for b in blocks(title, language) if needle in b]
    assert len(found) == 1, f"expected one {language} block with {needle!r} under {title!r}"
    return found[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``innerloop serve`` on the shipped checkpoints, as the README's first command starts it."""
    log = tmp_path_factory.mktemp("readme-server") / "server.log"
    process = ServerProcess(REPO / "checkpoints", log)
    try:
        yield process.wait_healthy()
    finally:
        process.stop()


def on_port(snippet: str, server: ServerProcess) -> str:
    assert README_URL in snippet, f"the README example should talk to {README_URL}"
    return snippet.replace(README_URL, server.url)


def test_sdk_example_predicts_the_right_character(server: ServerProcess) -> None:
    snippet = block_with("Using the server", "python", "client.predict(")
    support = re.findall(r'\("(samples/[^"]+)", "([^"]+)"\)', snippet)
    query = re.findall(r'query=\["(samples/[^"]+)"\]', snippet)
    assert len(support) >= 2 and len(query) == 1
    character = Path(query[0]).stem.split("_drawer")[0]
    expected = [label for path, label in support if Path(path).stem.startswith(f"{character}_")]
    assert len(expected) == 1, "the query's character should be in the support set once"
    assert query[0] not in {path for path, _ in support}, "the query must be a new drawing"

    run = run_python(snippet, server)
    label, _, scores = run.stdout.strip().partition(" ")
    assert label == expected[0], run.stdout
    assert set(re.findall(r"'(char\d+)'", scores)) == {label for _, label in support}


def run_python(snippet: str, server: ServerProcess) -> subprocess.CompletedProcess[str]:
    """Run a README Python block as a user would paste it, against ``server``."""
    run = subprocess.run(
        [sys.executable, "-c", on_port(snippet, server)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stderr
    return run


def test_adapter_example_runs_verbatim_and_labels_the_query(server: ServerProcess) -> None:
    run = run_python(block_with("Using the server", "python", "client.adapt("), server)
    adapter, label = run.stdout.split()
    assert adapter.startswith("ad-")
    assert label == "char3"  # the query is character 3 drawn by another person


def test_curl_image_example_predicts_the_right_doodles(server: ServerProcess) -> None:
    for tool in ("bash", "curl", "base64", "tr"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    snippet = block_with("Using the server", "bash", "$(img ")
    queries = re.search(r'"query": \[(.*?)\]', snippet, flags=re.S)
    assert queries is not None
    files = re.findall(r"\$\(img (samples/\S+?)\)", queries.group(1))
    expected = [Path(f).stem.rsplit("_", 1)[0] for f in files]
    support_labels = re.findall(r'"y": "([^"]+)"', snippet)
    assert files and set(expected) <= set(support_labels)

    run = subprocess.run(
        ["bash", "-c", on_port(snippet, server)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout)
    assert [p["label"] for p in answer["predictions"]] == expected, run.stdout
    assert answer["adaptation"]["ms"] > 0


def test_readme_sample_files_exist_and_are_small() -> None:
    text = section("Using the server")
    paths = sorted(set(re.findall(r"samples/[\w/.-]+\.png", text)))
    assert len(paths) >= 5
    for relative in paths:
        path = REPO / relative
        assert path.is_file(), f"{relative} is named in the README but not shipped"
        assert path.stat().st_size < 8_000


def test_readme_commands_never_write_into_shipped_checkpoints() -> None:
    """The commands a newcomer follows (everything above the results block) write to models/."""
    text = (REPO / "README.md").read_text().split("<!-- results:begin", 1)[0]
    commands = " ".join(re.findall(r"```bash\n(.*?)```", text, flags=re.S))
    outs = re.findall(r"--out (\S+)", commands)
    assert outs, "the README should show where training writes"
    assert all(o.startswith("models/") for o in outs), outs
    for tuned in re.findall(r"innerloop tune (\S+)[^\n]*--write", commands):
        assert tuned.startswith("models/"), tuned
    assert "--add models/" in commands


def test_sample_drawings_are_reproducible(tmp_path: Path) -> None:
    from innerloop_training.data.registry import default_data_root

    root = default_data_root()
    if root is None or not (root / "omniglot" / "images_evaluation.npz").is_file():
        pytest.skip("no shared data folder (see `innerloop data where`)")
    if not (root / "quickdraw345" / "quickdraw345_sketches.npz").is_file():
        pytest.skip("no quickdraw345 sketches in the data folder")
    run = subprocess.run(
        [sys.executable, str(REPO / "samples" / "make_samples.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    made = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.png"))
    shipped = sorted(p.relative_to(REPO / "samples") for p in (REPO / "samples").rglob("*.png"))
    assert made == shipped
    for relative in made:
        assert (tmp_path / relative).read_bytes() == (REPO / "samples" / relative).read_bytes()


def test_docs_are_served_from_local_files(server: ServerProcess) -> None:
    for page in ("/docs", "/redoc"):
        html = httpx.get(server.url + page, timeout=30).text
        assert "<title>innerloop API</title>" in html
        assets = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert assets, html
        for asset in assets:
            assert asset.startswith("/"), f"{page} loads {asset} from elsewhere"
            assert httpx.get(server.url + asset, timeout=30).status_code == 200, asset
        assert "cdn." not in html and "fonts.googleapis" not in html
    schema = httpx.get(server.url + "/openapi.json", timeout=30).json()
    assert schema["info"]["title"] == "innerloop"

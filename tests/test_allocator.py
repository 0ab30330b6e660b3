"""The allocator setting every innerloop command applies (innerloop/allocator.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_keep_freed_memory_is_applied_once_and_changes_no_result() -> None:
    # a fresh process: the setting is process-wide and cannot be undone
    code = (
        "import torch\n"
        "from innerloop.allocator import keep_freed_memory\n"
        "torch.manual_seed(0)\n"
        "x = torch.randn(64, 64, 28, 28)\n"
        "before = torch.nn.functional.group_norm(x, 8).sum().item()\n"
        "print(keep_freed_memory(), keep_freed_memory())\n"
        "after = torch.nn.functional.group_norm(x, 8).sum().item()\n"
        "print(before == after)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.split()
    assert out == ["True", "True", "True"]

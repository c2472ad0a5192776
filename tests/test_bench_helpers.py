"""The benchmarks' shared helper that measures a child process's own peak RSS (benchmarks/common.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from common import run_peak_rss  # noqa: E402


def test_a_child_peak_is_its_own_not_the_drivers():
    ballast = bytearray(400 * 2**20)  # the driver holds 400 MB: a plain child's ru_maxrss would start there
    ballast[:: 4096] = b"x" * len(ballast[:: 4096])
    small = [sys.executable, "-S", "-c", "pass"]
    _, peak_kib = run_peak_rss(small, dict(os.environ))
    big = [sys.executable, "-S", "-c", "b = bytearray(150 * 2**20); b[::4096] = b'x' * len(b[::4096])"]
    _, big_kib = run_peak_rss(big, dict(os.environ))
    assert peak_kib / 1024 < 100
    assert 150 < big_kib / 1024 < 300
    del ballast


def test_a_failed_child_is_named_with_the_tail_of_its_stderr():
    cmd = [sys.executable, "-S", "-c", "import sys; sys.exit('the worker broke on line 7')"]
    with pytest.raises(SystemExit) as e:
        run_peak_rss(cmd, dict(os.environ), stderr=subprocess.PIPE)
    assert "failed" in str(e.value) and "the worker broke on line 7" in str(e.value)

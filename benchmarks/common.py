"""Shared helpers for benchmarks: settings/versions block, matmul ceiling, FLOP counts."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

OUT = Path(__file__).resolve().parent / "out"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEV_V11 = SHARED / "squad" / "dev-v1.1.json.gz"
TRAIN_V11 = SHARED / "squad" / "reconstructed" / "train-v1.1.explore-derived.json.gz"


def versions() -> dict:
    import tokenizers
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "cpu_count": os.cpu_count(), "machine": platform.machine()}


def matmul_ceiling(threads: int, n: int = 1024, seconds: float = 3.0) -> float:
    """Best sustained fp32 GFLOP/s of an n×n×n matmul with `threads` threads (the machine's practical ceiling)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        for _ in range(5):
            a @ b
        best = max(best, 5 * 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    torch.set_num_threads(old)
    return best


def encoder_forward_flops(batch: int, seq: int, hidden: int, layers: int, intermediate: int) -> float:
    """Matmul FLOPs of a BERT encoder forward on a (batch, seq) input: projections, FFN and attention."""
    per_layer = 2 * batch * seq * (4 * hidden * hidden + 2 * hidden * intermediate) + 4 * batch * seq * seq * hidden
    return float(layers * per_layer)


def train_flops(batch: int, seq: int, hidden: int, layers: int, intermediate: int) -> float:
    """Forward + backward ≈ 3 × forward (the backward computes input and weight gradients)."""
    return 3.0 * encoder_forward_flops(batch, seq, hidden, layers, intermediate)


def write_json(name: str, record: dict) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / name
    path.write_text(json.dumps(record, indent=2))
    return path

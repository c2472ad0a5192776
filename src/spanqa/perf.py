"""Performance accounting, defined once: encoder matmul FLOPs, the machine's matmul ceiling, the CPU's features.

The trainer logs achieved matmul GFLOP/s (`encoder_matmul_flops` over the step time); the benchmarks divide such
figures by `matmul_ceiling`, measured in the same run, to report a share of the ceiling, and record `cpu_info`.
"""

from __future__ import annotations

import functools
import platform
import subprocess
import time

import torch

CPU_FEATURES = ("avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_bf16")


def encoder_matmul_flops(config, batch: int, seq: int, train: bool = True) -> float:
    """Matmul FLOPs of a BERT-style encoder on a (batch, seq) input: projections, FFN, attention scores and
    context; x3 for training (the backward computes input and weight gradients). 0 if the config is not BERT-like."""
    try:
        h, n_layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    except AttributeError:
        return 0.0
    per_layer = 2 * batch * seq * (4 * h * h + 2 * h * inter) + 4 * batch * seq * seq * h
    return float(n_layers * per_layer) * (3.0 if train else 1.0)


def matmul_ceiling(hidden: int = 384, inter: int = 1536, tokens: int = 8192, square: int = 2048,
                   threads: int | None = None, dtype: torch.dtype = torch.float32, reps: int = 5) -> dict:
    """Best GFLOP/s of torch GEMMs shaped like the encoder's (a batch of `tokens` rows through the QKV, FFN-in and
    FFN-out projections) and one large square one, each the best of `reps` timed calls after a warm-up.

    This is the practical ceiling of the machine for such work, the denominator of the share-of-ceiling figures
    (achieved GFLOP/s over it); measure it in the same run, at the same thread count, as the figure it divides.
    Returns {"gflops": best over the shapes, "by_shape": {"MxKxN": GFLOP/s}, "dtype", "threads"}.
    """
    old = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        shapes = [(tokens, hidden, 3 * hidden), (tokens, hidden, inter), (tokens, inter, hidden),
                  (square, square, square)]
        by_shape = {}
        for m, k, n in shapes:
            a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            torch.mm(a, b)  # warm-up
            best = float("inf")
            for _ in range(reps):
                t = time.perf_counter()
                torch.mm(a, b)
                best = min(best, time.perf_counter() - t)
            by_shape[f"{m}x{k}x{n}"] = 2 * m * k * n / best / 1e9
        return {"gflops": max(by_shape.values()), "by_shape": by_shape, "dtype": str(dtype).removeprefix("torch."),
                "threads": torch.get_num_threads()}
    finally:
        torch.set_num_threads(old)


def cpu_model_and_flags() -> tuple[str, str]:
    """The CPU's model name and flags line, from lscpu, else /proc/cpuinfo (empty strings where neither says)."""
    fields = {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, check=True).stdout
        fields = {k.strip().lower(): v.strip() for k, v in (ln.split(":", 1) for ln in out.splitlines() if ":" in ln)}
    except (OSError, subprocess.SubprocessError):
        pass
    model, flags = fields.get("model name", ""), fields.get("flags", "")
    if not (model and flags):
        try:
            with open("/proc/cpuinfo") as f:
                for ln in f:
                    key, _, value = ln.partition(":")
                    key = key.strip().lower()
                    if key == "model name" and not model:
                        model = value.strip()
                    elif key == "flags" and not flags:
                        flags = value.strip()
        except OSError:
            pass
    return model, flags


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's flags (`cpu_model_and_flags`), read once per process (lscpu is a subprocess)."""
    return frozenset(cpu_model_and_flags()[1].split())


def cpu_info() -> dict:
    """The CPU's model name and flags, the matmul-relevant features as booleans, and the instruction set torch
    dispatches to, for benchmark reports."""
    model, flags = cpu_model_and_flags()
    present = set(flags.split())
    return {"model_name": model or platform.processor() or platform.machine(), "flags": flags,
            **{feat: feat in present for feat in CPU_FEATURES},
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}

"""Where a CPU training step's time goes, fp32 against bf16: the matmuls (GEMMs) and everything else.

The issue's goal for a CPU with AMX is bf16 training at 3x fp32's tokens/s. This benchmark says how far the trainer's
own step can get there. Both runs are built by `spanqa.training.prepare`, the same settings and seed, so step k of
each reads the same windows. It times `train_step` in alternating rounds, then profiles a few more steps of each
(torch.profiler, self CPU time by operator). The bf16 step's GEMM time bounds the speed-up: if every other operator
of the bf16 step took no time at all, bf16 would run at `fp32 step / bf16 GEMMs` times fp32. It also times the
encoder's GEMM shapes alone (`spanqa.perf.matmul_ceiling`, both dtypes, the pass's token count) and records the CPU
(lscpu model and flags) and the load average around every phase.

    python benchmarks/train_profile.py                     # 300 questions, 8 timed steps each, 3 profiled
    python benchmarks/train_profile.py --questions 20 --rounds 1 --profile-steps 1   # a smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, versions, write_json  # noqa: E402
from train_memory import first_questions  # noqa: E402

GEMMS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")
FUSED_ATTENTION = "aten::_scaled_dot_product_flash_attention_for_cpu"  # and its _backward: GEMMs and softmax in one


def make_run(data: Path, out: Path, precision: str, args: argparse.Namespace):
    """A prepared training run of the packaged base on `data`, as `spanqa train` would make it."""
    from spanqa.config import TrainConfig
    from spanqa.training import prepare

    steps = args.warmup + args.rounds + args.profile_steps
    cfg = TrainConfig.from_flat(train=str(data), out=str(out), max_steps=steps, epochs=1000.0, seed=3,
                                precision=precision, save_every=0, progress=False, device="cpu", threads=args.threads)
    return prepare(cfg)


def timed_step(run, state) -> tuple[float, int]:
    """One optimiser step: (seconds, real tokens)."""
    from spanqa.training import train_step

    tokens, t0 = state.tokens, time.perf_counter()
    train_step(run, state)
    state.end_batch(len(run.epoch_batches(state.epoch)))
    return time.perf_counter() - t0, state.tokens - tokens


def profile_steps(run, state, n: int) -> dict:
    """Self CPU milliseconds per step: GEMMs, the fused attention kernel, everything else, and the top operators."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        wall = sum(timed_step(run, state)[0] for _ in range(n))
    by_op = {e.key: e.self_cpu_time_total / 1e3 / n for e in prof.key_averages()}
    gemm = sum(ms for op, ms in by_op.items() if op in GEMMS)
    fused = sum(ms for op, ms in by_op.items() if op.startswith(FUSED_ATTENTION))
    total = sum(by_op.values())
    top = dict(sorted(by_op.items(), key=lambda kv: -kv[1])[:15])
    return {"profiled_step_ms": round(wall * 1e3 / n, 1), "self_cpu_ms": round(total, 1), "gemm_ms": round(gemm, 1),
            "fused_attention_ms": round(fused, 1), "other_ms": round(total - gemm - fused, 1),
            "top_ops_ms": {k: round(v, 1) for k, v in top.items()}}


def gemm_shapes(tokens: int, threads: int) -> dict:
    """The encoder's GEMM shapes alone in fp32 and bf16 (GFLOP/s) and bf16's speed-up on each."""
    from spanqa.perf import matmul_ceiling

    f32 = matmul_ceiling(tokens=tokens, threads=threads, dtype=torch.float32)["by_shape"]
    bf16 = matmul_ceiling(tokens=tokens, threads=threads, dtype=torch.bfloat16)["by_shape"]
    return {shape: {"fp32_gflops": round(f32[shape]), "bf16_gflops": round(bf16[shape]),
                    "bf16_speedup": round(bf16[shape] / f32[shape], 2)} for shape in f32}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--questions", type=int, default=300, help="first N questions of the shared train file")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps of each run first")
    p.add_argument("--rounds", type=int, default=8, help="timed steps of each run, alternating which goes first")
    p.add_argument("--profile-steps", type=int, default=3, help="profiled steps of each run afterwards")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    loads = {"start": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        data = first_questions(args.questions, Path(tmp) / "train.jsonl")
        runs = {prec: make_run(data, Path(tmp) / prec, prec, args) for prec in ("fp32", "bf16")}
        for run, state in runs.values():
            for _ in range(args.warmup):
                timed_step(run, state)
        times = {prec: [] for prec in runs}
        for r in range(args.rounds):
            for prec in (("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32")):
                times[prec].append(timed_step(*runs[prec]))
        loads["after_timing"] = os.getloadavg()
        profiles = {prec: profile_steps(*runs[prec], args.profile_steps) for prec in runs}
        loads["after_profiles"] = os.getloadavg()
    tokens_per_pass = runs["fp32"][0].cfg.optim.max_batch_tokens or 2048
    shapes = gemm_shapes(tokens_per_pass, args.threads)
    loads["end"] = os.getloadavg()
    report(args, times, profiles, shapes, loads)


def report(args: argparse.Namespace, times: dict, profiles: dict, shapes: dict, loads: dict) -> None:
    """Print the table and write the JSON."""
    step = {prec: statistics.median(s for s, _ in ts) for prec, ts in times.items()}
    tps = {prec: sum(n for _, n in ts) / sum(s for s, _ in ts) for prec, ts in times.items()}
    paired = [f[0] / b[0] for f, b in zip(times["fp32"], times["bf16"], strict=True)]
    bf16_gemm_s = profiles["bf16"]["gemm_ms"] / 1e3
    bound = step["fp32"] / bf16_gemm_s if bf16_gemm_s else None
    record = {
        "settings": vars(args), "versions": versions(), "load_average": loads,
        "step_ms": {k: round(v * 1e3, 1) for k, v in step.items()},
        "tokens_per_s": {k: round(v) for k, v in tps.items()},
        "bf16_speedup": {"tokens_per_s_ratio": round(tps["bf16"] / tps["fp32"], 2),
                         "paired_step_ratios": [round(x, 2) for x in paired],
                         "median_paired": round(statistics.median(paired), 2)},
        "bound_if_only_bf16_gemms_took_time": round(bound, 2) if bound else None,
        "bf16_non_gemm_ms_allowed_for_3x": round((step["fp32"] / 3 - bf16_gemm_s) * 1e3, 1),
        "profiles": profiles, "gemm_shapes": shapes,
    }
    print(f"CPU: {record['versions']['cpu']['model_name']}; load {loads}")
    for prec in ("fp32", "bf16"):
        pr = profiles[prec]
        print(f"{prec}: step {record['step_ms'][prec]} ms, {record['tokens_per_s'][prec]} tokens/s; profiled: GEMMs "
              f"{pr['gemm_ms']} ms, fused attention {pr['fused_attention_ms']} ms, the rest {pr['other_ms']} ms")
    print(f"bf16 / fp32 tokens/s: {record['bf16_speedup']['tokens_per_s_ratio']}x (paired steps, median "
          f"{record['bf16_speedup']['median_paired']}x); with only the bf16 GEMMs taking time: "
          f"{record['bound_if_only_bf16_gemms_took_time']}x; for 3x the rest of a bf16 step must take "
          f"{record['bf16_non_gemm_ms_allowed_for_3x']} ms")
    for shape, s in shapes.items():
        print(f"  GEMM {shape}: fp32 {s['fp32_gflops']} GFLOP/s, bf16 {s['bf16_gflops']} ({s['bf16_speedup']}x)")
    print("wrote", write_json("train_profile.json", record))


if __name__ == "__main__":
    OUT.mkdir(exist_ok=True)
    main()

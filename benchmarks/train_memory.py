"""Training memory and speed on the CPU: peak RSS, real tokens/s and the share of the matmul ceiling, per setting.

Each setting trains the packaged base on the first `--questions` questions of the shared train file with the
defaults (`--max-steps` optimiser steps, batch 32), in its own process, one after the other; the peak RSS is the
process's own (os.wait4). The fp32 and bf16 matmul ceilings are measured in the same run, at the trainer's thread
count, and the machine's load average is recorded around every phase (the numbers mean little on a busy machine).

    python benchmarks/train_memory.py                               # fp32 and bf16 with the default token budget
    python benchmarks/train_memory.py --settings fp32:100000 fp32:2048 bf16:2048 --max-steps 30
    python benchmarks/train_memory.py --questions 20 --max-steps 2  # a smoke run
    # this checkout against another one (a setting ending in @baseline trains with that checkout's src/), in rounds
    python benchmarks/train_memory.py --baseline-src ../old/src --settings fp32:2048@baseline fp32:2048 \
        fp32:2048@baseline fp32:2048
    # bf16 against fp32 after the same steps: dev F1 of each trained model (torch fp32 engine, first N questions)
    python benchmarks/train_memory.py --questions 3000 --max-steps 60 --dev-limit 1000 --settings bf16:2048 fp32:2048
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEV_V11, OUT, TRAIN_V11, run_peak_rss, versions, write_json  # noqa: E402


def first_questions(n: int, path: Path) -> Path:
    """The first n questions of the shared train file, as HF-layout JSONL."""
    from spanqa.data import load_dataset

    with open(path, "w") as f:
        for e in load_dataset(TRAIN_V11).examples[:n]:
            answers = {"text": [a.text for a in e.answers], "answer_start": [a.start for a in e.answers]}
            f.write(json.dumps({"id": e.id, "question": e.question, "context": e.context, "answers": answers}) + "\n")
    return path


def train_once(data: Path, out: Path, precision: str, budget: int, args: argparse.Namespace,
               attention_dropout: str | None = None, src: str | None = None) -> dict:
    """One `spanqa train` process: its summary, peak RSS and wall time."""
    cmd = [sys.executable, "-m", "spanqa", "train", "--train", str(data), "--out", str(out), "--max-steps",
           str(args.max_steps), "--seed", "3", "--precision", precision, "--max-batch-tokens", str(budget),
           "--save-every", "0", "--no-progress", "--device", "cpu"]
    if attention_dropout is not None:
        cmd += ["--attention-dropout", attention_dropout]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if src:
        env["PYTHONPATH"] = str(Path(src).resolve())
    load_before, t0 = os.getloadavg(), time.perf_counter()
    with open(out.with_suffix(".log"), "w") as log:
        stdout, peak_kib = run_peak_rss(cmd, env, stderr=log, failed=f"; see {out.with_suffix('.log')}")
    summary = json.loads(stdout[stdout.index("{") :])
    recipe = json.loads((out / "spanqa.json").read_text()).get("training", {}).get("recipe", {})
    return {"precision": precision, "max_batch_tokens": budget, "attention_dropout": attention_dropout,
            "attention_dropout_that_ran": recipe.get("attention_dropout"),  # None: the base's (older checkouts)
            "src": src or "this checkout", "peak_rss_gb": peak_kib / 2**20,
            "wall_s": round(time.perf_counter() - t0, 1), "load_before": load_before, "load_after": os.getloadavg(),
            **{k: summary[k] for k in ("steps", "train_seconds", "real_tokens", "padded_tokens", "tokens_per_s",
                                       "matmul_gflops_per_s", "loss_ema", "threads")}}


def dev_f1(model: Path, limit: int) -> dict:
    """The trained model on the first `limit` dev-v1.1 questions, torch fp32 (the same engine for every setting)."""
    cmd = [sys.executable, "-m", "spanqa", "evaluate", "--model", str(model), "--data", str(DEV_V11), "--limit",
           str(limit), "--engine", "torch", "--json", "--no-progress"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    metrics = json.loads(out.stdout)
    return {"dev_questions": limit, "dev_f1": metrics["f1"], "dev_em": metrics["exact_match"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--questions", type=int, default=300)
    p.add_argument("--max-steps", type=int, default=30, help="(300 questions, batch 32: 20 steps in 2 epochs)")
    p.add_argument("--settings", nargs="+", default=["fp32:2048", "bf16:2048"], metavar="PRECISION:TOKENS[:P]",
                   help="precision, --max-batch-tokens (100000: no budget, as before it existed) and optionally "
                        "--attention-dropout of each run")
    p.add_argument("--threads", type=int, default=None, help="trainer threads (default: torch's)")
    p.add_argument("--dev-limit", type=int, default=0, help="score each trained model on this many dev questions")
    p.add_argument("--baseline-src", help="another checkout's src/: settings ending in @baseline train with it")
    args = p.parse_args()
    import torch

    from spanqa.perf import matmul_ceiling

    run = OUT / f"train_memory-{time.strftime('%Y%m%d-%H%M%S')}"
    run.mkdir(parents=True, exist_ok=True)
    data = first_questions(args.questions, run / "train.jsonl")
    threads = args.threads or torch.get_num_threads()
    ceilings = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        ceilings[name] = {"load": os.getloadavg(), **matmul_ceiling(threads=threads, dtype=dtype)}
        print(f"{name} matmul ceiling at {threads} thread(s): {ceilings[name]['gflops']:.1f} GFLOP/s "
              f"(load {ceilings[name]['load'][0]:.2f})", flush=True)
    rows = []
    for n, setting in enumerate(args.settings):
        spec, _, which = setting.partition("@")
        if which and not args.baseline_src:
            raise SystemExit(f"{setting}: @baseline needs --baseline-src")
        precision, budget, *attn = spec.split(":")
        name = "-".join([str(n), precision, budget, *attn, *([which] if which else [])])
        row = train_once(data, run / name, precision, int(budget), args, attn[0] if attn else None,
                         args.baseline_src if which else None)
        row["share_of_ceiling"] = row["matmul_gflops_per_s"] / ceilings[precision]["gflops"]
        if args.dev_limit:
            row.update(dev_f1(run / name, args.dev_limit))
            print(f"{name}: dev F1 {row['dev_f1']:.2f} on {args.dev_limit} questions", flush=True)
        rows.append(row)
        print(f"{name}: peak RSS {row['peak_rss_gb']:.2f} GB, {row['tokens_per_s']:.0f} real tokens/s, "
              f"{row['matmul_gflops_per_s']:.1f} matmul GFLOP/s = {row['share_of_ceiling']:.0%} of the "
              f"{precision} ceiling, loss_ema {row['loss_ema']:.4f} (load {row['load_before'][0]:.2f} -> "
              f"{row['load_after'][0]:.2f})", flush=True)
    path = write_json(f"{run.name}.json", {"settings": vars(args), "versions": versions(), "ceilings": ceilings,
                                           "runs": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

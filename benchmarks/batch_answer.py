"""Throughput and peak memory of `spanqa answer --input/--output` on SQuAD dev-v1.1 questions.

Runs the CLI as a subprocess under /usr/bin/time -v twice on the same machine: an anchor of `--anchor`
questions and the full `--n`, so the ratios (questions/s and peak RSS, full vs anchor) are comparable on a
noisy shared machine; bounded memory shows as an RSS ratio near 1. The question files are written to a
temporary directory (never into git). Prints and writes benchmarks/out/batch_answer.json with the settings.

    python benchmarks/batch_answer.py --n 10000 --anchor 1000 [--model DIR] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEV_V11 as DEV  # noqa: E402
from common import run_json  # noqa: E402
from common import write_dev_questions as write_questions  # noqa: E402


def run(inp: Path, out: Path, args) -> dict:
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "spanqa", "answer", "--input", str(inp), "--output", str(out),
           "--no-progress", "--json", "--chunk", str(args.chunk), "--batch-size", str(args.batch_size)]
    if args.model:
        cmd += ["--model", args.model]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads)}
    stats, wall, stderr = run_json(cmd, env)
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr).group(1))
    n_lines = sum(1 for _ in open(out, encoding="utf-8"))
    return {"questions": stats["answered"], "output_lines": n_lines, "answer_seconds": stats["seconds"],
            "questions_per_second": stats["questions_per_second"], "process_wall_seconds": round(wall, 1),
            "peak_rss_mib": round(rss_kb / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--anchor", type=int, default=1000)
    ap.add_argument("--model", help="default: the shipped default model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()

    import tokenizers
    import torch
    import transformers

    results = {}
    with tempfile.TemporaryDirectory(prefix="spanqa-bench-") as d:
        for name, n in (("anchor", args.anchor), ("full", args.n)):
            inp = Path(d) / f"questions_{n}.jsonl"
            got = write_questions(inp, n)
            results[name] = run(inp, Path(d) / f"answers_{n}.jsonl", args)
            results[name]["input_mib"] = round(inp.stat().st_size / 2**20, 2)
            assert results[name]["output_lines"] == got == results[name]["questions"]
            print(name, json.dumps(results[name]), flush=True)
    report = {
        "settings": {"n": args.n, "anchor": args.anchor, "model": args.model or "shipped default",
                     "threads": args.threads, "chunk": args.chunk, "batch_size": args.batch_size,
                     "device": "cpu", "cpus": os.cpu_count(), "python": platform.python_version(),
                     "torch": torch.__version__, "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__, "data": str(DEV)},
        "results": results,
        "ratios": {"qps_full_over_anchor": round(results["full"]["questions_per_second"]
                                                 / results["anchor"]["questions_per_second"], 3),
                   "rss_full_over_anchor": round(results["full"]["peak_rss_mib"] / results["anchor"]["peak_rss_mib"],
                                                 3)},
    }
    out = Path(__file__).parent / "out" / "batch_answer.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

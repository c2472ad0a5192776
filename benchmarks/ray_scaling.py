"""Ray's overhead and per-actor throughput: `spanqa answer --input` in one process with 2 threads against the same
command with `--ray` (a local Ray instance) and 2 single-thread actors, on the dev-v1.1 questions (10,570), the same
model, engine and shards, in alternating rounds; the answers must be byte-identical.

    python benchmarks/ray_scaling.py                         # all 10,570 questions, 2 rounds of each
    python benchmarks/ray_scaling.py --limit 40 --rounds 1   # a quick look

Each run is a fresh `python -m spanqa answer ... --json` process, timed as a user would see it: `seconds` is the
command's own count (from its first check to its last answer on disk: the model load, and for Ray the start of the
local instance, the scan and the actors' loads, included) and `process_seconds` the whole process. Both paths get the
same --chunk (the Ray shard size, and the single-process batch of questions), so every engine answers identically;
a small --chunk keeps the last shards from leaving an actor idle at the end. The ratio Ray/single of questions/s
is the overhead (goal: >= 0.9 on 2 cores); questions/s per actor, measured while the actors answer, is what N
machines multiply. Prints and writes benchmarks/out/ray_scaling.json with the settings, versions, CPU and load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEV_V11, run_json, versions, write_dev_questions, write_json  # noqa: E402


def run_answer(args, inp: Path, out: Path, use_ray: bool) -> dict:
    """One `spanqa answer --input` process; its --json stats, wall time and the load around it."""
    cmd = [sys.executable, "-m", "spanqa", "answer", "--input", str(inp), "--output", str(out), "--json",
           "--no-progress", "--engine", args.engine, "--chunk", str(args.chunk), "--batch-size", str(args.batch_size)]
    cmd += ["--model", args.model] if args.model else []
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if use_ray:
        cmd += ["--ray", "--actors", str(args.actors), "--threads-per-actor", str(args.threads_per_actor)]
        env.pop("OMP_NUM_THREADS", None)  # Ray gives each actor its own
    else:
        env["OMP_NUM_THREADS"] = str(args.threads)  # ONNX Runtime's default: one thread per physical core
    load = os.getloadavg()[0]
    stats, wall, _ = run_json(cmd, env)
    return {**stats, "process_seconds": round(wall, 1), "load_average_before": round(load, 2),
            "load_average_after": round(os.getloadavg()[0], 2)}


def answers(out: Path) -> bytes:
    """The answers as one JSONL: the single-process file, or the Ray shards in order."""
    return out.read_bytes() if out.is_file() else b"".join(p.read_bytes() for p in sorted(out.glob("part-*.jsonl")))


def summarise(runs: list[dict], actors: int | None = None) -> dict:
    qps = [r["questions_per_second"] for r in runs]
    out = {"questions_per_second_median": round(statistics.median(qps), 2), "questions_per_second": qps,
           "process_seconds": [r["process_seconds"] for r in runs]}
    if actors:
        out["questions_per_second_per_actor"] = round(statistics.median(qps) / actors, 2)
        out["actor_questions_per_second_while_answering"] = [r["actor_questions_per_second"] for r in runs]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=None, help="the first N dev-v1.1 questions (default: all 10,570)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of (single, Ray), alternating which goes first")
    ap.add_argument("--model", help="default: the shipped model")
    ap.add_argument("--engine", default="auto", help="the same engine for both (default: auto, onnx-int8 on a CPU)")
    ap.add_argument("--threads", type=int, default=2, help="the single process's threads")
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--threads-per-actor", type=int, default=1)
    ap.add_argument("--chunk", type=int, default=128, help="questions per shard (and per single-process batch)")
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()

    report: dict = {"settings": {**vars(args), "data": str(DEV_V11), "model": args.model or "shipped default"},
                    "versions": {**versions(), "ray": version("ray"), "onnxruntime": version("onnxruntime")},
                    "load_average_start": os.getloadavg()}
    runs: dict[str, list] = {"single": [], "ray": []}
    identical = True
    with tempfile.TemporaryDirectory(prefix="spanqa-ray-bench-") as d:
        inp = Path(d) / "dev-v1.1.jsonl"
        n = write_dev_questions(inp, args.limit)
        report["settings"]["questions"] = n
        warm = Path(d) / "warm.jsonl"
        write_dev_questions(warm, 2)
        run_answer(args, warm, Path(d) / "warm-answers.jsonl", use_ray=False)  # builds the ONNX graph once, untimed
        reference = None
        for r in range(args.rounds):
            for kind in (("single", "ray") if r % 2 == 0 else ("ray", "single")):
                out = Path(d) / f"{kind}-{r}" / ("answers.jsonl" if kind == "single" else "shards")
                result = run_answer(args, inp, out, use_ray=kind == "ray")
                assert result["answered"] == n, result
                got = answers(out)
                reference = reference if reference is not None else got
                result["identical_to_first_run"] = got == reference
                identical &= got == reference
                runs[kind].append(result)
                print(kind, r, json.dumps(result), flush=True)
    single, ray = summarise(runs["single"]), summarise(runs["ray"], args.actors)
    report.update({
        "single_process": single, "ray": ray, "runs": runs, "answers_identical": identical,
        "ratio_ray_over_single": round(ray["questions_per_second_median"] / single["questions_per_second_median"], 3),
        "load_average_end": os.getloadavg()})
    path = write_json("ray_scaling.json", report)
    print(json.dumps({k: report[k] for k in ("single_process", "ray", "ratio_ray_over_single", "answers_identical")},
                     indent=2))
    print(f"wrote {path}")
    if not identical:
        sys.exit("the answers differ between runs")


if __name__ == "__main__":
    main()

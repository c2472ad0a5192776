"""Shared helpers for benchmarks: data paths, the settings/versions block, writing results.

FLOP counts, the matmul ceiling and the CPU description live in `spanqa.perf`, shared with the trainer.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

from spanqa.perf import cpu_info

OUT = Path(__file__).resolve().parent / "out"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DEV_V11 = SHARED / "squad" / "dev-v1.1.json.gz"
TRAIN_V11 = SHARED / "squad" / "reconstructed" / "train-v1.1.explore-derived.json.gz"


def versions() -> dict:
    import tokenizers
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__, "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "cpu": cpu_info()}


def write_dev_questions(path: Path, n: int | None = None) -> int:
    """The first `n` (all: None) dev-v1.1 questions as the JSONL `spanqa answer --input` reads; returns how many."""
    import gzip

    data = json.load(gzip.open(DEV_V11, "rt", encoding="utf-8"))["data"]
    k = 0
    with open(path, "w", encoding="utf-8") as f:
        for article in data:
            for para in article["paragraphs"]:
                for qa in para["qas"]:
                    if k == n:
                        return k
                    f.write(json.dumps({"id": qa["id"], "question": qa["question"], "context": para["context"]},
                                       ensure_ascii=False) + "\n")
                    k += 1
    return k


def run_json(cmd: list[str], env: dict) -> tuple[dict, float, str]:
    """Run a command whose last stdout line is JSON (`spanqa ... --json`): (that JSON, wall seconds, its stderr); a
    failure exits with the command and the tail of its stderr."""
    import subprocess
    import sys
    import time

    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"{' '.join(map(str, cmd))} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1]), wall, p.stderr


# A child's ru_maxrss starts at its parent's peak (Linux keeps the pre-exec high-water mark across exec), so a child of
# a driver that imported torch "peaks" at 220 MB however small it is. This launcher, a bare `python -S` of about 8 MB,
# spawns the command and writes its exit code and peak RSS (KiB) to a file: the floor is the launcher's 8 MB.
_LAUNCH = ("import os,sys\n"
           "pid=os.posix_spawnp(sys.argv[2],sys.argv[2:],os.environ)\n"
           "_,st,u=os.wait4(pid,0)\n"
           "open(sys.argv[1],'w').write(f'{os.waitstatus_to_exitcode(st)} {u.ru_maxrss}')\n")


def run_peak_rss(cmd: list[str], env: dict, stderr=None, failed: str = "") -> tuple[str, float]:
    """Run a command to its end: (its stdout, its own peak RSS in KiB, taken through `_LAUNCH`); a failure exits
    naming the command (and `failed`, where to look; with `stderr=subprocess.PIPE`, the tail of its stderr)."""
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "rusage"
        proc = subprocess.run([sys.executable, "-S", "-c", _LAUNCH, str(result), *map(str, cmd)], env=env,
                              stdout=subprocess.PIPE, stderr=stderr, text=True)
        code, peak_kib = result.read_text().split() if result.exists() else (proc.returncode, 0)
    if int(code) != 0:
        tail = f":\n{proc.stderr[-3000:]}" if proc.stderr else ""
        raise SystemExit(f"{' '.join(map(str, cmd))} failed{failed}{tail}")
    return proc.stdout, float(peak_kib)


def run_step(cmd: list[str], env: dict | None = None) -> float:
    """Run one benchmark step to its end, printing its time and the load average at its start; its own peak RSS in
    MB (through `run_peak_rss`: a worker's own `getrusage(RUSAGE_SELF)` would start at the driver's RSS)."""
    import subprocess
    import time

    loadavg = os.getloadavg()[0]
    t = time.perf_counter()
    _, peak_kib = run_peak_rss(cmd, os.environ if env is None else env, stderr=subprocess.PIPE)
    print(f"  done in {time.perf_counter() - t:.0f} s (load average at start {loadavg:.1f})", flush=True)
    return peak_kib / 1024


def write_json(name: str, record: dict) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / name
    path.write_text(json.dumps(record, indent=2))
    return path


def linear_twin(out: Path, env: dict, run) -> tuple[Path, Path]:
    """The default model's linear-head twin (linear_heads.py), as a spanqa reader and exported to HF format, made on
    first use under `out`; `run(cmd, env)` runs each step (the caller's way of reporting a failed step)."""
    import sys

    linear, hf_dir = out / "linear-reader", out / "linear-hf"
    if not (linear / "spanqa.json").exists():
        print("building the linear-head twin of the default model (benchmarks/linear_heads.py)", flush=True)
        run([sys.executable, str(Path(__file__).resolve().parent / "linear_heads.py"), "--train", str(TRAIN_V11),
             "--out", str(linear)], env)
    if not (hf_dir / "config.json").exists():
        run([sys.executable, "-m", "spanqa", "export", "--model", str(linear), "--format", "hf", "--out",
             str(hf_dir)], env)
    return linear, hf_dir

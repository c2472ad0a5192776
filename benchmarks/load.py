"""Bounded load test of `spanqa serve` on loopback: throughput, latency percentiles, errors, the server's RSS.

Starts `spanqa serve` (the shipped model unless --model) as a subprocess, then runs two phases against it with the
same questions (SQuAD dev-v1.1 if the shared data is there, else a few built-in ones):
  anchor: --anchor-requests one at a time (concurrency 1: no micro-batching can happen)
  load:   --requests at --concurrency (concurrent requests are micro-batched into shared forward passes)
and reports the load phase's throughput as a ratio to the anchor's, measured in the same run. Prints and writes JSON
with every setting (benchmarks/out/load.json). The client runs on the same machine, so it shares the CPU.

    .venv/bin/python benchmarks/load.py --requests 2000 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT.parent / "shared" / "data" / "squad" / "dev-v1.1.json.gz"
SAMPLES = [
    ("Who wrote Pride and Prejudice?",
     "Pride and Prejudice is an 1813 novel of manners written by Jane Austen. The novel follows the character "
     "development of Elizabeth Bennet, the protagonist of the book."),
    ("When did the Apollo 11 mission land on the Moon?",
     "Apollo 11 was the American spaceflight that first landed humans on the Moon. Commander Neil Armstrong and "
     "lunar module pilot Buzz Aldrin landed the Apollo Lunar Module Eagle on July 20, 1969."),
    ("What is the capital of Australia?",
     "Canberra is the capital city of Australia. Founded following the federation of the colonies of Australia "
     "as the seat of government for the new nation, it is the country's largest inland city."),
]


def questions(limit: int) -> tuple[list[tuple[str, str]], str]:
    if DEV.exists():
        from spanqa.data import load_dataset

        data = load_dataset(str(DEV))
        return [(e.question, e.context) for e in data.examples[:limit]], f"{DEV.name} (first {limit})"
    return SAMPLES, "built-in samples"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "spanqa", "serve", "--port", str(port), "--device", "cpu", "--log-level", "warning",
           "--batch-wait-ms", str(args.batch_wait_ms), "--max-batch-items", str(args.max_batch_items)]
    if args.model:
        cmd += ["--model", args.model]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"spanqa serve exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    sys.exit("spanqa serve did not come up within 300 s")


async def run_phase(url: str, pool: list[tuple[str, str]], n: int, concurrency: int, top_k: int) -> dict:
    """n requests, at most `concurrency` in flight; every request must come back 200 with an answer list."""
    latencies: list[float] = []
    errors: list[str] = []
    counter = iter(range(n))

    async def worker(client: httpx.AsyncClient) -> None:
        for i in counter:
            q, c = pool[i % len(pool)]
            t0 = time.perf_counter()
            try:
                r = await client.post(url, json={"question": q, "context": c, "top_k": top_k})
                ok = r.status_code == 200 and isinstance(r.json().get("answers"), list)
                if not ok:
                    errors.append(f"{r.status_code}: {r.text[:200]}")
            except httpx.HTTPError as e:
                errors.append(f"{type(e).__name__}: {e}")
            latencies.append(time.perf_counter() - t0)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {"requests": n, "concurrency": concurrency, "wall_s": round(wall, 2),
            "throughput_rps": round(n / wall, 2), "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p90_ms": round(float(np.percentile(lat, 90)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "max_ms": round(float(lat.max()), 1), "errors": len(errors), "first_errors": errors[:5]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--anchor-requests", type=int, default=200, help="sequential requests for the anchor phase")
    p.add_argument("--model", help="reader directory (default: the shipped model)")
    p.add_argument("--threads", type=int, help="server torch threads (default: torch's, = cores)")
    p.add_argument("--batch-wait-ms", type=float, default=5.0)
    p.add_argument("--max-batch-items", type=int, default=64)
    p.add_argument("--top-k", type=int, default=1)
    p.add_argument("--pool", type=int, default=200,
                   help="distinct questions; both phases cycle through them from the first (anchor = pool: each once)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "load.json"))
    args = p.parse_args()
    if min(args.requests, args.concurrency, args.anchor_requests) < 1:
        sys.exit("--requests, --concurrency and --anchor-requests must be at least 1")

    pool, source = questions(args.pool)
    port = free_port()
    proc = start_server(args, port)
    server = psutil.Process(proc.pid)
    base = f"http://127.0.0.1:{port}"
    try:
        mib = lambda: round(server.memory_info().rss / 2**20, 1)  # noqa: E731
        rss_start = mib()
        anchor = asyncio.run(run_phase(base + "/v1/answer", pool, args.anchor_requests, 1, args.top_k))
        rss_before = mib()
        stats_before = httpx.get(base + "/healthz", timeout=10).json()["stats"]
        peak = [rss_before]
        done = threading.Event()

        def sample_rss() -> None:  # once a second while the load runs
            while not done.wait(1.0):
                peak.append(mib())

        sampler = threading.Thread(target=sample_rss)
        sampler.start()
        load = asyncio.run(run_phase(base + "/v1/answer", pool, args.requests, args.concurrency, args.top_k))
        done.set()
        sampler.join()
        rss_after = mib()
        health = httpx.get(base + "/healthz", timeout=10).json()
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    import fastapi
    import torch
    import uvicorn

    import spanqa

    stats = {k: health["stats"][k] - stats_before[k] for k in ("batches", "items", "errors")}  # the load phase's
    result = {
        "benchmark": "spanqa serve load test (loopback)",
        "settings": {**vars(args), "questions": source, "distinct_questions": len(pool),
                     "mean_context_chars": round(float(np.mean([len(c) for _, c in pool])), 1),
                     "server_torch_threads": args.threads or f"torch default ({torch.get_num_threads()} here)",
                     "cpu_count": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                     "python": platform.python_version(), "torch": torch.__version__, "fastapi": fastapi.__version__,
                     "uvicorn": uvicorn.__version__, "spanqa": spanqa.__version__,
                     "note": "client and server share the machine's CPU"},
        "anchor_sequential": anchor,
        "load": load,
        "throughput_ratio_load_over_anchor": round(load["throughput_rps"] / anchor["throughput_rps"], 2),
        "server": {"rss_mib_at_start": rss_start, "rss_mib_before_load": rss_before, "rss_mib_after_load": rss_after,
                   "rss_mib_peak_during_load": max(peak),
                   "load_forward_batches": stats["batches"], "load_items": stats["items"],
                   "load_mean_items_per_batch": round(stats["items"] / max(stats["batches"], 1), 2),
                   "largest_batch": health["stats"]["largest_batch"], "load_server_errors": stats["errors"]},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

"""The anchor of benchmarks/speed.py: the transformers question-answering pipeline, in its own process and venv.

Run by speed.py with the Python of a venv that has transformers==4.57.6 (the pipeline was removed in 5.3); it
imports nothing from spanqa. Reads the questions speed.py wrote, writes timings and predictions as JSON.

    python hf_pipeline_worker.py INPUTS.json MODEL_DIR OUT.json --threads 2 --batch-sizes 1,4,8,16,32
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("inputs")
    p.add_argument("model")
    p.add_argument("out")
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--batch-sizes", default="1,4,8,16,32")
    p.add_argument("--sweep-questions", type=int, default=200)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()

    import torch
    import transformers
    from transformers import pipeline
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    data = json.loads(open(args.inputs).read())
    t0 = time.perf_counter()
    pipe = pipeline("question-answering", model=args.model, tokenizer=args.model, device=-1)
    load_s = time.perf_counter() - t0
    settings = {"max_seq_len": data["format"]["max_seq_len"], "doc_stride": data["format"]["doc_stride"],
                "max_question_len": data["format"]["max_question_len"], "max_answer_len": data["max_answer_len"],
                "top_k": 1, "handle_impossible_answer": False}

    def run(qs, cs, bs):
        t = time.perf_counter()
        out = pipe(question=qs, context=cs, batch_size=bs, **settings)
        out = out if isinstance(out, list) else [out]
        return time.perf_counter() - t, [o["answer"] for o in out]

    qs, cs = data["questions"], data["contexts"]
    pipe(question=qs[:8], context=cs[:8], batch_size=8, **settings)  # warm-up
    n = args.sweep_questions
    sweep = {}
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        sweep[bs] = n / run(qs[:n], cs[:n], bs)[0]
    best = max(sweep, key=sweep.get)
    runs = [run(qs, cs, best) for _ in range(args.repeats)]
    seconds = min(r[0] for r in runs)
    latencies = []
    for q, c in zip(qs[: data["latency_questions"]], cs[: data["latency_questions"]], strict=True):
        t = time.perf_counter()
        pipe(question=q, context=c, **settings)
        latencies.append(time.perf_counter() - t)
    lq, lc = data["long"]["questions"], data["long"]["contexts"]
    long_s, long_pred = run(lq, lc, best)
    q = statistics.quantiles(latencies, n=100)
    result = {
        "system": "hf-pipeline", "transformers": transformers.__version__, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "load_seconds": load_s, "batch_sweep_qps": sweep, "batch_size": best,
        "seconds": seconds, "all_seconds": [r[0] for r in runs], "questions_per_second": len(qs) / seconds,
        "latency_p50_ms": 1000 * statistics.median(latencies), "latency_p99_ms": 1000 * q[98],
        "long_seconds": long_s, "long_questions_per_second": len(lq) / long_s,
        "predictions": dict(zip(data["ids"], runs[0][1], strict=True)),
        "long_predictions": dict(zip(data["long"]["ids"], long_pred, strict=True)),
        "settings": settings,
    }
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()

"""Quality of the shipped default model: dev-v1.1 and Adversarial SQuAD (AddSent, AddOneSent).

Official SQuAD v1.1 EM/F1 on each whole file (as Jia & Liang report), plus begin- and end-head accuracy.

    python benchmarks/quality.py [--model DIR] [--limit N] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEV_V11, SHARED, versions, write_json  # noqa: E402

SETS = {
    "dev-v1.1": DEV_V11,
    "adversarial-AddSent": SHARED / "adversarial_squad" / "sample1k-HCVerifyAll.json.gz",
    "adversarial-AddOneSent": SHARED / "adversarial_squad" / "sample1k-HCVerifySample.json.gz",
}
KEYS = ("exact_match", "f1", "begin_accuracy", "end_accuracy", "both_accuracy", "end_right_begin_wrong",
        "begin_right_end_wrong", "num_questions", "questions_per_second")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="saved reader (default: the shipped default model)")
    p.add_argument("--limit", type=int, help="first N questions of each set (default: all)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--sets", nargs="*", default=list(SETS), choices=list(SETS))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from spanqa import Reader
    from spanqa.data import load_dataset
    from spanqa.evaluation import evaluate

    reader = Reader.load(args.model, device="cpu", engine="torch")
    results = {}
    for name in args.sets:
        path = SETS[name]
        if not path.exists():
            print(f"skip {name}: {path} not found", file=sys.stderr)
            continue
        t0 = time.perf_counter()
        m = evaluate(reader, load_dataset(path), limit=args.limit, batch_size=args.batch_size, progress=True)
        results[name] = {k: m[k] for k in KEYS if k in m} | {"wall_seconds": time.perf_counter() - t0}
        print(name, json.dumps(results[name]), flush=True)
    record = {"benchmark": "quality", "model": args.model or "shipped default (spanqa/default_reader)",
              "settings": {"threads": args.threads, "batch_size": args.batch_size, "limit": args.limit,
                           "format": vars(reader.config.format) if hasattr(reader.config.format, "__dict__")
                           else str(reader.config.format),
                           "decode": str(reader.config.decode), "device": "cpu", "dtype": "float32"},
              "versions": versions(), "results": results}
    path = write_json(f"quality-{time.strftime('%Y%m%d-%H%M%S')}.json", record)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

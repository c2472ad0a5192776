"""Abstention and calibration of a reader, in one run: SQuAD v2.0 dev (reconstructed), v1.1 dev, Adversarial AddSent.

For each set: EM/F1 with the threshold stored in the model, HasAns F1 and NoAns accuracy (v2.0), how often the
reader abstains, the expected calibration error (15 bins, top-1, correct = exact match), and `best_f1_optimistic`
(the threshold tuned on the set itself: an upper bound, not a result). The anchor, from the same forward pass: the
same reader that never abstains (what spanqa shipped before), with the ratio of the two F1s.

The reconstructed v2.0 dev set is a test set: nothing here tunes on it.

    python benchmarks/abstention.py [--model DIR] [--limit N] [--engine E] [--sets ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEV_V11, SHARED, versions, write_json  # noqa: E402

SETS = {
    "dev-v2.0-reconstructed": SHARED / "squad" / "reconstructed" / "dev-v2.0.reconstructed-no-plausible.json.gz",
    "dev-v1.1": DEV_V11,
    "adversarial-AddSent": SHARED / "adversarial_squad" / "sample1k-HCVerifyAll.json.gz",
}
KEYS = ("exact_match", "f1", "HasAns_f1", "NoAns_exact", "abstained_percent", "ece", "best_f1_optimistic",
        "num_questions")


def score_set(reader, path: Path, limit: int | None, batch_size: int) -> dict:
    from spanqa.calibration import ece
    from spanqa.data import load_dataset
    from spanqa.evaluation import squad_metrics, top1

    data = load_dataset(path)
    examples = data.examples[:limit] if limit else data.examples
    t0 = time.perf_counter()
    preds = reader.predict([e.question for e in examples], [e.context for e in examples], batch_size=batch_size,
                           progress=True)
    seconds = time.perf_counter() - t0
    v2 = data.has_unanswerable
    ours = squad_metrics(examples, preds, v2)
    tops = [top1(ex, p, v2) for ex, p in zip(examples, preds, strict=True)]
    ours["ece"] = ece([t[1] for t in tops], [t[2] for t in tops])
    never = [replace(p, no_answer=False) for p in preds]
    anchor = squad_metrics(examples, never, v2)
    out = {k: ours[k] for k in KEYS if k in ours} | {"num_questions": len(examples),
                                                       "questions_per_second": len(examples) / seconds}
    out["anchor_never_abstains"] = {k: anchor[k] for k in ("exact_match", "f1", "HasAns_f1", "NoAns_exact")
                                    if k in anchor}
    out["f1_ratio_to_anchor"] = ours["f1"] / max(anchor["f1"], 1e-9)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="saved reader (default: the shipped default model)")
    p.add_argument("--engine", default="auto", help="auto (the default: onnx-int8 on a CPU), torch, onnx, onnx-int8")
    p.add_argument("--limit", type=int, help="first N questions of each set (default: all)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--sets", nargs="*", default=list(SETS), choices=list(SETS))
    args = p.parse_args()
    from spanqa import Reader
    from spanqa.perf import cpu_info

    reader = Reader.load(args.model, device="cpu", engine=args.engine)
    results = {"load_average_start": os.getloadavg()}
    for name in args.sets:
        if not SETS[name].exists():
            print(f"skip {name}: {SETS[name]} not found", file=sys.stderr)
            continue
        results[name] = score_set(reader, SETS[name], args.limit, args.batch_size)
        print(name, json.dumps(results[name]), flush=True)
    results["load_average_end"] = os.getloadavg()
    record = {"benchmark": "abstention", "model": args.model or "shipped default (spanqa/default_reader)",
              "settings": {"engine": args.engine, "batch_size": args.batch_size, "limit": args.limit,
                           "decode": str(reader.config.decode),
                           "calibration_tuned_on": reader.config.calibration.get("tuned_on")},
              "versions": versions(), "cpu": cpu_info()["model_name"], "results": results}
    path = write_json(f"abstention-{time.strftime('%Y%m%d-%H%M%S')}.json", record)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

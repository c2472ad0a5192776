"""Distillation: the teacher, the distilled student and the shipped default on dev-v1.1 and Adversarial SQuAD AddSent.

Official SQuAD v1.1 EM/F1 on each whole file, begin/end-head accuracy, and questions/s on this machine (the engine and
threads given: timings are only comparable within one run on a quiet machine). The issue's goals: teacher F1 >= 89,
student F1 >= 86 on dev-v1.1, and the student no worse than the default on AddSent.

    python benchmarks/distill.py --teacher runs/teacher --student runs/student [--limit N] [--engine onnx-int8]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import versions, write_json  # noqa: E402
from quality import KEYS, SETS  # noqa: E402

GOALS = {"teacher": 89.0, "student": 86.0}


def score(model: str | None, engine: str, sets: list[str], limit: int | None, batch_size: int) -> dict:
    from spanqa import Reader
    from spanqa.data import load_dataset
    from spanqa.evaluation import evaluate

    reader = Reader.load(model, device="cpu", engine=engine)
    out = {"base": reader.config.base, "engine": reader.engine_name,
           "parameters": sum(p.numel() for p in reader.model.parameters())}
    for name in sets:
        t0 = time.perf_counter()
        m = evaluate(reader, load_dataset(SETS[name]), limit=limit, batch_size=batch_size)
        out[name] = {k: m[k] for k in KEYS if k in m} | {"wall_seconds": round(time.perf_counter() - t0, 1)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", help="the teacher reader directory (e.g. the MPNet reader)")
    p.add_argument("--student", help="the distilled student reader directory")
    p.add_argument("--no-default", action="store_true", help="leave out the shipped default model (the baseline)")
    p.add_argument("--engine", default="torch", help="torch, onnx or onnx-int8 (all on the CPU)")
    p.add_argument("--limit", type=int, help="first N questions of each set (default: all)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    sets = [name for name in ("dev-v1.1", "adversarial-AddSent") if SETS[name].exists()]
    if not sets:
        sys.exit(f"no evaluation data found under {SETS['dev-v1.1'].parent.parent}")
    models = {"teacher": args.teacher, "student": args.student}
    models = {k: v for k, v in models.items() if v} | ({} if args.no_default else {"default": None})
    results = {}
    for role, path in models.items():
        results[role] = score(path, args.engine, sets, args.limit, args.batch_size)
        print(role, json.dumps(results[role]), flush=True)
    verdict = {role: results[role]["dev-v1.1"]["f1"] >= goal for role, goal in GOALS.items()
               if role in results and "dev-v1.1" in results[role]}
    if "student" in results and "default" in results and "adversarial-AddSent" in sets:
        verdict["student_addsent_no_loss"] = (results["student"]["adversarial-AddSent"]["f1"]
                                              >= results["default"]["adversarial-AddSent"]["f1"])
    if args.limit:
        verdict = {"not judged": f"--limit {args.limit}: the goals hold for the whole sets"}
    record = {"benchmark": "distill", "models": {k: v or "shipped default" for k, v in models.items()},
              "settings": {"engine": args.engine, "threads": args.threads, "batch_size": args.batch_size,
                           "limit": args.limit, "device": "cpu"},
              "goals": {"dev-v1.1 f1": GOALS, "AddSent": "student >= default"}, "goals_met": verdict,
              "versions": versions(), "results": results}
    path = write_json(f"distill-{time.strftime('%Y%m%d-%H%M%S')}.json", record)
    print(json.dumps({"goals_met": verdict}))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

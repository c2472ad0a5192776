"""How to rank answers across passages: the candidates of spanqa.ask.rank_score, on SQuAD *training* questions.

    python benchmarks/rank_score.py --questions 350        # writes benchmarks/out/rank_score.json

A seeded sample of training questions (the dev questions stay the test set of benchmarks/open_squad.py) asks the
20,963 train + dev paragraphs: BM25 retrieves 20 passages per question, the reader reads each once (top 5 spans
per passage, with its null score), and every ranking rule is scored from those same reads at K = 1, 5, 10, 20 (a
passage is read alone, so the answer at K is the best over the first K passages). Rules: P_begin·P_end alone; the
span's log-odds against its window's [CLS]; each plus w · BM25.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import DEV_V11, OUT, TRAIN_V11, versions, write_json  # noqa: E402

from spanqa.ask import Index, answer_key  # noqa: E402
from spanqa.data import load_dataset  # noqa: E402
from spanqa.metric import exact_match_v1  # noqa: E402
from spanqa.reader import Reader  # noqa: E402

KS = (1, 5, 10, 20)
WEIGHTS = (0.0, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0)


def read_all(index: Index, questions: list[str]) -> list[list[dict]]:
    """Per question, per retrieved passage (best first): its BM25 score, null score and top spans."""
    hits = [index.search(q, max(KS)) for q in questions]
    pairs = [(q, index.passage(p).text, s) for q, h in enumerate(hits) for p, s in h]
    preds = index.reader.predict([questions[q] for q, _, _ in pairs], [t for _, t, _ in pairs], top_k=5)
    out: list[list[dict]] = [[] for _ in questions]
    for (q, _, bm25), pred in zip(pairs, preds, strict=True):
        out[q].append({"bm25": bm25, "null": pred.null_log_score,
                       "spans": [(a.text, a.log_score, a.score) for a in pred.answers]})
    return out


def best_answer(spans: list[tuple[float, str]], pooled: bool) -> str:
    """The best-scored span; pooled: each answer (spanqa.ask.answer_key) scores log-sum-exp over its places."""
    if not spans:
        return ""
    if not pooled:
        return max(spans, key=lambda s: s[0])[1]
    groups: dict[str, list[tuple[float, str]]] = {}
    for score, text in spans:
        groups.setdefault(answer_key(text), []).append((score, text))
    best = max(groups.values(), key=lambda g: np.logaddexp.reduce([score for score, _ in g]))
    return max(best)[1]


def exact_match(reads: list[list[dict]], golds: list[list[str]], rule, k: int, pooled: bool = False) -> float:
    hits = 0
    for passages, gold in zip(reads, golds, strict=True):
        spans = [(rule(ls, p, sc), text) for p in passages[:k] for text, ls, sc in p["spans"]]
        best = best_answer(spans, pooled)
        hits += max(exact_match_v1(best, g) for g in gold)
    return 100 * hits / len(golds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--questions", type=int, default=350)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--data", default=str(TRAIN_V11), help="questions to ask (answerable ones only); not the dev set")
    p.add_argument("--model", default=None, help="reader to use (default: the shipped model)")
    p.add_argument("--reads", default=None, help="a JSON file: reused if it exists, else written (tune offline)")
    args = p.parse_args()
    train = [e for e in load_dataset(args.data).examples if e.answers]
    pick = [train[i] for i in sorted(random.Random(args.seed).sample(range(len(train)), args.questions))]
    out = OUT / "rank_score" / "index-all"
    index = Index.build([str(TRAIN_V11), str(DEV_V11)], out)
    index.reader = Reader.load(args.model, device="cpu")
    t = time.perf_counter()
    if args.reads and Path(args.reads).exists():
        reads = json.loads(Path(args.reads).read_text())
    else:
        reads = read_all(index, [e.question for e in pick])
        if args.reads:
            Path(args.reads).write_text(json.dumps(reads))
    seconds = time.perf_counter() - t
    golds = [[a.text for a in e.answers] for e in pick]
    rules = {"P_begin*P_end": lambda ls, p, sc: ls, "log-odds vs [CLS]": lambda ls, p, sc: ls - p["null"],
             "calibrated P(right)": lambda ls, p, sc: math.log(max(sc, 1e-12))}
    for w in WEIGHTS[1:]:
        rules[f"P_begin*P_end + {w} BM25"] = lambda ls, p, sc, w=w: ls + w * p["bm25"]
        rules[f"log-odds vs [CLS] + {w} BM25"] = lambda ls, p, sc, w=w: ls - p["null"] + w * p["bm25"]
        rules[f"log P(right) + {w} BM25"] = lambda ls, p, sc, w=w: math.log(max(sc, 1e-12)) + w * p["bm25"]
    table = {name: {k: exact_match(reads, golds, rule, k) for k in KS} for name, rule in rules.items()}
    for w in WEIGHTS:
        for base, plain in (("log-odds vs [CLS]", "log-odds vs [CLS]"), ("log P(right)", "calibrated P(right)")):
            rule = rules[f"{base} + {w} BM25" if w else plain]
            table[f"pooled {base} + {w} BM25"] = {k: exact_match(reads, golds, rule, k, pooled=True) for k in KS}
    for name, row in table.items():
        print(f"{name:40s} " + " / ".join(f"{row[k]:5.1f}" for k in KS))
    path = write_json("rank_score.json", {"settings": vars(args), "versions": versions(), "read_seconds": seconds,
                                          "passages_read": sum(len(r) for r in reads), "em_at_k": table})
    print(f"EM at K = {' / '.join(map(str, KS))}; {sum(len(r) for r in reads)} passages read in {seconds:.0f} s; "
          f"wrote {path}")


if __name__ == "__main__":
    main()

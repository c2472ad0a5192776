"""Evaluation: official SQuAD EM/F1 plus per-head diagnostics, and the official output files.

Per-head diagnostics answer "which head is wrong?". For each answerable question we map the predicted span
and every gold span to context tokens and check the begin token and the end token separately:
  begin_accuracy   the predicted begin token is a gold answer's begin token
  end_accuracy     the predicted end token is a gold answer's end token
  both_accuracy    begin and end match the same gold answer
  end_right_begin_wrong / begin_right_end_wrong   the two ways to be half right
  begin_distance / end_distance   mean token distance to the nearest gold begin (end), over wrong ones
A model that finds the right end but the wrong begin shows a high end_accuracy, a low begin_accuracy and a
high end_right_begin_wrong: look at the begin head.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from spanqa.data import Dataset, Example
from spanqa.formatting import tokenize
from spanqa.metric import evaluate_v1, evaluate_v2
from spanqa.reader import Prediction, Reader


def _token_index(ends: np.ndarray, char: int) -> int:
    """Index of the context token that holds character `char` (the first token ending after it)."""
    return int(min(np.searchsorted(ends, char, side="right"), len(ends) - 1))


def head_diagnostics(tokenizer, examples: Sequence[Example], preds: Sequence[Prediction]) -> dict:
    pairs = [(ex, p) for ex, p in zip(examples, preds, strict=True) if ex.answers]
    if not pairs:
        return {}
    contexts = tokenize(tokenizer, [ex.context for ex, _ in pairs])
    n = len(pairs)
    b_ok = e_ok = both = end_only = begin_only = 0
    b_dist: list[int] = []
    e_dist: list[int] = []
    for (ex, p), (_, offs) in zip(pairs, contexts, strict=True):
        best = p.best
        if best is None or p.no_answer or not len(offs):
            continue
        ends = offs[:, 1]
        pb, pe = _token_index(ends, best.start), _token_index(ends, best.end - 1)
        gold = [(_token_index(ends, a.start), _token_index(ends, a.end - 1)) for a in ex.answers]
        bo = any(gb == pb for gb, _ in gold)
        eo = any(ge == pe for _, ge in gold)
        b_ok += bo
        e_ok += eo
        both += any(gb == pb and ge == pe for gb, ge in gold)
        end_only += eo and not bo
        begin_only += bo and not eo
        if not bo:
            b_dist.append(min(abs(gb - pb) for gb, _ in gold))
        if not eo:
            e_dist.append(min(abs(ge - pe) for _, ge in gold))
    return {
        "begin_accuracy": 100.0 * b_ok / n,
        "end_accuracy": 100.0 * e_ok / n,
        "both_accuracy": 100.0 * both / n,
        "end_right_begin_wrong": 100.0 * end_only / n,
        "begin_right_end_wrong": 100.0 * begin_only / n,
        "begin_distance": float(np.mean(b_dist)) if b_dist else 0.0,
        "end_distance": float(np.mean(e_dist)) if e_dist else 0.0,
        "num_answerable": n,
    }


def evaluate(
    reader: Reader,
    dataset: Dataset,
    out_dir: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 64,
    progress: bool = False,
) -> dict:
    examples = dataset.examples[:limit] if limit else dataset.examples
    n_best = reader.config.decode.n_best
    t0 = time.perf_counter()
    preds = reader.predict(
        [e.question for e in examples], [e.context for e in examples], top_k=n_best, batch_size=batch_size,
        progress=progress,
    )
    seconds = time.perf_counter() - t0
    predictions = {ex.id: ("" if p.no_answer or p.best is None else p.best.text)
                   for ex, p in zip(examples, preds, strict=True)}
    golds = {ex.id: [a.text for a in ex.answers] for ex in examples}
    v2 = dataset.has_unanswerable or reader.config.decode.allow_no_answer
    if v2:
        best_text = {ex.id: (p.best.text if p.best else "") for ex, p in zip(examples, preds, strict=True)}
        na = {ex.id: p.na_score for ex, p in zip(examples, preds, strict=True)}
        official = evaluate_v2(golds, predictions)
        sweep = evaluate_v2(golds, best_text, na_probs=na)
        metrics = {"exact_match": official["exact"], "f1": official["f1"], **official,
                   **{k: v for k, v in sweep.items() if k.startswith("best_")}}
    else:
        metrics = evaluate_v1(golds, predictions)
    metrics.update(head_diagnostics(reader.tokenizer, examples, preds))
    metrics.update({
        "num_questions": len(examples),
        "data": dataset.path,
        "metric": "squad-v2.0" if v2 else "squad-v1.1",
        "seconds": seconds,
        "questions_per_second": len(examples) / seconds if seconds else 0.0,
    })
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "predictions.json").write_text(json.dumps(predictions, ensure_ascii=False, indent=1))
        nbest = {ex.id: [a.as_dict() for a in p.answers] for ex, p in zip(examples, preds, strict=True)}
        (out / "nbest.json").write_text(json.dumps(nbest, ensure_ascii=False))
        if v2:
            na = {ex.id: p.na_score for ex, p in zip(examples, preds, strict=True)}
            (out / "null_odds.json").write_text(json.dumps(na))
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics

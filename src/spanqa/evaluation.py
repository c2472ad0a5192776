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

import importlib.util
import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from spanqa.calibration import Calibration, best_threshold, ece, features, fit, reliability_diagram
from spanqa.data import Dataset, Example
from spanqa.formatting import tokenize
from spanqa.metric import compute_exact, compute_f1, evaluate_v1, evaluate_v2
from spanqa.reader import Prediction, Reader
from spanqa.validation import atomic_file, check_output, outputs_taken_back

OUT_FILES = ("predictions.json", "nbest.json", "null_odds.json", "metrics.json", "reliability.png")  # in out_dir


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


def top1(example: Example, pred: Prediction, v2: bool) -> tuple[str, float, bool]:
    """(predicted text, its confidence, whether it is right) for the calibration error: the no-answer when the reader
    abstains on v2.0 data (confidence P(unanswerable)), else the best span (confidence its score, right = EM)."""
    golds = [a.text for a in example.answers] or [""]
    if v2 and pred.no_answer:
        conf = pred.p_unanswerable if pred.p_unanswerable is not None else math.exp(pred.null_log_score)
        return "", conf, not example.answers
    text = pred.best.text if pred.best else ""
    return text, pred.best.score if pred.best else 0.0, max(compute_exact(g, text) for g in golds) == 1


def null_odds(examples: Sequence[Example], preds: Sequence[Prediction]) -> dict:
    """id -> how sure the reader is there is no answer: P(unanswerable) when calibrated, else the null's log-odds."""
    return {ex.id: p.p_unanswerable if p.p_unanswerable is not None else p.na_score
            for ex, p in zip(examples, preds, strict=True)}


def squad_metrics(examples: Sequence[Example], preds: Sequence[Prediction], v2: bool) -> dict:
    """v2.0 data: the official metric with the stored threshold, HasAns/NoAns, and the threshold tuned on this very
    data (`best_f1_optimistic`: an upper bound, not a result). v1.1 data: the best span, and how often the reader
    would have abstained."""
    golds = {ex.id: [a.text for a in ex.answers] for ex in examples}
    best_text = {ex.id: (p.best.text if p.best else "") for ex, p in zip(examples, preds, strict=True)}
    abstained = 100.0 * sum(p.no_answer for p in preds) / max(len(preds), 1)
    if not v2:
        return {**evaluate_v1(golds, best_text), "abstained_percent": abstained}
    predictions = {ex.id: ("" if p.no_answer else best_text[ex.id]) for ex, p in zip(examples, preds, strict=True)}
    na = null_odds(examples, preds)
    official = evaluate_v2(golds, predictions)
    sweep = evaluate_v2(golds, best_text, na_probs=na)
    return {"exact_match": official["exact"], "f1": official["f1"], **official, "abstained_percent": abstained,
            "best_f1_optimistic": sweep["best_f1"], "best_exact_optimistic": sweep["best_exact"],
            "best_f1_thresh_optimistic": sweep["best_f1_thresh"]}


@outputs_taken_back()
def evaluate(
    reader: Reader,
    dataset: Dataset,
    out_dir: str | Path | None = None,
    limit: int | None = None,
    batch_size: int = 64,
    progress: bool = False,
    predict: Callable[..., list[Prediction]] | None = None,
) -> dict:
    """The metrics of `reader` on `dataset` (and their files in `out_dir`). `predict` answers the questions in its
    place (the same arguments as Reader.predict): spanqa.ray_answer's runs them on a Ray cluster."""
    if out_dir is not None:  # before the work: results are never lost to an output that cannot be written
        check_output(out_dir, "--out", inputs=[dataset.path or None], directory=True, writes=OUT_FILES)
    examples = dataset.examples[:limit] if limit else dataset.examples
    _warn_cannot_abstain(reader, dataset.path, examples)
    t0 = time.perf_counter()
    preds = (predict or reader.predict)([e.question for e in examples], [e.context for e in examples],
                                        top_k=reader.config.decode.n_best, batch_size=batch_size, progress=progress)
    seconds = time.perf_counter() - t0
    v2 = dataset.has_unanswerable
    metrics = squad_metrics(examples, preds, v2)
    metrics.update(head_diagnostics(reader.tokenizer, examples, preds))
    tops = [top1(ex, p, v2) for ex, p in zip(examples, preds, strict=True)]
    metrics.update({
        "ece": ece([t[1] for t in tops], [t[2] for t in tops]),
        "num_questions": len(examples),
        "data": dataset.path,
        "metric": "squad-v2.0" if v2 else "squad-v1.1",
        "seconds": seconds,
        "questions_per_second": len(examples) / seconds if seconds else 0.0,
    })
    if out_dir is not None:
        write_outputs(Path(out_dir), examples, preds, tops, metrics)
    return metrics


def _warn_cannot_abstain(reader: Reader, path, examples: Sequence[Example]) -> None:
    """Unanswerable questions put to a model that never abstains (allow_no_answer off, the one switch of
    decoding.is_no_answer) are all scored wrong: NoAns_exact 0 is then the model's make, not a measurement."""
    unanswerable = sum(ex.is_impossible for ex in examples)
    if unanswerable and not reader.config.decode.allow_no_answer:
        where = f"{path}: " if path else ""
        warnings.warn(f"{where}{unanswerable} of the {len(examples)} questions are unanswerable, but this model cannot "
                      "abstain (it has no stored no-answer threshold: allow_no_answer is off), so NoAns_exact is 0 by "
                      "construction; `spanqa calibrate` on held-out v2.0 data gives it one", stacklevel=3)


def write_outputs(out: Path, examples, preds, tops, metrics: dict) -> None:
    """predictions.json (the official format), nbest.json, null_odds.json, metrics.json, reliability.png.

    Each is written beside its name first (validation.atomic_file), and they are renamed in a row once all are
    whole (check_output refused a directory at any of their names before the work): a failure while making any of
    them leaves --out as it was found; the files a failed command created are taken back by the enclosing
    `outputs_taken_back`."""
    out.mkdir(parents=True, exist_ok=True)
    drawn = importlib.util.find_spec("matplotlib") is not None
    if not drawn:
        metrics["reliability_diagram"] = "not drawn: needs matplotlib (pip install 'spanqa[serve]')"
    texts = {"predictions.json": json.dumps({ex.id: t[0] for ex, t in zip(examples, tops, strict=True)},
                                            ensure_ascii=False, indent=1),
             "nbest.json": json.dumps({ex.id: [a.as_dict() for a in p.answers]
                                       for ex, p in zip(examples, preds, strict=True)}, ensure_ascii=False),
             "null_odds.json": json.dumps(null_odds(examples, preds)),
             "metrics.json": json.dumps(metrics, indent=2) + "\n"}
    with ExitStack() as files:  # on leaving: each renamed into place, the last entered first; on a failure, none
        if drawn:
            reliability_diagram([t[1] for t in tops], [t[2] for t in tops],
                                files.enter_context(atomic_file(out / "reliability.png")),
                                title=Path(str(metrics.get("data", ""))).name)
        for name, text in texts.items():
            files.enter_context(atomic_file(out / name)).write_text(text, encoding="utf-8")


def _warn_one_kind(path, unanswerable: np.ndarray) -> None:
    """Data of one kind teaches nothing about when to abstain: the fit comes out 'never' (or 'always')."""
    if unanswerable.all() or not unanswerable.any():
        kind, does = ("every", "always") if unanswerable.all() else ("no", "never")
        warnings.warn(f"{path}: {kind} question is unanswerable, so the calibrated model will {does} abstain; "
                      "calibrate on data with both kinds (`spanqa negatives` mines unanswerable questions)",
                      stacklevel=2)


def calibrate(reader: Reader, dataset: Dataset, batch_size: int = 64, progress: bool = False) -> tuple[Calibration,
                                                                                                       float, dict]:
    """Fit the calibration and the no-answer threshold on labelled data (see spanqa.calibration); return them and
    a report. The reader's own calibration, if any, is ignored: the fit reads the raw scores."""
    from dataclasses import replace

    raw = replace(reader.config, calibration={})
    saved, reader.config = reader.config, raw
    try:
        examples = dataset.examples
        preds = reader.predict([e.question for e in examples], [e.context for e in examples], top_k=1,
                               batch_size=batch_size, progress=progress)
    finally:
        reader.config = saved
    feats, best_log, right, f1s = [], [], [], []
    for ex, p in zip(examples, preds, strict=True):
        b = p.best
        blog = b.log_score if b else -math.inf
        feats.append(features(ex.question, ex.context, p.null_log_score - blog, blog, (b.start, b.end) if b else None))
        best_log.append(max(blog, -50.0))
        golds = [a.text for a in ex.answers] or [""]
        right.append(max(compute_exact(g, b.text if b else "") for g in golds))
        f1s.append(max(compute_f1(g, b.text if b else "") for g in golds))
    unans = np.array([not ex.answers for ex in examples])
    feats_np = np.asarray(feats)
    note = {"data": Path(dataset.path).name, "questions": len(examples), "unanswerable": int(unans.sum())}
    _warn_one_kind(dataset.path, unans)
    cal = fit(feats_np, unans, np.asarray(best_log), np.asarray(right), note)
    thresh, f1 = best_threshold(cal.p_unanswerable(feats_np), ~unans, np.asarray(f1s))
    return cal, thresh, {**note, "f1_at_threshold": f1, "threshold": thresh}

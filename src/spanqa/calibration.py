"""Calibrated scores and the no-answer decision, fitted on held-out labelled data and stored with the model.

Two small logistic models, fitted by `spanqa calibrate` on questions the reader did not train on (a held-out split
of the training side, never the test set):

    P(answerable)        from what the reader's one pass says about the question (the null score against the best
                         span, the best span's score) and from how well the context covers the question (its content
                         words, its names and numbers, and the answer's sentence): mined negatives whose key entity
                         was swapped, or whose answer sentence is gone, show there
    P(right | answerable) Platt scaling of the span's log score P_begin·P_end, fitted on the answerable questions

An answer's `score` is then P(right) = P(right | answerable) · P(answerable), and the reader abstains when
P(unanswerable) > `null_threshold`, tuned for F1 on the same held-out data. Evaluation reports the expected
calibration error (15 equal-width bins, top-1 answer, correct = exact match) and draws the reliability diagram.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from spanqa.metric import normalize_answer

FEATURES = ("na_score", "best_log_score", "question_coverage", "entities_missing", "sentence_overlap")
_STOP = set("a an the of in on at to for by with from and or is are was were be been being what which who whom whose "
            "when where why how did do does that this these those it its as into than then there their his her they "
            "he she we you i not no".split())
_ENTITY = re.compile(r"\b\d[\d,]*(?:\.\d+)?\b|(?<!^)(?<![.!?]\s)\b[A-Z][\w'\-]+")


@dataclass(frozen=True)
class Calibration:
    """Fitted coefficients (on standardised features) and where they were fitted; stored in spanqa.json."""

    null_weights: tuple[float, ...] = ()  # logistic P(unanswerable) over FEATURES, standardised
    null_bias: float = 0.0
    feature_mean: tuple[float, ...] = ()
    feature_std: tuple[float, ...] = ()
    span_a: float = 1.0  # P(right | answerable) = sigmoid(span_a * log_score + span_b)
    span_b: float = 0.0
    tuned_on: dict = field(default_factory=dict)  # data, counts, date: for the record

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Calibration:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def p_unanswerable(self, x: np.ndarray) -> np.ndarray:
        z = (x - np.asarray(self.feature_mean)) / np.asarray(self.feature_std)
        return sigmoid(z @ np.asarray(self.null_weights) + self.null_bias)

    def p_right_if_answerable(self, log_score: np.ndarray) -> np.ndarray:
        return sigmoid(self.span_a * np.asarray(log_score) + self.span_b)


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))


# ---- features -----------------------------------------------------------------------------------------------------
def _content(text: str, normalized: str | None = None) -> set[str]:
    return {t for t in (normalized if normalized is not None else normalize_answer(text)).split() if t not in _STOP}


def _sentence_around(context: str, start: int, end: int) -> str:
    a = max(context.rfind(". ", 0, start), context.rfind("\n", 0, start))
    b = min((i for i in (context.find(". ", end), context.find("\n", end)) if i >= 0), default=len(context))
    return context[a + 1 : b + 1]


def features(question: str, context: str, na_score: float, best_log_score: float,
             span: tuple[int, int] | None) -> list[float]:
    """The verifier's view of one question (see FEATURES): what the reader says, and how the context covers it."""
    q = _content(question)
    norm = normalize_answer(context)
    ctx, ctx_norm = _content(context, norm), f" {norm} "
    entities = [n for n in map(normalize_answer, _ENTITY.findall(question)) if n]
    missing = sum(f" {n} " not in ctx_norm for n in entities)
    sent = _content(_sentence_around(context, *span)) if span else set()
    clip = lambda v: max(min(v, 50.0), -50.0)  # noqa: E731  (log scores of -inf: no span, no null)
    return [clip(na_score), clip(best_log_score), len(q & ctx) / max(len(q), 1), float(min(missing, 3)),
            len(q & sent) / max(len(q), 1)]


# ---- fitting ------------------------------------------------------------------------------------------------------
def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, iters: int = 50) -> tuple[np.ndarray, float]:
    """Weights and bias of a logistic regression by Newton's method (IRLS), lightly L2-regularised."""
    n, d = x.shape
    X = np.hstack([x, np.ones((n, 1))])
    w = np.zeros(d + 1)
    reg = l2 * n * np.eye(d + 1)
    reg[-1, -1] = 0.0  # the bias is not shrunk
    for _ in range(iters):
        p = sigmoid(X @ w)
        grad = X.T @ (p - y) + reg @ w
        hess = (X * (p * (1 - p))[:, None]).T @ X + reg
        step = np.linalg.solve(hess + 1e-9 * np.eye(d + 1), grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w[:-1], float(w[-1])


def fit(feats: np.ndarray, unanswerable: np.ndarray, best_log: np.ndarray, right: np.ndarray,
        tuned_on: dict) -> Calibration:
    """Fit both models: `unanswerable` and `right` (the best span is an exact match) are 0/1 per question."""
    mean, std = feats.mean(0), feats.std(0) + 1e-6
    w, b = fit_logistic((feats - mean) / std, unanswerable.astype(float)) if 0 < unanswerable.mean() < 1 else \
        (np.zeros(feats.shape[1]), -20.0 if unanswerable.mean() == 0 else 20.0)
    ans = unanswerable == 0
    (a,), c = fit_logistic(best_log[ans, None], right[ans].astype(float), l2=0.0)
    return Calibration(tuple(map(float, w)), b, tuple(map(float, mean)), tuple(map(float, std)), float(a), c,
                       tuned_on)


def best_threshold(p_null: np.ndarray, has_answer: np.ndarray, f1_if_answered: np.ndarray) -> tuple[float, float]:
    """The P(unanswerable) threshold that maximises mean F1 (abstaining scores 1 on unanswerable questions and 0 on
    answerable ones; answering scores the best span's F1, 0 on unanswerable ones), and that F1 in percent."""
    order = np.argsort(-p_null, kind="stable")
    # abstain on the first k (most likely unanswerable); k = 0 answers everything
    gain = np.where(has_answer[order], -f1_if_answered[order], 1.0)
    base = float(np.where(has_answer, f1_if_answered, 0.0).sum())
    totals = base + np.concatenate([[0.0], np.cumsum(gain)])
    k = int(np.argmax(totals))
    ps = p_null[order]
    thresh = 1.0 if k == 0 else float((ps[k - 1] + ps[k]) / 2 if k < len(ps) else ps[-1] - 1e-9)
    return thresh, 100.0 * totals[k] / len(p_null)


# ---- measuring ----------------------------------------------------------------------------------------------------
def ece(confidence: Sequence[float], correct: Sequence[bool], bins: int = 15) -> float:
    """Expected calibration error: the bin-size-weighted mean |accuracy - confidence| over equal-width bins."""
    conf, ok = np.asarray(confidence, float), np.asarray(correct, float)
    if len(conf) == 0:
        return 0.0
    idx = np.minimum((conf * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.sum() * abs(ok[m].mean() - conf[m].mean())
    return float(total / len(conf))


def reliability_diagram(confidence, correct, path, title: str = "", bins: int = 15) -> None:
    """Accuracy against confidence per bin (the diagonal is perfect calibration), bars sized by count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conf, ok = np.asarray(confidence, float), np.asarray(correct, float)
    idx = np.minimum((conf * bins).astype(int), bins - 1)
    centers = (np.arange(bins) + 0.5) / bins
    acc = [ok[idx == b].mean() if (idx == b).any() else math.nan for b in range(bins)]
    count = [int((idx == b).sum()) for b in range(bins)]
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(5, 6), dpi=100, gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=1)
    ax.bar(centers, acc, width=1 / bins, edgecolor="black", color="#1f77b4", alpha=0.8)
    ax.set_ylabel("accuracy (exact match)")
    ax.set_title(f"{title}  ECE {ece(conf, ok, bins):.3f}", fontsize=10, loc="left")
    ax2.bar(centers, count, width=1 / bins, color="#999999")
    ax2.set_xlabel("confidence of the top-1 answer")
    ax2.set_ylabel("questions")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---- applying -----------------------------------------------------------------------------------------------------
def apply(cal: Calibration, question: str, context: str, cands: list, null_log_score: float) -> tuple[list, float]:
    """The candidates with calibrated scores (P(right)), and P(unanswerable)."""
    from dataclasses import replace

    best = cands[0] if cands else None
    best_log = best.log_score if best else -math.inf
    x = np.asarray([features(question, context, null_log_score - best_log, best_log,
                             (best.start, best.end) if best else None)])
    p_null = float(cal.p_unanswerable(x)[0])
    if not cands:
        return cands, p_null
    p_right = cal.p_right_if_answerable(np.asarray([c.log_score for c in cands])) * (1.0 - p_null)
    return [replace(c, score=float(p)) for c, p in zip(cands, p_right, strict=True)], p_null

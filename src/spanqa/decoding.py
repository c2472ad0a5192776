"""Inference for span prediction: the exact best span, merged across windows.

Within a window, P_begin and P_end are softmaxes over the window's context tokens plus [CLS]. A span
(i, j) with i <= j < i + max_answer_len scores

    score(i, j) = P_begin(i) · P_end(j)

a probability in [0, 1]: the same scale in every window and every context, so spans from different
windows (and different documents) can be ranked against each other. The null score of a window is
P_begin(CLS) · P_end(CLS); a question's null score is the smallest over its windows (the window that is
surest the answer is inside it). With no-answer enabled, the reader answers "no answer" when
log(null) - log(best span) > null_threshold, a number stored with the model.

The search is exact and vectorised: for every begin i we lay out the band of ends i..i+L-1 as a
(windows, T, L) array, so all T·L candidate spans are scored at once; no top-20 × top-20 shortcut.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from spanqa.config import DecodeConfig


@dataclass(frozen=True)
class SpanCandidate:
    text: str
    start: int  # character offsets: text == context[start:end]
    end: int
    score: float  # P_begin(i) · P_end(j)
    log_score: float
    window: int  # which window of the question the span came from
    begin_token: int  # positions inside that window
    end_token: int

    def as_dict(self) -> dict:
        return {"text": self.text, "start": self.start, "end": self.end, "score": self.score}


def log_probs(logits: np.ndarray) -> np.ndarray:
    """Log-softmax over the last axis, in float32 (masked positions hold float32's minimum and get ~0 mass)."""
    x = np.asarray(logits, dtype=np.float32)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def best_spans(
    begin_lp: np.ndarray,
    end_lp: np.ndarray,
    can_begin: np.ndarray,
    can_end: np.ndarray,
    max_answer_len: int,
    k: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-k spans per window by begin_lp[i] + end_lp[j], over i <= j < i + max_answer_len.

    Inputs are (W, T); returns (scores, begins, ends), each (W, k), best first, with -inf scores where fewer than k
    valid spans exist.
    """
    W, T = np.shape(begin_lp)
    L = max(1, min(max_answer_len, T))
    b = np.where(can_begin, begin_lp, -np.inf).astype(np.float32)
    e = np.where(can_end, end_lp, -np.inf).astype(np.float32)
    e_pad = np.concatenate([e, np.full((W, L - 1), -np.inf, np.float32)], axis=1)  # (W, T+L-1)
    band = b[:, :, None] + np.lib.stride_tricks.sliding_window_view(e_pad, L, axis=1)  # (W, T, L): span (i, i+d)
    flat = band.reshape(W, T * L)
    k = min(k, T * L)
    top = np.argpartition(flat, T * L - k, axis=1)[:, T * L - k :]  # the k best, unordered
    top_scores = np.take_along_axis(flat, top, axis=1)
    order = np.argsort(-top_scores, axis=1, kind="stable")
    idx = np.take_along_axis(top, order, axis=1)
    scores = np.take_along_axis(top_scores, order, axis=1)
    begins = idx // L
    return scores, begins, begins + idx % L


def merge_spans(
    context: str,
    window_ids: list[int],
    scores: np.ndarray,
    begins: np.ndarray,
    ends: np.ndarray,
    char_starts: np.ndarray,
    char_ends: np.ndarray,
    n: int,
) -> list[SpanCandidate]:
    """Rank the candidates of all windows of one question by score; the same character span counts once.

    The spans come already mapped to characters (`char_starts`, `char_ends`), so the windows themselves can be let go.
    """
    flat = []
    for r, w in enumerate(window_ids):
        for c, s in enumerate(scores[r]):
            if s == -math.inf:
                break
            flat.append((float(s), w, r, c))
    flat.sort(key=lambda t: -t[0])
    out: list[SpanCandidate] = []
    seen: set[tuple[int, int]] = set()
    for s, w, r, c in flat:
        cs, ce = int(char_starts[r][c]), int(char_ends[r][c])
        if (cs, ce) in seen:
            continue
        seen.add((cs, ce))
        out.append(SpanCandidate(context[cs:ce], cs, ce, math.exp(s), s, w, int(begins[r][c]), int(ends[r][c])))
        if len(out) == n:
            break
    return out


def is_no_answer(null_log_score: float, best: SpanCandidate | None, cfg: DecodeConfig,
                 p_unanswerable: float | None = None) -> bool:
    """The one abstention rule: with a calibrated model, P(unanswerable) above the threshold; else the null score's
    log-odds margin over the best span. No candidate span at all is always "no answer"."""
    if best is None:
        return True
    if not cfg.allow_no_answer:
        return False
    if p_unanswerable is not None:
        return p_unanswerable > cfg.null_threshold
    return null_log_score - best.log_score > cfg.null_threshold

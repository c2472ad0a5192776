"""Decoding is exact: it equals a brute-force search over every valid (i, j)."""

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from spanqa.decoding import DecodeConfig, SpanCandidate, best_spans, is_no_answer, merge_spans


def merge_windows(context, window_ids, offsets, scores, begins, ends, n):
    """merge_spans on token positions: map each window's spans to characters with its offsets first."""
    starts = np.stack([offsets[r][begins[r], 0] for r in range(len(window_ids))])
    stops = np.stack([offsets[r][ends[r], 1] for r in range(len(window_ids))])
    return merge_spans(context, window_ids, scores, begins, ends, starts, stops, n)


def brute_force(b, e, can_b, can_e, L):
    spans = []
    T = len(b)
    for i in range(T):
        for j in range(i, min(i + L, T)):
            if can_b[i] and can_e[j]:
                spans.append((b[i] + e[j], i, j))
    spans.sort(key=lambda t: (-t[0], t[1], t[2]))
    return spans


@settings(max_examples=150, deadline=None)
@given(
    T=st.integers(1, 40),
    W=st.integers(1, 4),
    L=st.integers(1, 35),
    k=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
    p_mask=st.floats(0.0, 0.9),
)
def test_best_spans_equals_brute_force(T, W, L, k, seed, p_mask):
    rng = np.random.default_rng(seed)
    b = rng.normal(size=(W, T)).astype(np.float32)
    e = rng.normal(size=(W, T)).astype(np.float32)
    can_b = rng.random((W, T)) >= p_mask
    can_e = rng.random((W, T)) >= p_mask
    scores, begins, ends = best_spans(b, e, can_b, can_e, L, k)
    for w in range(W):
        ref = brute_force(b[w].tolist(), e[w].tolist(), can_b[w].tolist(), can_e[w].tolist(), L)
        got = [(float(s), int(i), int(j)) for s, i, j in zip(scores[w], begins[w], ends[w], strict=True)
               if s != -math.inf]
        assert len(got) == min(k, len(ref))
        # scores agree exactly in order; each returned span is valid and scores what it claims
        for (gs, gi, gj), (rs, _, _) in zip(got, ref, strict=False):
            assert math.isclose(gs, rs, rel_tol=1e-6, abs_tol=1e-6)
            assert can_b[w, gi] and can_e[w, gj] and gi <= gj < gi + L
            assert math.isclose(gs, float(b[w, gi] + e[w, gj]), rel_tol=1e-6, abs_tol=1e-6)
        if ref:
            assert got[0][0] == max(r[0] for r in ref) or math.isclose(got[0][0], ref[0][0], abs_tol=1e-6)


def test_no_valid_span_gives_empty():
    b = np.zeros((1, 5), np.float32)
    none = np.zeros((1, 5), dtype=bool)
    scores, _, _ = best_spans(b, b, none, none, 3, 2)
    assert np.isinf(scores).all() and scores.shape == (1, 2)


def test_merge_windows_ranks_across_windows_and_dedupes():
    context = "alpha beta gamma"
    offsets = [np.array([[0, 5], [6, 10], [11, 16]]), np.array([[6, 10], [11, 16], [-1, -1]])]
    scores = np.array([[-1.0, -3.0], [-0.5, -1.0]])
    begins = np.array([[0, 1], [1, 0]])
    ends = np.array([[0, 2], [1, 0]])
    out = merge_windows(context, [0, 1], offsets, scores, begins, ends, n=5)
    texts = [c.text for c in out]
    assert texts[0] == "gamma" and texts[0] == context[out[0].start : out[0].end]
    # "beta" appears from window 1 (score -1.0) once only, though window 0 could give "beta gamma" too
    assert len(texts) == len(set((c.start, c.end) for c in out))
    assert all(c.text == context[c.start : c.end] for c in out)
    assert [round(c.log_score, 3) for c in out] == sorted([round(c.log_score, 3) for c in out], reverse=True)
    assert math.isclose(out[0].score, math.exp(-0.5))


def test_no_answer_threshold():
    cand = SpanCandidate("x", 0, 1, math.exp(-2.0), -2.0, 0, 1, 1)
    assert not is_no_answer(-1.0, cand, DecodeConfig(allow_no_answer=False))
    assert is_no_answer(-1.0, cand, DecodeConfig(allow_no_answer=True, null_threshold=0.0))
    assert not is_no_answer(-1.0, cand, DecodeConfig(allow_no_answer=True, null_threshold=1.5))
    assert is_no_answer(-1.0, None, DecodeConfig(allow_no_answer=True))

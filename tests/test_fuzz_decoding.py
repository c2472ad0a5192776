"""Property-based tests of decoding: the vectorised best-span search equals brute force; merging windows."""

from __future__ import annotations

import math

import numpy as np
import pytest
from fuzzing import BUDGETS, fuzz, wild_text
from hypothesis import strategies as st
from test_decoding import merge_windows

from spanqa.decoding import best_spans

_logp = st.floats(-60.0, 0.0, width=32)


@st.composite
def span_problems(draw):
    W, T = draw(st.integers(1, 3)), draw(st.integers(1, 24))
    grid = st.lists(st.lists(_logp, min_size=T, max_size=T), min_size=W, max_size=W)
    masks = st.lists(st.lists(st.booleans(), min_size=T, max_size=T), min_size=W, max_size=W)
    return (np.array(draw(grid), np.float32), np.array(draw(grid), np.float32), np.array(draw(masks), bool),
            np.array(draw(masks), bool), draw(st.integers(1, 12)), draw(st.integers(1, 10)))


@pytest.mark.parametrize("budget", BUDGETS)
def test_best_spans_equal_brute_force(budget):
    def prop(problem):
        b, e, can_b, can_e, max_len, k = problem
        scores, begins, ends = best_spans(b, e, can_b, can_e, max_len, k)
        W, T = b.shape
        for w in range(W):
            brute = sorted(((float(b[w, i] + e[w, j]), i, j) for i in range(T) for j in range(i, min(i + max_len, T))
                            if can_b[w, i] and can_e[w, j]), reverse=True)
            got = [(float(s), int(i), int(j)) for s, i, j in zip(scores[w], begins[w], ends[w], strict=True)
                   if s > -math.inf]
            assert len(got) == min(k, len(brute))
            assert [s for s, _, _ in got] == [s for s, _, _ in brute[: len(got)]]  # the same top scores
            for s, i, j in got:  # each a valid span that has the score it claims
                assert can_b[w, i] and can_e[w, j] and i <= j < i + max_len and s == float(b[w, i] + e[w, j])
            assert len({(i, j) for _, i, j in got}) == len(got)

    fuzz("decoding: best_spans vs brute force", budget, prop, problem=span_problems())


@st.composite
def merge_problems(draw):
    context = draw(wild_text(20))
    n_chars = len(context)
    R, T, K = draw(st.integers(1, 4)), draw(st.integers(1, 12)), draw(st.integers(1, 6))
    offsets = []
    for _ in range(R):
        starts = sorted(draw(st.lists(st.integers(0, n_chars), min_size=T, max_size=T)))
        offsets.append(np.array([[s, min(n_chars, s + draw(st.integers(0, 5)))] for s in starts], dtype=np.int64))
    scores = np.full((R, K), -np.inf)
    begins, ends = np.zeros((R, K), dtype=np.int64), np.zeros((R, K), dtype=np.int64)
    for r in range(R):
        n = draw(st.integers(0, K))
        scores[r, :n] = sorted(draw(st.lists(st.floats(-30, 0), min_size=n, max_size=n)), reverse=True)
        for c in range(n):
            begins[r, c] = draw(st.integers(0, T - 1))
            ends[r, c] = draw(st.integers(int(begins[r, c]), T - 1))
    return context, offsets, scores, begins, ends, draw(st.integers(1, 8))


@pytest.mark.parametrize("budget", BUDGETS)
def test_merge_ranks_unique_spans_that_slice_the_context(budget):
    def prop(problem):
        context, offsets, scores, begins, ends, n = problem
        out = merge_windows(context, list(range(len(offsets))), offsets, scores, begins, ends, n)
        best: dict[tuple[int, int], float] = {}  # brute force: each character span at its best score
        for r in range(len(offsets)):
            for s, i, j in zip(scores[r], begins[r], ends[r], strict=True):
                if s > -np.inf:
                    key = (int(offsets[r][i, 0]), int(offsets[r][j, 1]))
                    best[key] = max(best.get(key, -np.inf), float(s))
        assert len(out) == min(n, len(best))
        assert [c.log_score for c in out] == sorted(best.values(), reverse=True)[: len(out)]
        assert len({(c.start, c.end) for c in out}) == len(out)
        for c in out:
            assert c.text == context[c.start : c.end]
            assert c.log_score == best[(c.start, c.end)] and c.score == pytest.approx(math.exp(c.log_score))

    fuzz("decoding: merge_windows", budget, prop, problem=merge_problems())

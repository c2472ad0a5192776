"""Property-based tests of formatting: windows slice the context exactly, and answers anywhere are found."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from fuzzing import BUDGETS, fuzz, wild_text
from hypothesis import assume
from hypothesis import strategies as st
from oracle_windows import make_windows

from spanqa.formatting import FormatConfig, iter_windows

CFG = FormatConfig(max_seq_len=48, doc_stride=8, max_question_len=12)  # small: many windows per context


def windows_for(tokenizer, question, context, answers=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # long questions are truncated, with a warning
        return list(iter_windows(tokenizer, [question], [context], CFG, answers=answers))


def context_tokens(tokenizer, context) -> list[tuple[int, int]]:
    """The context's tokens that cover characters (those that may begin or end an answer), by offsets."""
    offsets = tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    return [tuple(o) for o in offsets if o[1] > o[0]]


@pytest.mark.parametrize("budget", BUDGETS)
def test_windows_slice_the_context(tokenizer, budget):
    def prop(question, context):
        assume(question.strip())
        wins = windows_for(tokenizer, question, context)
        assert wins and all(w.example_index == 0 for w in wins)
        seen: list[tuple[int, int]] = []
        for w in wins:
            assert len(w) <= CFG.max_seq_len
            assert w.input_ids[0] == tokenizer.cls_token_id and w.input_ids[-1] == tokenizer.sep_token_id
            ctx = np.flatnonzero(w.context_mask)
            assert (w.offsets[~w.context_mask] == -1).all()
            offs = w.offsets[ctx]
            assert ((0 <= offs[:, 0]) & (offs[:, 0] < offs[:, 1]) & (offs[:, 1] <= len(context))).all()
            assert (np.diff(offs[:, 0]) >= 0).all()  # in reading order
            assert not w.max_context[~w.context_mask].any()
            seen += [tuple(o) for o in offs.tolist()]
        # together the windows hold exactly the context's tokens, overlapping, each the "max context" once
        alone = context_tokens(tokenizer, context)
        assert list(dict.fromkeys(seen)) == list(dict.fromkeys(alone))
        assert sum(int(w.max_context.sum()) for w in wins) == len(alone)

    fuzz("formatting: windows slice the context", budget, prop, question=wild_text(20), context=wild_text())


@pytest.mark.parametrize("budget", BUDGETS)
def test_answers_at_any_position_are_found(tokenizer, budget):
    def prop(context, data):
        toks = context_tokens(tokenizer, context)
        assume(toks)
        i = data.draw(st.integers(0, len(toks) - 1), label="first answer token")
        j = data.draw(st.integers(i, min(i + CFG.doc_stride - 1, len(toks) - 1)), label="last answer token")
        start, end = toks[i][0], toks[j][1]
        wins = windows_for(tokenizer, "where is it?", context, [(start, end)])
        labelled = [w for w in wins if (w.start_position, w.end_position) != (0, 0)]
        assert labelled, "an answer of up to doc_stride tokens is whole in some window"
        for w in labelled:
            assert w.offsets[w.start_position, 0] == start and w.offsets[w.end_position, 1] == end
            assert w.context_mask[w.start_position] and w.context_mask[w.end_position]
        for w in wins:  # a window that does not hold the whole answer points at [CLS]
            offs = w.offsets[w.context_mask]
            whole = len(offs) and offs[0, 0] <= start and offs[-1, 1] >= end
            assert bool(whole) == any(w is x for x in labelled)

    fuzz("formatting: token-aligned answers found", budget, prop, context=wild_text(), data=st.data())


@pytest.mark.parametrize("budget", BUDGETS)
def test_character_answers_get_the_smallest_covering_tokens(tokenizer, budget):
    def prop(context, data):
        assume(len(context) >= 1)
        start = data.draw(st.integers(0, len(context) - 1), label="start")
        end = data.draw(st.integers(start + 1, min(start + 30, len(context))), label="end")
        for w in windows_for(tokenizer, "what?", context, [(start, end)]):
            b, e = w.start_position, w.end_position
            if (b, e) == (0, 0):
                continue
            assert b <= e and w.context_mask[b] and w.context_mask[e]
            assert w.offsets[b, 1] > start and w.offsets[e, 0] < end  # both end tokens overlap the answer
            ctx = np.flatnonzero(w.context_mask)
            assert (w.offsets[ctx[ctx < b], 1] <= start).all()  # and no smaller span would cover it
            assert (w.offsets[ctx[ctx > e], 0] >= end).all()

    fuzz("formatting: character answers labelled", budget, prop, context=wild_text(), data=st.data())


@pytest.mark.parametrize("budget", BUDGETS)
def test_lazy_inference_windows_equal_the_training_windows(tokenizer, budget, monkeypatch):
    """formatting.iter_windows promises the windows of the oracle make_windows, field by field."""

    monkeypatch.setattr("spanqa.formatting.PIECE_CHARS", 200)  # long contexts are tokenized in pieces

    def prop(pairs):
        questions, contexts = [q for q, _ in pairs], [c for _, c in pairs]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = make_windows(tokenizer, questions, contexts, CFG)
            got = list(iter_windows(tokenizer, questions, contexts, CFG))
        assert len(got) == len(ref)
        for a, b in zip(ref, got, strict=True):
            for f in ("example_index", "input_ids", "token_type_ids", "offsets", "context_mask", "max_context"):
                assert np.array_equal(getattr(a, f), getattr(b, f)), (f, a.example_index)

    question = wild_text(20).filter(str.strip)
    fuzz("formatting: lazy inference windows = training windows", budget, prop,
         pairs=st.lists(st.tuples(question, wild_text()), min_size=1, max_size=3))

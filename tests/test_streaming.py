"""Lazy windows: the tokenizer's own overflowing windows (the oracle `make_windows`), made one at a time, with bounded
memory, and labelled for training exactly as the oracle labels them."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from oracle_windows import make_windows
from test_roberta_and_v2 import CORPUS, roberta_tokenizer  # noqa: F401  (a fixture, used by name)

from spanqa.formatting import FormatConfig, iter_windows

FIELDS = ("example_index", "input_ids", "token_type_ids", "offsets", "context_mask", "max_context")
PARAGRAPH = ("The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in "
             "France. They were descended from Norse raiders and pirates from Denmark, Iceland and Norway who, under "
             "their leader Rollo, agreed to swear fealty to King Charles III of West Francia. ")


def pairs(n_long: int = 2):
    qs = ["Who gave their name to Normandy?", "What is France?", "In what country is Normandy located? " * 8]
    cs = [PARAGRAPH, PARAGRAPH, PARAGRAPH]  # repeated contexts are tokenized once
    for k in range(n_long):
        qs.append(f"Who was Rollo, part {k}?")
        cs.append(PARAGRAPH * (6 + 5 * k))
    return qs, cs


@pytest.mark.parametrize("cfg", [FormatConfig(), FormatConfig(max_seq_len=64, doc_stride=20, max_question_len=16),
                                 FormatConfig(max_seq_len=48, doc_stride=25, max_question_len=8)])
def test_same_windows_as_make_windows(tokenizer, cfg, monkeypatch):
    monkeypatch.setattr("spanqa.formatting.PIECE_CHARS", 300)  # long contexts are tokenized in pieces: same tokens
    qs, cs = pairs()
    with pytest.warns(UserWarning) if cfg.max_question_len < 20 else _nothing():
        ref = make_windows(tokenizer, qs, cs, cfg)
    with pytest.warns(UserWarning) if cfg.max_question_len < 20 else _nothing():
        got = list(iter_windows(tokenizer, qs, cs, cfg))
    assert len(got) == len(ref) > len(qs)
    for a, b in zip(ref, got, strict=True):
        for f in FIELDS:
            assert np.array_equal(getattr(a, f), getattr(b, f)), (f, a.example_index)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_windows_are_made_lazily_with_bounded_memory(tokenizer):
    """A ~1 MB context: its windows come one at a time, and the stream holds little more than the tokenized
    context (12 bytes a token), never all windows (or the tokenizer's per-token Python objects) at once."""
    context = PARAGRAPH * (1_000_000 // len(PARAGRAPH))
    cfg = FormatConfig(max_seq_len=256, doc_stride=128)
    tracemalloc.start()
    try:
        stream = iter_windows(tokenizer, ["Who was Rollo?"], [context], cfg)
        first = next(stream)
        assert first.example_index == 0 and first.context_mask.any()
        n_windows, window_bytes = 1, 0
        for w in stream:
            n_windows += 1
            window_bytes += sum(getattr(w, f).nbytes for f in FIELDS[1:])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n_windows > 1500
    assert window_bytes > 12e6  # what holding every window at once would take, at the least
    assert peak < 8e6, peak  # measured: about 5 MB (make_windows: about 70 MB for this context)


def test_predict_scores_at_most_a_chunk_and_answers_alike(tiny_reader, monkeypatch):
    qs, cs = pairs(n_long=3)
    ref = tiny_reader.predict(qs, cs, top_k=3)
    seen = []
    logits = tiny_reader.logits

    def spy(batch):  # the one place the network runs: how many windows does it see at a time?
        seen.append(len(batch["input_ids"]))
        return logits(batch)

    monkeypatch.setattr(tiny_reader, "logits", spy)
    tiny_reader.chunk_windows = 2
    got = tiny_reader.predict(qs, cs, top_k=3)
    assert max(seen) <= 2 and len(seen) > 3
    for a, b in zip(ref, got, strict=True):
        assert [(c.start, c.end) for c in a.answers] == [(c.start, c.end) for c in b.answers]
        assert a.null_log_score == pytest.approx(b.null_log_score)
    for p, c in zip(got, cs, strict=True):
        assert all(a.text == c[a.start : a.end] for a in p.answers)


def test_token_budget_batches():
    from spanqa.batching import token_budget_batches

    lengths = [384] * 10 + [100] * 50 + [20, 30]
    batches = token_budget_batches(lengths, batch_size=32, max_tokens=2048)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        longest = max(lengths[i] for i in b)
        assert len(b) <= 32 and (len(b) * longest <= 2048 or len(b) == 1)
        assert lengths[b[0]] == longest  # longest first: the padded length
    assert [len(b) for b in batches[:2]] == [5, 5] and len(batches[2]) == 20


def test_same_windows_with_a_byte_level_bpe_tokenizer(roberta_tokenizer, monkeypatch):  # noqa: F811
    """RoBERTa-style: </s></s> between the segments, no segment ids, zero-width lone-space tokens."""
    monkeypatch.setattr("spanqa.formatting.PIECE_CHARS", 50)  # pieces cut at whitespace runs: the same tokens
    tok = roberta_tokenizer
    qs = ["Who jumps?", "What is over the dog?"]
    cs = [" ".join(CORPUS) + "  double  spaces ", "   ".join(CORPUS) * 4]
    cfg = FormatConfig(max_seq_len=40, doc_stride=10, max_question_len=8)
    with pytest.warns(UserWarning, match="truncated"):
        ref = make_windows(tok, qs, cs, cfg)
    with pytest.warns(UserWarning, match="truncated"):
        got = list(iter_windows(tok, qs, cs, cfg))
    assert len(got) == len(ref) > len(qs)
    for a, b in zip(ref, got, strict=True):
        for f in FIELDS:
            assert np.array_equal(getattr(a, f), getattr(b, f)), (f, a.example_index)


@pytest.mark.parametrize("cfg", [FormatConfig(max_seq_len=64, doc_stride=20, max_question_len=16),
                                 FormatConfig(max_seq_len=48, doc_stride=25, max_question_len=8)])
def test_training_labels_match_the_oracle(tokenizer, cfg):
    """Training labels the lazy windows: the begin/end targets are the oracle's in every window, including the
    windows that hold the answer only in part ([CLS] targets) and questions without an answer."""
    qs, cs = pairs()
    answers = []
    for k, c in enumerate(cs):
        if k == 1:
            answers.append(None)
            continue
        at = c.index("Rollo", (len(c) * k) // (len(cs) + 1))  # answers spread through the long contexts
        answers.append((at, at + len("Rollo, agreed")))
    with pytest.warns(UserWarning):
        ref = make_windows(tokenizer, qs, cs, cfg, answers)
    with pytest.warns(UserWarning):
        got = list(iter_windows(tokenizer, qs, cs, cfg, answers=answers))
    assert len(got) == len(ref)
    assert [(w.start_position, w.end_position) for w in got] == [(w.start_position, w.end_position) for w in ref]
    assert sum(w.start_position > 0 for w in got) >= len(qs) - 1  # every answered question is labelled somewhere

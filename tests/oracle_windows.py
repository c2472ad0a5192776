"""The reference window maker: the tokenizer's own overflowing windows, as spanqa made them before it cut windows
lazily (spanqa.formatting.iter_windows). Kept as a test oracle, as brute_force is for decoding: the package's one
window maker must give these windows, field by field.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from spanqa.formatting import FormatConfig, Window, label


def truncate_questions(tokenizer, questions: Sequence[str], max_len: int) -> tuple[list[str], int]:
    """Cut questions to `max_len` tokens at a token boundary; return them and how many were cut."""
    enc = tokenizer(list(questions), add_special_tokens=False, return_offsets_mapping=True)
    out, n_cut = [], 0
    for q, ids, offs in zip(questions, enc["input_ids"], enc["offset_mapping"], strict=True):
        if len(ids) > max_len:
            out.append(q[: offs[max_len - 1][1]])
            n_cut += 1
        else:
            out.append(q)
    return out, n_cut


def _mark_max_context(windows: list[Window], segments: list[np.ndarray], stride: int) -> None:
    """For tokens seen in several windows, keep the window where the token has the most context on both
    sides (BERT's max-context rule); only there may the token begin a span. `segments` holds each window's
    context-segment positions; consecutive windows share exactly `stride` of them."""
    doc_start = 0
    spans = []  # (first doc index, ctx positions) per window
    for pos in segments:
        spans.append((doc_start, pos))
        doc_start += max(len(pos) - stride, 1)
    n_doc = max(s + len(p) for s, p in spans)
    best = np.full(n_doc, -1.0)
    owner = np.full(n_doc, -1)
    for k, (s, pos) in enumerate(spans):
        n = len(pos)
        i = np.arange(n)
        score = np.minimum(i, n - 1 - i) + 0.01 * n
        better = score > best[s : s + n]
        best[s : s + n][better] = score[better]
        owner[s : s + n][better] = k
    for k, (w, (s, pos)) in enumerate(zip(windows, spans, strict=True)):
        mc = np.zeros(len(w), dtype=bool)
        mc[pos] = owner[s : s + len(pos)] == k
        w.max_context = mc & w.context_mask


def make_windows(
    tokenizer,
    questions: Sequence[str],
    contexts: Sequence[str],
    cfg: FormatConfig,
    answers: Sequence[tuple[int, int] | None] | None = None,
    example_offset: int = 0,
) -> list[Window]:
    """Format (question, context) pairs into windows.

    `answers`, when given, holds one (start_char, end_char) per pair, or None for no answer; the windows then
    carry begin/end targets, with [CLS] (position 0) for windows that do not contain the answer.
    """
    questions, n_cut = truncate_questions(tokenizer, questions, cfg.max_question_len)
    if n_cut:
        warnings.warn(
            f"{n_cut} question(s) longer than max_question_len={cfg.max_question_len} tokens were truncated",
            stacklevel=2,
        )
    enc = tokenizer(
        list(questions),
        list(contexts),
        truncation="only_second",
        max_length=cfg.max_seq_len,
        stride=cfg.doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        return_token_type_ids=True,
        padding=False,
    )
    by_example: dict[int, list[Window]] = {}
    segments: dict[int, list[np.ndarray]] = {}
    for w in range(len(enc["input_ids"])):
        ex = int(enc["overflow_to_sample_mapping"][w])
        seq = enc.sequence_ids(w)
        ids = np.asarray(enc["input_ids"][w], dtype=np.int64)
        offsets = np.asarray(enc["offset_mapping"][w], dtype=np.int64).reshape(-1, 2)
        # Context tokens that cover no character (byte-level BPE's lone spaces) can never begin or end an answer.
        ctx = np.array([s == 1 for s in seq], dtype=bool) & (offsets[:, 1] > offsets[:, 0])
        offsets[~ctx] = -1
        # RoBERTa-style tokenizers give all-zero type ids; BERT-style ones mark the context segment with 1.
        tt = enc["token_type_ids"][w] if "token_type_ids" in enc else [0] * len(ids)
        win = Window(
            example_index=example_offset + ex,
            input_ids=ids,
            token_type_ids=np.asarray(tt, dtype=np.int64),
            offsets=offsets,
            context_mask=ctx,
            max_context=ctx.copy(),
        )
        if answers is not None and answers[ex] is not None:
            s, e = answers[ex]
            win.start_position, win.end_position = label(offsets, np.flatnonzero(ctx), s, e)
        by_example.setdefault(ex, []).append(win)
        segments.setdefault(ex, []).append(np.flatnonzero([s == 1 for s in seq]))
    out: list[Window] = []
    for ex in sorted(by_example):
        wins = by_example[ex]
        if len(wins) > 1:
            _mark_max_context(wins, segments[ex], cfg.doc_stride)
        out.extend(wins)
    return out

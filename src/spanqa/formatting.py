"""Input sequence formatting: `[CLS] question [SEP] context [SEP]` windows with character offsets.

A long context is cut into overlapping windows. Consecutive windows share `doc_stride` context tokens
(the Hugging Face `run_qa` convention), so an answer near a window edge is whole in some window. Every
context token keeps its (start, end) character offsets into the original string, so an answer is always
`context[start:end]`. The tokenizer's own special tokens are used, so BERT- and RoBERTa-style tokenizers
both work.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from spanqa.errors import ConfigError


@dataclass(frozen=True)
class FormatConfig:
    max_seq_len: int = 384  # tokens per window, special tokens included
    doc_stride: int = 128  # context tokens shared by consecutive windows
    max_question_len: int = 64  # longer questions are truncated with a warning


@dataclass
class Window:
    """One encoder input. Positions index the window's tokens."""

    example_index: int
    input_ids: np.ndarray  # (n,) int64
    token_type_ids: np.ndarray  # (n,) int64, 0 = question segment, 1 = context segment
    offsets: np.ndarray  # (n, 2) int64 character offsets into the context; -1 outside the context
    context_mask: np.ndarray  # (n,) bool: positions that may begin or end a span
    max_context: np.ndarray  # (n,) bool: this window gives the token its most surrounding context
    start_position: int = 0  # training target; 0 ([CLS]) when the answer is not in this window
    end_position: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)


def special_token_count(tokenizer) -> int:
    return tokenizer.num_special_tokens_to_add(pair=True)


def check_settings(cfg: FormatConfig, tokenizer, max_positions: int | None = None) -> None:
    """Reject settings that cannot produce valid windows, before any work is done."""
    n_special = special_token_count(tokenizer)
    if cfg.max_question_len < 1:
        raise ConfigError(f"max_question_len must be at least 1, got {cfg.max_question_len}")
    if cfg.doc_stride < 0:
        raise ConfigError(f"doc_stride must be >= 0, got {cfg.doc_stride}")
    limit = max_positions
    tok_limit = getattr(tokenizer, "model_max_length", None)
    if tok_limit is not None and tok_limit < 100_000:
        limit = tok_limit if limit is None else min(limit, tok_limit)
    if limit is not None and cfg.max_seq_len > limit:
        raise ConfigError(f"max_seq_len {cfg.max_seq_len} is above the encoder's limit of {limit} tokens")
    room = cfg.max_seq_len - cfg.max_question_len - n_special
    if room < 1:
        raise ConfigError(
            f"max_seq_len {cfg.max_seq_len} leaves no room for context after a question of up to "
            f"{cfg.max_question_len} tokens and {n_special} special tokens; raise max_seq_len or lower "
            "max_question_len"
        )
    if cfg.doc_stride >= room:
        raise ConfigError(
            f"doc_stride {cfg.doc_stride} leaves no room: a window holds at most {room} context tokens "
            f"(max_seq_len {cfg.max_seq_len} - max_question_len {cfg.max_question_len} - {n_special} special "
            f"tokens), and the overlap must be smaller than that"
        )


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


def _label(offsets: np.ndarray, ctx_pos: np.ndarray, start_char: int, end_char: int) -> tuple[int, int]:
    """Token positions of a character span inside this window, or (0, 0) if it is not wholly inside."""
    ctx_off = offsets[ctx_pos]
    if len(ctx_pos) == 0 or ctx_off[0, 0] > start_char or ctx_off[-1, 1] < end_char:
        return 0, 0
    # begin: the first context token that ends after the answer starts; end: the last that starts before it ends
    b = int(np.searchsorted(ctx_off[:, 1], start_char, side="right"))
    e = int(np.searchsorted(ctx_off[:, 0], end_char, side="left")) - 1
    if b > e or b >= len(ctx_pos) or e < 0:
        return 0, 0
    return int(ctx_pos[b]), int(ctx_pos[e])


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
            win.start_position, win.end_position = _label(offsets, np.flatnonzero(ctx), s, e)
        by_example.setdefault(ex, []).append(win)
        segments.setdefault(ex, []).append(np.flatnonzero([s == 1 for s in seq]))
    out: list[Window] = []
    for ex in sorted(by_example):
        wins = by_example[ex]
        if len(wins) > 1:
            _mark_max_context(wins, segments[ex], cfg.doc_stride)
        out.extend(wins)
    return out

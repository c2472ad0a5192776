"""Input formatting: `[CLS] question [SEP] context [SEP]` windows with character offsets, cut lazily.

A long context is cut into overlapping windows; consecutive windows share `doc_stride` context tokens (the Hugging
Face `run_qa` convention), so an answer near a window edge is whole in some window. Every context token keeps its
(start, end) character offsets into the original string, so an answer is always `context[start:end]`. The
tokenizer's own special tokens are used, so BERT- and RoBERTa-style tokenizers both work.

This is the one window maker, for training (`answers` given: windows carry begin/end targets) and inference alike.
Each distinct context is tokenized once, without special tokens, into two O(n) arrays (token ids and character
offsets), and its windows are cut from those arrays one at a time as the caller asks for them:

    [CLS] question [SEP] context[s_k : s_k + room] [SEP]      s_k = k · (room - doc_stride)

the windows of the tokenizer's own overflow (`stride=doc_stride`; tests/oracle_windows.py keeps that reference), so
a 1 MB context never sits in memory as windows.
"""

from __future__ import annotations

import itertools
import math
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from spanqa.config import FormatConfig
from spanqa.errors import ConfigError

__all__ = ["FormatConfig", "Window", "check_settings", "iter_windows", "label", "pair_template"]

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
    siblings: int = 1  # windows of this example (this one included): the total of a progress bar
    teacher_begin: np.ndarray | None = None  # distillation: (n,) float32 teacher logits, -inf where no mass
    teacher_end: np.ndarray | None = None  # (spanqa.distill.window_targets)

    def __len__(self) -> int:
        return len(self.input_ids)


def backend(tokenizer):
    """The `tokenizers.Tokenizer` that does the work: a Hugging Face fast tokenizer's own, or one read straight from
    tokenizer.json (spanqa.checkpoint.TokenizerJson, which keeps transformers out of a cached ONNX start). Whole
    texts, always: a truncation or padding left set by another caller is switched off, as transformers does."""
    tok = getattr(tokenizer, "backend_tokenizer", tokenizer)
    if tok.truncation is not None:
        tok.no_truncation()
    if tok.padding is not None:
        tok.no_padding()
    return tok


def special_token_count(tokenizer) -> int:
    return backend(tokenizer).num_special_tokens_to_add(True)


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


CONTEXT_CHARS_PER_CALL = 1_000_000  # context characters per group of questions: bounds the tokenized contexts held
QUESTIONS_PER_CALL = 256
PIECE_CHARS = 50_000  # a longer text is tokenized in pieces of about this size
_SPACE = re.compile(r"(?<=\S)\s")  # the start of a whitespace run: a run is never split between pieces


@dataclass(frozen=True)
class PairTemplate:
    """Where the tokenizer puts its special tokens around a (question, context) pair, and the segment ids."""

    prefix: np.ndarray  # ids before the question, e.g. [CLS]
    middle: np.ndarray  # ids between question and context, e.g. [SEP] (RoBERTa: </s></s>)
    suffix: np.ndarray  # ids after the context, e.g. [SEP]
    prefix_types: np.ndarray
    middle_types: np.ndarray
    suffix_types: np.ndarray
    question_type: int
    context_type: int

    @property
    def n_special(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)


def pair_template(tokenizer) -> PairTemplate:
    """Read the template off the tokenizer's own encoding of a short pair, so any BERT/RoBERTa-style one works."""
    enc = backend(tokenizer).encode("a", "b")
    ids = np.asarray(enc.ids, dtype=np.int64)
    types = np.asarray(enc.type_ids or [0] * len(ids), dtype=np.int64)
    seq = enc.sequence_ids
    q = [i for i, s in enumerate(seq) if s == 0]
    c = [i for i, s in enumerate(seq) if s == 1]
    parts = [slice(0, q[0]), slice(q[-1] + 1, c[0]), slice(c[-1] + 1, len(ids))]
    return PairTemplate(*(ids[p] for p in parts), *(types[p] for p in parts), int(types[q[0]]), int(types[c[0]]))


def window_starts(n_ctx: int, room: int, stride: int) -> list[int]:
    """First context token of each window: windows of `room` tokens, consecutive ones sharing `stride`."""
    starts = [0]
    while starts[-1] + room < n_ctx:
        starts.append(starts[-1] + room - stride)
    return starts


def max_context(starts: Sequence[int], n_ctx: int, room: int, step: int, k: int) -> np.ndarray:
    """For window k's context tokens: is k the window that gives the token the most context on both sides?

    BERT's max-context rule: a token seen in several windows begins a span only where it has the most context on
    both sides (ties: the earliest window); computed from the neighbours of window k only, since no other window
    shares a token with it.
    """
    s_k = starts[k]
    t = np.arange(s_k, min(s_k + room, n_ctx))
    reach = math.ceil(room / step)  # windows further apart than this share no token
    best = np.full(len(t), -np.inf)
    owner = np.full(len(t), -1)
    for j in range(max(0, k - reach), min(len(starts), k + reach + 1)):
        s, n = starts[j], min(room, n_ctx - starts[j])
        inside = (t >= s) & (t < s + n)
        score = np.where(inside, np.minimum(t - s, s + n - 1 - t) + 0.01 * n, -np.inf)
        better = score > best
        best[better] = score[better]
        owner[better] = j
    return owner == k


def tokenize(tokenizer, texts: Sequence[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(ids, character offsets) of each text, without special tokens and without truncation.

    Short texts go in one tokenizer call. A long one goes in pieces of about PIECE_CHARS characters, cut where a
    whitespace run starts (no WordPiece or byte-level BPE token straddles such a cut: tested against whole-text
    tokenization), so the tokenizer's per-token Python objects never exist for more than one piece at a time; the
    result is 12 bytes a token.
    """
    out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(texts)
    short = [i for i, t in enumerate(texts) if len(t) <= PIECE_CHARS]
    if short:
        for i, pair in zip(short, _encode(tokenizer, [texts[i] for i in short]), strict=True):
            out[i] = pair
    for i, text in enumerate(texts):
        if out[i] is None:
            parts = []
            for a, b in _pieces(text):
                ids, offs = _encode(tokenizer, [text[a:b]])[0]
                parts.append((ids, offs + a))
            out[i] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return out


def _encode(tokenizer, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(np.asarray(e.ids, dtype=np.int32), np.asarray(e.offsets, dtype=np.int32).reshape(-1, 2))
            for e in backend(tokenizer).encode_batch(texts, add_special_tokens=False)]


def _pieces(text: str) -> list[tuple[int, int]]:
    cuts = [0]
    while len(text) - cuts[-1] > PIECE_CHARS:
        m = _SPACE.search(text, cuts[-1] + PIECE_CHARS)
        if m is None:
            break
        cuts.append(m.start())
    cuts.append(len(text))
    return list(itertools.pairwise(cuts))


def _groups(contexts: Sequence[str]) -> Iterator[tuple[int, int]]:
    """Consecutive question ranges whose distinct contexts are tokenized in one call."""
    lo = 0
    while lo < len(contexts):
        hi, chars, prev = lo, 0, None
        while hi < len(contexts) and hi - lo < QUESTIONS_PER_CALL and (chars < CONTEXT_CHARS_PER_CALL or hi == lo):
            if contexts[hi] != prev:
                chars += len(contexts[hi])
                prev = contexts[hi]
            hi += 1
        yield lo, hi
        lo = hi


def iter_windows(
    tokenizer,
    questions: Sequence[str],
    contexts: Sequence[str],
    cfg: FormatConfig,
    template: PairTemplate | None = None,
    answers: Sequence[tuple[int, int] | None] | None = None,
) -> Iterator[Window]:
    """Windows of every (question, context) pair, in question order, made one at a time.

    `answers`, when given, holds one (start_char, end_char) per pair, or None for no answer; the windows then carry
    begin/end targets, with [CLS] (position 0) for windows that do not contain the answer.
    """
    tpl = template or pair_template(tokenizer)
    n_cut = 0
    for lo, hi in _groups(contexts):
        unique: dict[str, int] = {}
        for c in contexts[lo:hi]:
            unique.setdefault(c, len(unique))
        tokenized = tokenize(tokenizer, list(unique))
        q_ids = [ids for ids, _ in tokenize(tokenizer, questions[lo:hi])]
        for ex in range(lo, hi):
            q = q_ids[ex - lo]
            if len(q) > cfg.max_question_len:
                q, n_cut = q[: cfg.max_question_len], n_cut + 1
            c_ids, c_offs = tokenized[unique[contexts[ex]]]
            answer = answers[ex] if answers is not None else None
            yield from _pair_windows(ex, q, c_ids, c_offs, cfg, tpl, answer)
        del tokenized
    if n_cut:
        warnings.warn(f"{n_cut} question(s) longer than max_question_len={cfg.max_question_len} tokens were "
                      "truncated", stacklevel=2)


def _pair_windows(ex: int, q: np.ndarray, c_ids: np.ndarray, c_offs: np.ndarray, cfg: FormatConfig,
                  tpl: PairTemplate, answer: tuple[int, int] | None) -> Iterator[Window]:
    room = cfg.max_seq_len - len(q) - tpl.n_special
    starts = window_starts(len(c_ids), room, cfg.doc_stride)
    head = np.concatenate([tpl.prefix, q, tpl.middle])
    head_types = np.concatenate([tpl.prefix_types, np.full(len(q), tpl.question_type), tpl.middle_types])
    for k, s in enumerate(starts):
        e = min(s + room, len(c_ids))
        n = e - s
        total = len(head) + n + len(tpl.suffix)
        segment = slice(len(head), len(head) + n)
        offsets = np.full((total, 2), -1, dtype=np.int64)
        offsets[segment] = c_offs[s:e]
        # context tokens that cover no character (byte-level BPE's lone spaces) never begin or end an answer, but
        # they count in the windows' geometry
        ctx = offsets[:, 1] > offsets[:, 0]
        offsets[~ctx] = -1
        mc = np.zeros(total, dtype=bool)
        mc[segment] = max_context(starts, len(c_ids), room, room - cfg.doc_stride, k) if len(starts) > 1 else True
        mc &= ctx
        gold = label(offsets, np.flatnonzero(ctx), *answer) if answer is not None else (0, 0)
        yield Window(
            example_index=ex,
            input_ids=np.concatenate([head, c_ids[s:e], tpl.suffix]),
            token_type_ids=np.concatenate([head_types, np.full(n, tpl.context_type), tpl.suffix_types]),
            offsets=offsets,
            context_mask=ctx,
            max_context=mc,
            start_position=gold[0],
            end_position=gold[1],
            siblings=len(starts),
        )


def label(offsets: np.ndarray, ctx_pos: np.ndarray, start_char: int, end_char: int) -> tuple[int, int]:
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

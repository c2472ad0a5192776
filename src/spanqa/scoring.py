"""The one scoring pass: windows → token-budget batches → the network → log-probabilities, once per window.

Everything that reads the network's output reads it from here: the reader's spans (`Reader.predict`), the per-token
P_begin/P_end of `spanqa explain` and of the API's `return_probabilities`, and batch answering. Windows come lazily,
`chunk_windows` at a time, and each chunk is sorted by length into batches of at most `batch_size` windows and
`max_batch_tokens` padded tokens; a window leaves the pass as its top-k spans (already mapped to characters), its
null score and, on request, its context tokens' probabilities, so a 1 MB context never sits in memory as windows.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from spanqa.batching import collate, token_budget_batches
from spanqa.decoding import best_spans, log_probs
from spanqa.formatting import Window

Logits = Callable[[dict], tuple[np.ndarray, np.ndarray]]  # a collated batch -> masked (begin, end) logits, (B, T)


@dataclass
class ScoredWindow:
    """What one window says: its top-k spans, its null score, and (on request) its tokens' probabilities."""

    example_index: int
    scores: np.ndarray  # (k,) log P_begin(i) + log P_end(j), best first; -inf where fewer spans exist
    begins: np.ndarray  # (k,) token positions in the window
    ends: np.ndarray
    char_starts: np.ndarray  # (k,) the spans as character offsets into the context
    char_ends: np.ndarray
    null: float  # log P_begin(CLS) + log P_end(CLS)
    tokens: TokenProbs | None = None  # this window's max-context tokens, with P_begin and P_end
    window: Window | None = None  # kept only on request


@dataclass
class TokenProbs:
    """Per context token: its text, character offsets, and the begin/end probabilities of its max-context window.

    Each context token appears once, in context order, with the probabilities of the window where it has the most
    context (the only window where the decoder lets it begin a span). With one window, the P_begin of all tokens
    plus P_begin(CLS) sums to 1; with several windows the sums hold per window, not over the merged list.
    """

    text: list[str] = field(default_factory=list)
    start: list[int] = field(default_factory=list)  # text[k] == context[start[k]:end[k]]
    end: list[int] = field(default_factory=list)
    p_begin: list[float] = field(default_factory=list)
    p_end: list[float] = field(default_factory=list)
    window: list[int] = field(default_factory=list)  # which window the probabilities come from
    null: list[tuple[float, float]] = field(default_factory=list)  # (P_begin(CLS), P_end(CLS)) per window

    def __len__(self) -> int:
        return len(self.text)

    def extend(self, other: TokenProbs, window: int, context: str) -> None:
        """Append one window's tokens (their text read from `context`), numbered `window`."""
        self.text += [context[s:e] for s, e in zip(other.start, other.end, strict=True)]
        self.start += other.start
        self.end += other.end
        self.p_begin += other.p_begin
        self.p_end += other.p_end
        self.window += [window] * len(other.start)
        self.null += other.null

    def to_dict(self) -> dict:
        tokens = [{"text": t, "start": s, "end": e, "p_begin": b, "p_end": n, "window": w}
                  for t, s, e, b, n, w in zip(self.text, self.start, self.end, self.p_begin, self.p_end, self.window,
                                              strict=True)]
        return {"tokens": tokens, "windows": len(self.null),
                "null": [{"p_begin": b, "p_end": e} for b, e in self.null]}


def _window_tokens(w: Window, pb: np.ndarray, pe: np.ndarray) -> TokenProbs:
    pos = np.flatnonzero(w.context_mask & w.max_context)
    return TokenProbs(start=w.offsets[pos, 0].tolist(), end=w.offsets[pos, 1].tolist(), p_begin=pb[pos].tolist(),
                      p_end=pe[pos].tolist(), null=[(float(pb[0]), float(pe[0]))])


@dataclass(frozen=True)
class PassSettings:
    """How the pass batches and what it keeps."""

    top_k: int = 1
    max_answer_len: int = 30
    batch_size: int = 32  # windows per forward pass, at most
    max_batch_tokens: int = 4096  # padded tokens per forward pass, at most
    chunk_windows: int = 1024  # windows formatted and scored at a time: memory stays bounded for any context
    pad_id: int = 0
    probabilities: bool = False  # keep each window's per-token P_begin/P_end
    keep_windows: bool = False


def score_windows(logits: Logits, windows: Iterable[Window], s: PassSettings) -> Iterator[ScoredWindow]:
    """Run the network once per window; yield what each window says, in the windows' order."""
    stream = iter(windows)
    while chunk := list(itertools.islice(stream, s.chunk_windows)):
        results: list[ScoredWindow | None] = [None] * len(chunk)
        for idx in token_budget_batches([len(w) for w in chunk], s.batch_size, s.max_batch_tokens):
            for i, scored in zip(idx, _score_batch(logits, [chunk[i] for i in idx], s), strict=True):
                results[i] = scored
        yield from results


def _score_batch(logits: Logits, windows: list[Window], s: PassSettings) -> list[ScoredWindow]:
    batch = collate(windows, s.pad_id)
    lb, le = logits(batch)
    blp, elp = log_probs(lb), log_probs(le)
    can_end = batch["span_mask"].copy()
    can_end[:, 0] = False
    scores, begins, ends = best_spans(blp, elp, batch["can_begin"], can_end, s.max_answer_len, s.top_k)
    null = blp[:, 0] + elp[:, 0]
    if s.probabilities:
        pb, pe = np.exp(blp), np.exp(elp)
    out = []
    for r, w in enumerate(windows):
        last = len(w) - 1  # slots with score -inf (fewer valid spans than k) may point into the padding
        b, e = begins[r], ends[r]
        out.append(ScoredWindow(
            w.example_index, scores[r], b, e, w.offsets[np.minimum(b, last), 0], w.offsets[np.minimum(e, last), 1],
            float(null[r]), _window_tokens(w, pb[r], pe[r]) if s.probabilities else None,
            w if s.keep_windows else None))
    return out

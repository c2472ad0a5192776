"""Explain an answer: P_begin and P_end for every context token, as numbers and as a chart.

This is the concept card's picture made live: the encoder reads `[CLS] question [SEP] context [SEP]`, and the two
heads give each context token a probability of beginning and of ending the answer.

Within one window, P_begin and P_end are the softmaxes the decoder uses (over the window's context tokens plus
[CLS]). A long context is read in several overlapping windows, so a token can get several probabilities; we show,
for each context token, the probabilities from its max-context window (the window where it has the most context on
both sides, the only window where the decoder lets it begin a span). Each context token therefore appears exactly
once, in context order. With one window the P_begin of all tokens plus P_begin(CLS) sums to 1; with several windows
the sums hold per window, not over the merged list.

`token_probabilities` is shared by the HTTP API (`return_probabilities`) and `spanqa explain`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from spanqa.batching import collate, length_grouped_batches
from spanqa.decoding import log_probs
from spanqa.errors import SpanqaError
from spanqa.formatting import make_windows

CHART_SUFFIXES = (".png", ".svg", ".pdf")


@dataclass
class TokenProbs:
    """Per context token: its text, character offsets, and the begin/end probabilities of its max-context window."""

    text: list[str] = field(default_factory=list)
    start: list[int] = field(default_factory=list)  # text[k] == context[start[k]:end[k]]
    end: list[int] = field(default_factory=list)
    p_begin: list[float] = field(default_factory=list)
    p_end: list[float] = field(default_factory=list)
    window: list[int] = field(default_factory=list)  # which window the probabilities come from
    null: list[tuple[float, float]] = field(default_factory=list)  # (P_begin(CLS), P_end(CLS)) per window

    def __len__(self) -> int:
        return len(self.text)

    def to_dict(self) -> dict:
        tokens = [{"text": t, "start": s, "end": e, "p_begin": b, "p_end": n, "window": w}
                  for t, s, e, b, n, w in zip(self.text, self.start, self.end, self.p_begin, self.p_end, self.window,
                                              strict=True)]
        return {"tokens": tokens, "windows": len(self.null),
                "null": [{"p_begin": b, "p_end": e} for b, e in self.null]}


@torch.inference_mode()
def token_probabilities(reader, questions: Sequence[str], contexts: Sequence[str],
                        batch_size: int = 32) -> list[TokenProbs]:
    """Per-token P_begin and P_end for each (question, context), with the same windows and network as the reader."""
    windows = make_windows(reader.tokenizer, questions, contexts, reader.config.format)
    out = [TokenProbs() for _ in contexts]
    per_example: list[list[int]] = [[] for _ in contexts]  # window indices of each example, in order
    for i, w in enumerate(windows):
        per_example[w.example_index].append(i)
    probs: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(windows)
    pad = reader.tokenizer.pad_token_id or 0
    for batch_idx in length_grouped_batches([len(w) for w in windows], batch_size, rng=None):
        batch = collate([windows[i] for i in batch_idx], pad)
        lb, le = reader.logits(batch)  # the one place the network runs
        pb, pe = log_probs(lb).exp().cpu().numpy(), log_probs(le).exp().cpu().numpy()
        for r, i in enumerate(batch_idx):
            probs[i] = (pb[r], pe[r])
    for ex, idx in enumerate(per_example):
        tp, context = out[ex], contexts[ex]
        for k, i in enumerate(idx):
            w = windows[i]
            pb, pe = probs[i]
            tp.null.append((float(pb[0]), float(pe[0])))
            for pos in np.flatnonzero(w.context_mask & w.max_context):
                s, e = int(w.offsets[pos, 0]), int(w.offsets[pos, 1])
                tp.text.append(context[s:e])
                tp.start.append(s)
                tp.end.append(e)
                tp.p_begin.append(float(pb[pos]))
                tp.p_end.append(float(pe[pos]))
                tp.window.append(k)
    return out


def plot_probabilities(tp: TokenProbs, out: str | Path, question: str = "", span: tuple[int, int] | None = None,
                       answer: str | None = None, log_scale: bool = False) -> Path:
    """Draw P_begin and P_end per context token (tokens on the x axis); shade the tokens of `span` (char offsets).

    `log_scale` shows the small probabilities too (from 1e-6), which a linear axis flattens to zero.
    """
    try:
        import matplotlib
    except ImportError:
        raise SpanqaError("drawing the chart needs matplotlib: pip install 'spanqa[serve]'") from None
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    out = Path(out)
    if out.suffix.lower() not in CHART_SUFFIXES:
        raise SpanqaError(f"{out}: the chart must be one of {', '.join(CHART_SUFFIXES)}")
    n = len(tp)
    x = np.arange(n)
    width_in = min(max(8.0, 0.22 * n + 1.5), 150.0)  # ~22 px per token at 100 dpi, within Agg's size limit
    fig, ax = plt.subplots(figsize=(width_in, 4.8), dpi=100)
    if span is not None:
        inside = [k for k in range(n) if tp.start[k] < span[1] and tp.end[k] > span[0]]
        if inside:
            ax.axvspan(inside[0] - 0.5, inside[-1] + 0.5, color="#ffe08a", alpha=0.6, label="predicted span", lw=0)
    ax.bar(x - 0.2, tp.p_begin, width=0.4, color="#1f77b4", label="P_begin")
    ax.bar(x + 0.2, tp.p_end, width=0.4, color="#ff7f0e", label="P_end")
    step = max(1, -(-n // 600))  # label every token while it stays legible
    ax.set_xticks(x[::step], [t.replace("$", r"\$") for t in tp.text[::step]], rotation=70, ha="right",
                  fontsize=8)
    ax.set_xlim(-0.7, max(n, 1) - 0.3)
    if log_scale:
        ax.set_yscale("log")
        ax.set_ylim(1e-6, 1.0)
    else:
        ax.set_ylim(0, 1.0)
    ax.set_ylabel("probability")
    title = f"Q: {question}" if question else "begin/end probabilities"
    if answer is not None:
        title += f"\nA: {answer}" if answer else "\nA: (no answer)"
    ax.set_title(title.replace("$", r"\$"), fontsize=10, loc="left")
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=3, fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(out)
    except OSError as e:
        raise SpanqaError(f"{out}: cannot write the chart ({e.strerror or e})") from None
    finally:
        plt.close(fig)
    return out


def explain(reader, question: str, context: str, out: str | Path, log_scale: bool = False) -> tuple[dict, Path]:
    """Answer, then draw the chart with the predicted span marked; return (the CLI's JSON answer, chart path)."""
    pred = reader.answer(question, context, top_k=1)
    tp = token_probabilities(reader, [question], [context])[0]
    best = None if pred.no_answer else pred.best
    span = (best.start, best.end) if best else None
    path = plot_probabilities(tp, out, question, span, best.text if best else "", log_scale)
    return pred.to_dict(), path

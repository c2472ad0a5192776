"""Explain an answer: P_begin and P_end for every context token, as numbers and as a chart.

This is the concept card's picture made live: the encoder reads `[CLS] question [SEP] context [SEP]`, and the two
heads give each context token a probability of beginning and of ending the answer.

Within one window, P_begin and P_end are the softmaxes the decoder uses (over the window's context tokens plus
[CLS]). A long context is read in several overlapping windows, so a token can get several probabilities; we show,
for each context token, the probabilities from its max-context window (the window where it has the most context on
both sides, the only window where the decoder lets it begin a span). Each context token therefore appears exactly
once, in context order. With one window the P_begin of all tokens plus P_begin(CLS) sums to 1; with several windows
the sums hold per window, not over the merged list.

The probabilities come from the reader's one scoring pass (spanqa.scoring), the same pass that finds the answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from spanqa.errors import SpanqaError
from spanqa.scoring import TokenProbs
from spanqa.validation import atomic_file

CHART_SUFFIXES = (".png", ".svg", ".pdf")


def token_probabilities(reader, questions: Sequence[str], contexts: Sequence[str],
                        batch_size: int = 32) -> list[TokenProbs]:
    """Per-token P_begin and P_end for each (question, context), from the reader's scoring pass."""
    return [p.probabilities for p in reader.predict(questions, contexts, batch_size=batch_size, probabilities=True)]


BARS_UP_TO = 2_000  # tokens drawn as bars; past this, as lines (at the widest chart a pixel holds several tokens)


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
    if n <= BARS_UP_TO:
        ax.bar(x - 0.2, tp.p_begin, width=0.4, color="#1f77b4", label="P_begin")
        ax.bar(x + 0.2, tp.p_end, width=0.4, color="#ff7f0e", label="P_end")
    else:  # one line collection per head: a bar per token is an artist per token, minutes for a long document
        low = 1e-6 if log_scale else 0.0
        ax.vlines(x - 0.2, low, np.maximum(tp.p_begin, low), color="#1f77b4", label="P_begin", lw=0.6)
        ax.vlines(x + 0.2, low, np.maximum(tp.p_end, low), color="#ff7f0e", label="P_end", lw=0.6)
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
        with atomic_file(out, "the chart") as tmp:  # whole or not at all; a new chart taken back on a failure
            fig.savefig(tmp)
    finally:
        plt.close(fig)
    return out


def explain(reader, question: str, context: str, out: str | Path, log_scale: bool = False,
            progress: bool = False) -> tuple[dict, Path]:
    """Answer, then draw the chart with the predicted span marked; return (the CLI's JSON answer, chart path)."""
    pred = reader.answer(question, context, top_k=1, probabilities=True, progress=progress)
    tp = pred.probabilities
    best = None if pred.no_answer else pred.best
    span = (best.start, best.end) if best else None
    path = plot_probabilities(tp, out, question, span, best.text if best else "", log_scale)
    return pred.to_dict(), path

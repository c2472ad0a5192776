"""Knowledge distillation: a teacher reader's begin/end distributions, carried onto a student's windows.

Teacher and student may tokenize differently (MPNet and MiniLM; RoBERTa and BERT) and cut their windows differently
(other special tokens, other question lengths), so the teacher's output is kept at the level they share: the
characters of the context. One path serves every pair, tokenizers alike or not:

1. `teach` runs the teacher over the questions (the one scoring pass: `Reader.predict` with probabilities) and keeps,
   for each context token in its max-context window, the log-odds of beginning (and of ending) the answer against
   that window's [CLS]: log P_begin(t) - log P_begin(CLS). [CLS] itself has log-odds 0: it is the null, so a teacher
   that abstains teaches abstention. Kept per question: the tokens' character offsets (shared by the questions of one
   context) and the two log-odds. `spanqa teach` writes them to a file; `spanqa train --teacher DIR` makes them for
   its training questions before the first step (and keeps them in OUT/teacher.safetensors, for an exact resume).
2. `window_targets` maps them onto a student window. A teacher token's begin mass goes to the student context token
   covering its first character (the first one ending after that character: the rule that labels gold begins), its
   end mass to the student token covering its last character (the last one starting before the token's end); masses
   that land on one student token add up (logsumexp of log-odds); [CLS] stays [CLS], at 0; teacher tokens outside the
   window drop out, and student tokens that receive nothing get -inf. The softmax in the loss (spanqa.loss.soft_kl)
   renormalises over the window's context tokens and [CLS]. With the same tokenizer and settings and one window per
   question, the result is exactly the teacher's own window distribution.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from spanqa.data import Example
from spanqa.errors import DataError
from spanqa.formatting import Window
from spanqa.reader import Reader
from spanqa.validation import atomic_file, umask_mode

FORMAT = "spanqa-teacher-1"
ARRAYS = ("keys", "context_of", "ctx_ptr", "offsets", "ex_ptr", "begin", "end")


def question_key(question: str, context: str) -> int:
    """A question's identity in a teacher file: 64 bits of a hash of its question and context."""
    digest = hashlib.blake2b(f"{question}\0{context}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)


@dataclass
class TeacherTargets:
    """The teacher's log-odds per context token, per question, with the tokens' character offsets per context."""

    keys: np.ndarray  # (n,) int64: question_key of each question
    context_of: np.ndarray  # (n,) int64: its context's number
    ctx_ptr: np.ndarray  # (m + 1,) int64: context c's tokens are offsets[ctx_ptr[c] : ctx_ptr[c + 1]]
    offsets: np.ndarray  # (tokens, 2) int32 character offsets of the teacher's context tokens, in context order
    ex_ptr: np.ndarray  # (n + 1,) int64: question i's log-odds are begin/end[ex_ptr[i] : ex_ptr[i + 1]]
    begin: np.ndarray  # float32 log-odds against the window's [CLS]; -inf: no mass
    end: np.ndarray
    meta: dict = field(default_factory=dict)  # the teacher, the data, the format

    def __len__(self) -> int:
        return len(self.keys)

    def question(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(offsets, begin log-odds, end log-odds) of question i."""
        c = self.context_of[i]
        rows = slice(self.ex_ptr[i], self.ex_ptr[i + 1])
        return self.offsets[self.ctx_ptr[c] : self.ctx_ptr[c + 1]], self.begin[rows], self.end[rows]


# ---- 1. the teacher's output, at the character level ------------------------------------------------------------
def teach(reader: Reader, examples: Sequence[Example], chunk: int = 512, batch_size: int = 64,
          progress: bool = False, meta: dict | None = None) -> TeacherTargets:
    """Run `reader` over the questions of `examples`, `chunk` at a time; keep each context token's log-odds."""
    from tqdm.auto import tqdm

    keys, context_of, ctx_ptr, ex_ptr = [], [], [0], [0]
    offsets: list[np.ndarray] = []
    begin: list[np.ndarray] = []
    end: list[np.ndarray] = []
    last = (None, None)  # the previous question's context and token offsets: shared ones are stored once
    with tqdm(total=len(examples), desc="teach", unit="q", disable=not progress, file=sys.stderr) as bar:
        for lo in range(0, len(examples), chunk):
            part = examples[lo : lo + chunk]
            preds = reader.predict([e.question for e in part], [e.context for e in part], batch_size=batch_size,
                                   probabilities=True)
            for e, pred in zip(part, preds, strict=True):
                offs, b, n = _log_odds(pred.probabilities)
                if last[0] != e.context or not np.array_equal(last[1], offs):
                    offsets.append(offs)
                    ctx_ptr.append(ctx_ptr[-1] + len(offs))
                    last = (e.context, offs)
                keys.append(question_key(e.question, e.context))
                context_of.append(len(ctx_ptr) - 2)
                begin.append(b)
                end.append(n)
                ex_ptr.append(ex_ptr[-1] + len(b))
            bar.update(len(part))
    return TeacherTargets(np.asarray(keys, np.int64), np.asarray(context_of, np.int64), np.asarray(ctx_ptr, np.int64),
                          _cat(offsets, np.int32, (0, 2)), np.asarray(ex_ptr, np.int64), _cat(begin, np.float32),
                          _cat(end, np.float32), {"format": FORMAT, **(meta or {})})


def _cat(parts: list[np.ndarray], dtype, empty: tuple[int, ...] = (0,)) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(empty, dtype)


def _log_odds(tp) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A question's token offsets and begin/end log-odds against the [CLS] of each token's window."""
    offs = np.asarray(list(zip(tp.start, tp.end, strict=True)), np.int32).reshape(-1, 2)
    window = np.asarray(tp.window, np.int64)
    tiny = np.finfo(np.float32).tiny  # a [CLS] probability that underflowed to 0: log-odds large, not infinite
    null = np.log(np.maximum(np.asarray(tp.null, np.float64).reshape(-1, 2), tiny))
    with np.errstate(divide="ignore"):  # a token of probability 0 has log-odds -inf: no mass
        b = np.log(np.asarray(tp.p_begin, np.float64)) - null[window, 0] if len(window) else np.zeros(0)
        e = np.log(np.asarray(tp.p_end, np.float64)) - null[window, 1] if len(window) else np.zeros(0)
    return offs, b.astype(np.float32), e.astype(np.float32)


def save_targets(targets: TeacherTargets, path: str | Path, keep: bool = False) -> Path:
    """Write a teacher file (safetensors: the arrays, and `meta` as JSON), atomically: a temporary file renamed, or
    removed if the write fails. `keep`: a new file stays even if the command then fails (training keeps it for an
    exact resume); otherwise the enclosing `outputs_taken_back` takes it back."""
    from safetensors.numpy import save_file

    arrays = {k: np.ascontiguousarray(getattr(targets, k)) for k in ARRAYS}
    with atomic_file(path, "the teacher file", keep=keep) as tmp:
        save_file(arrays, str(tmp), metadata={"spanqa_teacher": json.dumps(targets.meta)})
        umask_mode([tmp])
    return Path(path)


def load_targets(path: str | Path) -> TeacherTargets:
    """A teacher file, or a DataError naming it."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            meta = json.loads((f.metadata() or {}).get("spanqa_teacher", "{}"))
            arrays = {k: f.get_tensor(k) for k in ARRAYS if k in f.keys()}
    except FileNotFoundError:
        raise DataError(f"--teacher {path}: not found") from None
    except (OSError, SafetensorError, ValueError) as e:
        raise DataError(f"--teacher {path}: not a file written by `spanqa teach` ({str(e).splitlines()[0]})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or len(arrays) != len(ARRAYS):
        raise DataError(f"--teacher {path}: not a file written by `spanqa teach` (no {FORMAT} arrays)")
    return TeacherTargets(**arrays, meta=meta)


# ---- 2. onto the student's windows ------------------------------------------------------------------------------
def window_targets(w: Window, offsets: np.ndarray, begin: np.ndarray, end: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The teacher's begin and end logits on window `w`'s positions: log-odds mapped through characters (above)."""
    tb = np.full(len(w), -np.inf, np.float32)
    te = np.full(len(w), -np.inf, np.float32)
    tb[0] = te[0] = 0.0  # [CLS]: the null
    ctx = np.flatnonzero(w.context_mask)
    if len(ctx) == 0 or len(offsets) == 0:
        return tb, te
    co = w.offsets[ctx]
    lo, hi = co[0, 0], co[-1, 1]
    first = offsets[:, 0]
    inside = (first >= lo) & (first < hi)
    np.logaddexp.at(tb, ctx[np.searchsorted(co[:, 1], first[inside], side="right")], begin[inside])
    last = offsets[:, 1]
    inside = (last > lo) & (last <= hi)
    np.logaddexp.at(te, ctx[np.searchsorted(co[:, 0], last[inside], side="left") - 1], end[inside])
    return tb, te


def attach(windows: Sequence[Window], examples: Sequence[Example], targets: TeacherTargets, source: str) -> None:
    """Give each training window its teacher logits (`Window.teacher_begin/end`), found by question and context."""
    row = {int(k): i for i, k in enumerate(targets.keys)}
    rows = []
    for e in examples:
        i = row.get(question_key(e.question, e.context))
        if i is None:
            raise DataError(f"--teacher {source}: has no teacher output for question {e.id!r} of the training data "
                            "(same question and context); run `spanqa teach` on the training file")
        rows.append(i)
    for w in windows:
        w.teacher_begin, w.teacher_end = window_targets(w, *targets.question(rows[w.example_index]))

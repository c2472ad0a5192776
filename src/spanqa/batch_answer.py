"""Answer a large JSONL file of questions: streaming, bounded memory, resumable.

    spanqa answer --input questions.jsonl --output answers.jsonl

Input lines are `{"id", "question", "context"}` (the Hugging Face layout works too: other fields such as
"answers" or "title" are ignored); `.gz` is read as gzip. Output lines are `{"id", "answers": [...],
"no_answer"}`, in input order.

Memory is bounded: records are read and answered `chunk` at a time, and only the ids are kept (to skip the
answered ones and catch duplicates). Each chunk's lines are appended, flushed and fsynced before the next
chunk, so a killed run loses at most one chunk. Re-running the same command resumes: ids already in the
output are skipped, and a partial last line (the process was killed mid-write) is cut off and its question
answered again. A first pass validates every line, so a bad line is reported (file, line, field) before any
work, or, with `skip_invalid`, counted and skipped; that pass also sizes the progress bar.
"""

from __future__ import annotations

import gzip
import json
import os
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from spanqa.errors import DataError
from spanqa.reader import Reader
from spanqa.validation import Invalid, check_file, check_text


@dataclass
class AnswerFileStats:
    answered: int = 0  # by this run
    already_done: int = 0  # found in the output and skipped
    recovered_partial_line: bool = False
    invalid: Counter = field(default_factory=Counter)  # reason -> count (with skip_invalid)
    seconds: float = 0.0

    @property
    def questions_per_second(self) -> float:
        return self.answered / max(self.seconds, 1e-9)

    def to_dict(self) -> dict:
        return {"answered": self.answered, "already_done": self.already_done, "invalid": dict(self.invalid),
                "recovered_partial_line": self.recovered_partial_line, "seconds": round(self.seconds, 2),
                "questions_per_second": round(self.questions_per_second, 2)}


# ---- reading ------------------------------------------------------------------------------------------------
Record = tuple  # (id, question, context), or (id, *fields) for other `fields`
FIELDS = ("question", "context")


def _parse(raw: bytes, fields: tuple[str, ...] = FIELDS) -> Record | None:
    """One input line -> (id, question, context) (or the `fields` asked for); None for a blank line; Invalid names
    the bad field."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Invalid("line", f"is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not line.strip():
        return None
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise Invalid("line", f"is not valid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise Invalid("line", "is nested too deeply") from None
    if not isinstance(rec, dict):
        raise Invalid("line", f"must be a JSON object, got {type(rec).__name__}")
    qid = rec.get("id")
    if qid is None:
        raise Invalid("id", "is missing")
    if isinstance(qid, bool) or not isinstance(qid, str | int):
        raise Invalid("id", f"must be a string or an integer, got {type(qid).__name__}")
    return (qid, *(check_text(rec.get(name), name) for name in fields))


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    check_file(path, expect="a .jsonl file")
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            yield from enumerate(f, start=1)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read: {e}") from None


def _records(path: Path, skip_lines: set[int], fields: tuple[str, ...] = FIELDS) -> Iterator[tuple[int, Record]]:
    """The valid records, in order; `skip_lines` holds the invalid and duplicate ones the scan found."""
    for n, raw in _lines(path):
        if n not in skip_lines:
            rec = _parse(raw, fields)
            if rec is not None:
                yield n, rec


def _scan(path: Path, done: set, skip_invalid: bool, stats: AnswerFileStats,
          fields: tuple[str, ...] = FIELDS) -> tuple[int, set[int]]:
    """Validate every line; return how many questions are left to answer and the lines to skip."""
    seen: set = set()
    skip: set[int] = set()
    todo = 0

    def bad(n: int, field_name: str, reason: str) -> None:
        if not skip_invalid:
            raise DataError(f"{path}: line {n}: field '{field_name}' {reason} (use --skip-invalid to skip bad "
                            "lines)")
        stats.invalid[f"{field_name} {reason.split(' (')[0]}"] += 1
        skip.add(n)

    for n, raw in _lines(path):
        try:
            rec = _parse(raw, fields)
        except Invalid as e:
            bad(n, e.field_name, e.reason)
            continue
        if rec is None:
            continue
        qid = rec[0]
        if qid in seen:
            bad(n, "id", f"{qid!r} is used twice")
            continue
        seen.add(qid)
        if qid in done:
            stats.already_done += 1
        else:
            todo += 1
    return todo, skip


# ---- the output, and resuming it ----------------------------------------------------------------------------
def recover_output(path: Path) -> tuple[set, bool]:
    """The ids already answered in `path`; a partial last line (a kill mid-write) is cut off. Returns
    (ids, whether a partial line was cut)."""
    if not path.exists():
        return set(), False
    done: set = set()
    good = 0  # bytes of complete lines
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if not raw.endswith(b"\n"):
                break  # the last line, unfinished: answered again below
            try:
                rec = json.loads(raw)
                qid = rec["id"]
                hash(qid)
            except (ValueError, TypeError, KeyError, RecursionError):
                raise DataError(f"{path}: line {n} is not an answer line written by `spanqa answer/ask --input`; "
                                "choose another --output (or move this file away)") from None
            done.add(qid)
            good += len(raw)
    partial = good < path.stat().st_size
    if partial:
        os.truncate(path, good)
    return done, partial


# Characters some line readers (Python's str.splitlines among them) take as line breaks; json.dumps keeps
# them raw with ensure_ascii=False, so they are escaped to keep one answer per line for every reader.
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def _write_chunk(out, ids: list, preds: list, top_k: int) -> None:
    lines = [json.dumps({"id": qid, **p.to_dict(top_k)}, ensure_ascii=False).translate(_LINE_BREAKS) + "\n"
             for qid, p in zip(ids, preds, strict=True)]
    out.write("".join(lines))
    out.flush()
    os.fsync(out.fileno())


# ---- the run ------------------------------------------------------------------------------------------------
def answer_file(
    reader: Reader,
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    top_k: int = 1,
    chunk: int = 512,
    batch_size: int = 32,
    skip_invalid: bool = False,
    progress: bool = True,
) -> AnswerFileStats:
    """Answer every question of a JSONL file into another, resuming whatever a previous run wrote."""
    if batch_size < 1:
        raise DataError("chunk, batch_size and top_k must be at least 1")

    def answer(records: list[Record]) -> list:
        return reader.predict([r[1] for r in records], [r[2] for r in records], top_k=top_k, batch_size=batch_size)

    return stream_file(answer, input_path, output_path, FIELDS, top_k, chunk, skip_invalid, progress)


def stream_file(
    answer: Callable[[list[Record]], list],
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    fields: tuple[str, ...] = FIELDS,
    top_k: int = 1,
    chunk: int = 512,
    skip_invalid: bool = False,
    progress: bool = True,
) -> AnswerFileStats:
    """The streaming, resumable loop of `answer --input` and `ask --input`: `answer` turns a chunk of records
    (id, *fields) into results with `to_dict(top_k)`, written one JSON line each, in input order."""
    inp, outp = Path(input_path), Path(output_path)
    if chunk < 1 or top_k < 1:
        raise DataError("chunk, batch_size and top_k must be at least 1")
    if outp.exists() and inp.exists() and outp.resolve() == inp.resolve():
        raise DataError(f"{outp}: the output would overwrite the input; choose another --output")
    t0 = time.perf_counter()
    stats = AnswerFileStats()
    done, stats.recovered_partial_line = recover_output(outp)
    todo, skip = _scan(inp, done, skip_invalid, stats, fields)

    from tqdm.auto import tqdm

    outp.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=todo, unit="q", desc="answer", disable=not progress, dynamic_ncols=True, file=sys.stderr)
    with open(outp, "a", encoding="utf-8") as out:
        records: list[Record] = []

        def flush() -> None:
            _write_chunk(out, [r[0] for r in records], answer(records), top_k)
            stats.answered += len(records)
            bar.update(len(records))
            records.clear()

        for _, rec in _records(inp, skip, fields):
            if rec[0] in done:
                continue
            records.append(rec)
            if len(records) == chunk:
                flush()
        if records:
            flush()
    bar.close()
    stats.seconds = time.perf_counter() - t0
    return stats

"""Answer a large JSONL file of questions: streaming, bounded memory, resumable.

    spanqa answer --input questions.jsonl --output answers.jsonl
    spanqa ask --index DIR --input questions.jsonl --output answers.jsonl     (the same loop: `stream_file`)

Input lines are `{"id", "question", "context"}` (the Hugging Face layout works too: other fields such as
"answers" or "title" are ignored); `.gz` is read as gzip. Output lines are `{"id", "answers": [...],
"no_answer"}`, in input order.

Memory is bounded: records are read and answered `chunk` at a time, and only the ids are kept (to skip the
answered ones and catch duplicates); a line longer than `max_line_bytes` stops the run. Each chunk's lines are
appended, flushed and fsynced before the next chunk, so a killed run loses at most one chunk. Re-running the same
command resumes: ids already in the output are skipped, and a partial last line (the process was killed mid-write) is
cut off and its question answered again. A run that fails before its first chunk is on disk (a model that cannot
answer, an interrupt) takes back the output and log files it created: nothing answered, nothing left behind. A first
pass validates every line, so a bad line is reported (file, line, field) before any work, or, with `skip_invalid`,
counted and skipped; that pass also sizes the progress bar.

Resuming only ever continues spanqa's own output for the same questions. Next to `answers.jsonl`, spanqa keeps
`answers.jsonl.spanqa`: a header line, then `[id, fingerprint]` for every question it answers (written before the
answers), the fingerprint a hash of the question and the context. An existing output is resumed only if every line is
an answer line whose id has a fingerprint, and only if each answered id still holds the same question and context in
the input; anything else (a question file, another tool's JSONL, the input itself under another name, an input that
changed) is refused with one line, and nothing is written.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from spanqa.config import MAX_CONTEXT_BYTES
from spanqa.errors import DataError
from spanqa.reader import Reader
from spanqa.validation import (
    Invalid,
    check_counts,
    check_file,
    check_output,
    check_path,
    check_text,
    json_error,
    keep_created,
    note_created,
    outputs_taken_back,
)


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
Record = tuple  # (id, *fields): (id, question, context) for `answer`, (id, question) for `ask`
FIELDS = ("question", "context")


def fingerprint(*texts: str) -> str:
    """What an answer was computed from: a resumed run answers an id again only if this still matches."""
    h = hashlib.blake2b(digest_size=10)
    h.update(("".join(f"{len(t)}:{t}" for t in texts[:-1]) + texts[-1]).encode())
    return h.hexdigest()


def parse_line(raw: bytes, fields: tuple[str, ...] = FIELDS) -> Record | None:
    """One input line -> (id, *fields); None for a blank line; Invalid names the bad field."""
    try:
        line = raw.decode("utf-8").removeprefix("\ufeff")  # the BOM Windows tools write first: not part of the JSON
    except UnicodeDecodeError as e:
        raise Invalid("line", f"is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not line.strip():
        return None
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        whole = " (one JSON document over many lines? --input reads JSONL: one object a line)" \
            if line.strip() in ("{", "[") else ""
        raise Invalid("line", f"is not valid JSON ({json_error(e, line=False)}){whole}") from None
    except RecursionError:
        raise Invalid("line", "is nested too deeply") from None
    return check_record(rec, fields)


def check_record(rec, fields: tuple[str, ...] = FIELDS) -> Record:
    """A parsed record (a JSONL line, a Parquet row) -> (id, *fields); Invalid names the bad field."""
    if not isinstance(rec, dict):
        raise Invalid("line", f"must be a JSON object, got {type(rec).__name__}")
    qid = rec.get("id")
    if qid is None and "data" in rec:
        keys = ", ".join(f'"{k}"' for k in ("id", *fields))
        raise Invalid("id", f"is missing: this looks like SQuAD JSON, which `spanqa evaluate --data` reads; --input "
                            f"reads JSONL, one {{{keys}}} object a line")
    if qid is None:
        raise Invalid("id", "is missing")
    if isinstance(qid, bool) or not isinstance(qid, str | int):
        raise Invalid("id", f"must be a string or an integer, got {type(qid).__name__}")
    return (qid, *(check_text(rec.get(f), f) for f in fields))


def read_lines(f, label, limit: int, first: int = 1) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of every line of the open binary file `f`, numbered from `first`; a line over `limit`
    bytes (or an endless one) stops with a DataError naming `label`."""
    n = first - 1
    while raw := f.readline(limit + 1):
        n += 1
        if len(raw) > limit:
            raise DataError(f"{label}: line {n} is longer than {limit:,} bytes; raise --max-context-bytes to read it")
        yield n, raw


def _lines(path: Path, limit: int) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of every line of the file at `path` (`.gz`: gzip), checked by read_lines."""
    check_file(path, expect="a .jsonl file")
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            yield from read_lines(f, path, limit)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read: {e}") from None


def _records(path: Path, skip_lines: set[int], limit: int, fields: tuple[str, ...]) -> Iterator[tuple[int, Record]]:
    """The valid records, in order; `skip_lines` holds the invalid and duplicate ones the scan found."""
    for n, raw in _lines(path, limit):
        if n not in skip_lines:
            rec = parse_line(raw, fields)
            if rec is not None:
                yield n, rec


def bad_line(where: str, field_name: str, reason: str, skip_invalid: bool, invalid: Counter) -> None:
    """A bad input record (`where`: "file: line N"): a DataError naming it, or with `skip_invalid` a count in
    `invalid`, keyed by the field and the reason's first words."""
    if not skip_invalid:
        raise DataError(f"{where}: field '{field_name}' {reason} (use --skip-invalid to skip bad lines)")
    invalid[f"{field_name} {reason.split(' (')[0]}"] += 1


def _scan(path: Path, done: dict, skip_invalid: bool, stats: AnswerFileStats, limit: int,
          output: Path, fields: tuple[str, ...]) -> tuple[int, set[int]]:
    """Validate every line; return how many questions are left to answer and the lines to skip."""
    seen: set = set()
    skip: set[int] = set()
    todo = 0

    def bad(n: int, field_name: str, reason: str) -> None:
        bad_line(f"{path}: line {n}", field_name, reason, skip_invalid, stats.invalid)
        skip.add(n)

    for n, raw in _lines(path, limit):
        try:
            rec = parse_line(raw, fields)
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
        if qid not in done:
            todo += 1
        elif done[qid] == fingerprint(*rec[1:]):
            stats.already_done += 1
        else:
            raise DataError(f"{path}: line {n}: id {qid!r} was answered in {output} for another question or "
                            "context; the input changed since: choose another --output")
    return todo, skip


# ---- the output, its fingerprints, and resuming them --------------------------------------------------------
LOG_HEADER = {"spanqa": "answer fingerprints", "version": 1}


def log_path(output: Path) -> Path:
    """Where the fingerprints of `output`'s answers are kept."""
    return output.with_name(output.name + ".spanqa")


def check_paths(input_path: str | os.PathLike, output_path: str | os.PathLike) -> tuple[Path, Path, Path]:
    """(input, output, fingerprint log), checked before any work: the input exists, and neither file written is the
    input, however spelled. Paths of another type (None) are refused by their argument's name."""
    input_path, output_path = check_path(input_path, "input_path"), check_path(output_path, "output_path")
    inp = check_file(input_path, expect="a .jsonl file")
    if Path(output_path).suffix == ".gz":  # appended a chunk at a time and cut back on resume: plain text only
        raise DataError(f"--output {output_path}: answers are written as plain JSONL, not gzip; name it without .gz "
                        "(and compress it when the run is done)")
    outp = check_output(output_path, "--output", inputs=[inp])
    return inp, outp, check_output(log_path(outp), "--output", inputs=[inp])


def _complete_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of the complete lines of `path`; a partial last line (a kill mid-write) is cut off."""
    good = 0
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            if not raw.endswith(b"\n"):
                break
            yield n, raw
            good += len(raw)
    if good < path.stat().st_size:
        os.truncate(path, good)


def _read_log(path: Path, output: Path) -> dict:
    """id -> fingerprint, from spanqa's log next to `output` (later lines win)."""
    prints: dict = {}
    if not path.exists():
        return prints
    for n, raw in _complete_lines(path):
        try:
            rec = json.loads(raw)
            if n == 1 and rec != LOG_HEADER or n > 1 and not (isinstance(rec, list) and len(rec) == 2):
                raise ValueError
            if n > 1:
                prints[rec[0]] = rec[1]
        except (ValueError, TypeError, RecursionError):
            raise DataError(f"{path}: line {n} is not a fingerprint written by `spanqa answer --input` for "
                            f"{output}; choose another --output (or move both files away)") from None
    return prints


ANSWER_KEYS = {"id", "answers", "no_answer"}
OPTIONAL_KEYS = {"p_no_answer", "passages_read"}  # a calibrated model's; `ask`'s


def _is_answer_line(rec) -> bool:
    return (isinstance(rec, dict) and ANSWER_KEYS <= set(rec) <= ANSWER_KEYS | OPTIONAL_KEYS
            and isinstance(rec["answers"], list) and isinstance(rec["no_answer"], bool)
            and isinstance(rec["id"], str | int))


def recover_output(path: Path) -> tuple[dict, bool]:
    """The ids already answered in `path` with their fingerprints, after checking that every line is an answer
    spanqa wrote; a partial last line is cut off. Returns (id -> fingerprint, whether a partial line was cut)."""
    prints = _read_log(log_path(path), path)  # also when there are no answers yet: the log must be ours
    if not path.exists() or path.stat().st_size == 0:
        return {}, False
    size = path.stat().st_size
    done: dict = {}
    for n, raw in _complete_lines(path):
        try:
            rec = json.loads(raw)
        except (ValueError, RecursionError):
            rec = None
        if not _is_answer_line(rec) or rec["id"] not in prints:
            why = f" ({log_path(path).name} has no fingerprint for its id)" if _is_answer_line(rec) else ""
            raise DataError(f"{path}: line {n} is not an answer line written by `spanqa answer --input`{why}; "
                            "choose another --output (or move this file away)")
        done[rec["id"]] = prints[rec["id"]]
    return done, path.stat().st_size < size


# Characters some line readers (Python's str.splitlines among them) take as line breaks; json.dumps keeps
# them raw with ensure_ascii=False, so they are escaped to keep one answer per line for every reader.
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def answer_line(qid, pred, top_k: int) -> str:
    """One output line: `{"id", "answers", "no_answer"}` (+ `p_no_answer` when calibrated), newline-terminated."""
    return json.dumps({"id": qid, **pred.to_dict(top_k)}, ensure_ascii=False).translate(_LINE_BREAKS) + "\n"


def _append(f, lines: list[str]) -> None:
    f.write("".join(lines))
    f.flush()
    os.fsync(f.fileno())


def _write_chunk(out, log, ids: list, prints: list[str], preds: list, top_k: int) -> None:
    """The chunk's fingerprints, then its answers: an answer on disk always has its fingerprint."""
    _append(log, [json.dumps([qid, fp], ensure_ascii=False).translate(_LINE_BREAKS) + "\n"
                  for qid, fp in zip(ids, prints, strict=True)])
    _append(out, [answer_line(qid, p, top_k) for qid, p in zip(ids, preds, strict=True)])


# ---- the run ------------------------------------------------------------------------------------------------
@dataclass
class Plan:
    """What `plan` found before any work: the checked paths, the answers already written, the lines to skip."""

    input: Path
    output: Path
    log: Path
    done: dict  # id -> fingerprint of the answers already in the output
    skip: set[int]  # invalid and duplicate lines
    todo: int
    max_line_bytes: int
    stats: AnswerFileStats
    started: float
    fields: tuple[str, ...] = FIELDS


def plan(input_path: str | os.PathLike, output_path: str | os.PathLike, skip_invalid: bool = False,
         max_line_bytes: int = MAX_CONTEXT_BYTES, fields: tuple[str, ...] = FIELDS) -> Plan:
    """Everything before the first answer, and before a model loads: the paths checked, the output recovered (and
    refused if it is not spanqa's answers to these questions), every input line validated."""
    started = time.perf_counter()
    inp, outp, logp = check_paths(input_path, output_path)
    stats = AnswerFileStats()
    done, stats.recovered_partial_line = recover_output(outp)
    todo, skip = _scan(inp, done, skip_invalid, stats, max_line_bytes, outp, fields)
    return Plan(inp, outp, logp, done, skip, todo, max_line_bytes, stats, started, fields)


def run_plan(answer: Callable[[list[Record]], list], p: Plan, top_k: int = 1, chunk: int = 512,
             progress: bool = True) -> AnswerFileStats:
    """Answer what `p` left to do, `chunk` records at a time (`answer` turns records into results with
    `to_dict(top_k)`), each chunk's fingerprints and answers on disk before the next."""
    chunk, top_k = check_counts(chunk=chunk, top_k=top_k)
    from tqdm.auto import tqdm

    stats = p.stats
    bar = tqdm(total=p.todo, unit="q", desc="answer", disable=not progress, dynamic_ncols=True, file=sys.stderr)
    for f in (p.output, p.log):  # new files are taken back if the run fails before its first chunk is on disk
        if not f.exists():
            note_created(f)
    with open(p.output, "a", encoding="utf-8") as out, open(p.log, "a", encoding="utf-8") as log:
        if log.tell() == 0:
            _append(log, [json.dumps(LOG_HEADER) + "\n"])
        records: list[Record] = []

        def flush() -> None:
            _write_chunk(out, log, [r[0] for r in records], [fingerprint(*r[1:]) for r in records], answer(records),
                         top_k)
            keep_created(p.output, p.log)  # answers on disk: the output stays, to be resumed
            stats.answered += len(records)
            bar.update(len(records))
            records.clear()

        for _, rec in _records(p.input, p.skip, p.max_line_bytes, p.fields):
            if rec[0] in p.done:
                continue
            records.append(rec)
            if len(records) == chunk:
                flush()
        if records:
            flush()
    bar.close()
    stats.seconds = time.perf_counter() - p.started
    return stats


def run(reader: Reader, p: Plan, top_k: int = 1, chunk: int = 512, batch_size: int = 32,
        progress: bool = True) -> AnswerFileStats:
    """`run_plan` with the reader answering (question, context) records."""
    (batch_size,) = check_counts(batch_size=batch_size)

    def answer(records: list[Record]) -> list:
        return reader.predict([r[1] for r in records], [r[2] for r in records], top_k=top_k, batch_size=batch_size)

    return run_plan(answer, p, top_k, chunk, progress)


@outputs_taken_back()
def stream_file(answer: Callable[[list[Record]], list], input_path: str | os.PathLike,
                output_path: str | os.PathLike, fields: tuple[str, ...] = FIELDS, top_k: int = 1, chunk: int = 512,
                skip_invalid: bool = False, progress: bool = True,
                max_line_bytes: int = MAX_CONTEXT_BYTES) -> AnswerFileStats:
    """The streaming, resumable loop over any JSONL of (id, *fields) records (used by `ask --input`)."""
    return run_plan(answer, plan(input_path, output_path, skip_invalid, max_line_bytes, fields), top_k, chunk,
                    progress)


@outputs_taken_back()
def answer_file(reader: Reader, input_path: str | os.PathLike, output_path: str | os.PathLike, top_k: int = 1,
                chunk: int = 512, batch_size: int = 32, skip_invalid: bool = False, progress: bool = True,
                max_line_bytes: int = MAX_CONTEXT_BYTES) -> AnswerFileStats:
    """Answer every question of a JSONL file into another, resuming whatever a previous run wrote."""
    top_k, chunk, batch_size = check_counts(top_k=top_k, chunk=chunk, batch_size=batch_size)
    return run(reader, plan(input_path, output_path, skip_invalid, max_line_bytes), top_k, chunk, batch_size,
               progress)

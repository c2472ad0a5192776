"""Checks of user text, input files and output paths, shared by data loading, the reader, the API, the CLI and
batch answering.

A bad field raises `Invalid(field, reason)`; each caller says where it was (file and line, record id, request item)
in its own one-line error, so the same input gets the same words everywhere. Files are read with a stated size limit
(an endless input such as /dev/zero stops with a message, not out of memory), and every path a command writes goes
through `check_output` before any work, so an output never overwrites an input, however the two are spelled; the
directories made for it, and the files the work created (written whole or not at all: `atomic_file`), are taken back
if the work then fails (`outputs_taken_back`).
"""

from __future__ import annotations

import gzip
import io
import numbers
import os
import shutil
import unicodedata
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from spanqa.errors import DataError


class Invalid(Exception):
    """A field that cannot be used: `kind` is missing, type, empty, too_long or unicode."""

    def __init__(self, field_name: str, reason: str, kind: str = "invalid"):
        super().__init__(f"{field_name} {reason}")
        self.field_name, self.reason, self.kind = field_name, reason, kind


# Characters that show nothing to a reader: whitespace, control and format characters (zero-width spaces and
# joiners, the BOM, bidi marks), separators, and combining marks with nothing to combine with.
INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zs", "Zl", "Zp", "Mn", "Me"})
MAX_DATA_BYTES = 2**30  # a whole data file (SQuAD JSON or JSONL) read into memory


def is_visible(text: str) -> bool:
    """True when `text` holds at least one character a reader sees (tokenizers drop the others)."""
    return any(not ch.isspace() and unicodedata.category(ch) not in INVISIBLE_CATEGORIES for ch in text)


def is_unicode(text: str) -> bool:
    """False for strings with lone surrogates, which JSON escapes can produce and tokenizers reject."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_text(value: Any, name: str, allow_empty: bool = False, limit: int | None = None,
               record: bool = True) -> str:
    """`value` if it is a usable text (a string with a visible character, valid Unicode, at most `limit` characters).

    `record`: the value comes from a record, where None means the field is missing (elsewhere it is a wrong type).
    """
    if value is None and record:
        raise Invalid(name, "is missing", "missing")
    if not isinstance(value, str):
        raise Invalid(name, f"must be a string, got {type(value).__name__}", "type")
    if not allow_empty and not value.strip():
        raise Invalid(name, "is empty", "empty")
    if limit is not None and len(value) > limit:
        raise Invalid(name, f"has {len(value)} characters, above the limit of {limit}", "too_long")
    if not is_unicode(value):
        raise Invalid(name, "is not valid Unicode (it holds a lone surrogate, e.g. a JSON \\udc80 escape)", "unicode")
    if not allow_empty and not is_visible(value):
        raise Invalid(name, "is empty to a reader (only invisible characters: zero-width, control or format "
                            "characters, combining marks)", "empty")
    return value


def check_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(name, f"must be an integer, got {type(value).__name__}", "type")
    return value


def check_counts(error: type[Exception] = DataError, **counts: Any) -> tuple[int, ...]:
    """The counts (top_k, batch_size, chunk, passages) as plain ints, in the order given; one that is not an integer
    of at least 1 is refused by name: a wrong type would otherwise be a TypeError from a comparison, far from the call
    that passed it. Any integral number is a count (numpy's too, as an array's max or an element gives), and is
    returned as an int, which JSON, range() and slicing all take; bool is not a count."""
    checked = []
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise error(f"{name} must be an integer of at least 1, got {value!r}")
        checked.append(int(value))
    return tuple(checked)


def json_error(e, line: bool = True) -> str:
    """A json.JSONDecodeError in words: 'Unterminated string starting at line 1, column 46' (its message may end in
    'at' already); `line=False` for the one line of a JSONL record: '... at column 46'."""
    where = f"line {e.lineno}, column {e.colno}" if line else f"column {e.colno}"
    return f"{e.msg} {where}" if e.msg.endswith(" at") else f"{e.msg} at {where}"


# ---- input files ------------------------------------------------------------------------------------------------
def check_path(value: Any, name: str) -> Path:
    """`value` as a Path, if it is one (a str, or an os.PathLike that gives a str); anything else, None above all, is
    refused by `name` (the argument), where Path() would raise Python's own TypeError naming nothing."""
    if isinstance(value, str | os.PathLike):
        try:
            return Path(value)
        except TypeError:  # an os.PathLike that gives bytes
            pass
    raise DataError(f"{name} must be a path (a str or os.PathLike), got {type(value).__name__}")


def check_file(path: str | Path, what: str = "file", expect: str = "a text file") -> Path:
    """`path` if it is an existing file, or a DataError naming it."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: {what} not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected {expect}")
    return path


def read_at_most(f, limit: int) -> bytes | None:
    """At most `limit` bytes of the binary file object `f`, read in blocks; None if it holds more."""
    chunks, size = [], 0
    while block := f.read(min(1 << 20, limit + 1 - size)):
        chunks.append(block)
        size += len(block)
        if size > limit:
            return None
    return b"".join(chunks)


def open_text(path: str | Path, what: str = "file", expect: str = "a text file", newlines: bool = False,
              limit: int = MAX_DATA_BYTES, limit_flag: str | None = None) -> str:
    """A whole UTF-8 file (`.gz`: gzip) of at most `limit` bytes (after decompression) as text, or a DataError naming
    the file (and `limit_flag`, the flag that raises the limit).

    As stored by default, so character offsets index the file; `newlines=True` reads \\r\\n and \\r as \\n.
    """
    path = check_file(path, what, expect)
    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
            raw = read_at_most(f, limit)
        if raw is None:
            hint = f"; raise {limit_flag} to read it" if limit_flag else ""
            raise DataError(f"{path}: {what} is larger than the limit of {limit:,} bytes{hint}")
        if newlines:
            return io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8").read()
        return raw.decode("utf-8")
    except (OSError, EOFError, zlib.error) as e:  # zlib.error: damaged gzip data
        raise DataError(f"{path}: cannot read: {e}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


# ---- outputs ----------------------------------------------------------------------------------------------------
def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two spellings name one file: resolved paths (`..`, symbolic links) or one inode (hard links)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): then they are not one file
        return False


def missing_dirs(d: Path) -> list[Path]:
    """`d` and those of its parents that do not exist, deepest first: what making `d` creates."""
    return [p for p in (d, *d.parents) if not p.exists() and p.name not in ("", ".", "..")]


def _make_dirs(d: Path, where: str) -> list[Path]:
    """Make `d` and its missing parents; return the ones made, deepest first (to take back on a refusal)."""
    missing = missing_dirs(d)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        blocking = next((p for p in (*reversed(d.parents), d) if p.exists() and not p.is_dir()), None)
        if blocking == d:
            raise DataError(f"{where}: {'is a file' if where.endswith(str(d)) else f'{d} is a file'}, expected a "
                            "directory") from None
        if blocking is not None:
            raise DataError(f"{where}: {blocking} is a file, not a directory") from None
        raise DataError(f"{where}: cannot create the directory {d} ({e.strerror or e})") from None
    return missing


def _remove_made(made: Iterable[Path]) -> None:
    """Take back directories made for an output, deepest first; one that is not empty stays."""
    for p in made:
        try:
            p.rmdir()
        except OSError:
            pass


def _refuse(made: list[Path], message: str) -> DataError:
    """The error for a refused output, after removing the directories check_output made for it."""
    _remove_made(made)
    return DataError(message)


# what was made for outputs inside the innermost `outputs_taken_back`, in the order it was made: (path, is a file)
_made_for_outputs: ContextVar[list[tuple[Path, bool]] | None] = ContextVar("spanqa_made_for_outputs", default=None)


def note_made(made: list[Path]) -> None:
    """Hand directories made for an output (deepest first) to the enclosing `outputs_taken_back`, if any."""
    taken = _made_for_outputs.get()
    if taken is not None:
        taken.extend((p, False) for p in reversed(made))


def note_created(path: Path) -> None:
    """Hand a file this run creates (there was none at `path`) to the enclosing `outputs_taken_back`, if any."""
    taken = _made_for_outputs.get()
    if taken is not None:
        taken.append((Path(path), True))


def keep_created(*paths: Path) -> None:
    """Files handed to `note_created` that now stay if the work fails: a resumable output holding answers."""
    taken = _made_for_outputs.get()
    if taken is not None:
        taken[:] = [(p, is_file) for p, is_file in taken if not (is_file and p in paths)]


def _take_back(made: Iterable[tuple[Path, bool]]) -> None:
    """Remove the files created and the directories made (the ones still empty), in the order given."""
    for p, is_file in made:
        if not is_file:
            _remove_made([p])
        elif not p.is_dir():
            try:
                p.unlink(missing_ok=True)
            except OSError:
                pass


@contextmanager
def outputs_taken_back() -> Iterator[None]:
    """Outputs are checked, and their directories made, before the work, so a run is never lost to an output that
    cannot be written; if the work in this `with` then fails (a model not found, a bad record, an interrupt), what
    was made for its outputs is taken back, newest first: the files it created (`atomic_file`, `note_created`),
    then the directories still empty. A failed command leaves no new file or directory behind; files that were there
    before are left as found, and so is what the work chose to keep (`keep_created`: a resumable run's output; a
    training's checkpoints, never noted)."""
    made: list[tuple[Path, bool]] = []
    token = _made_for_outputs.set(made)
    try:
        yield
    except BaseException:
        _take_back(reversed(made))
        raise
    finally:
        _made_for_outputs.reset(token)
    outer = _made_for_outputs.get()
    if outer is not None:  # a failure after the inner work succeeded takes them back too
        outer.extend(made)


@contextmanager
def atomic_file(path: str | Path, what: str = "", keep: bool = False) -> Iterator[Path]:
    """A temporary path beside `path` (the same suffix, for writers that go by it) for the `with` to write; renamed
    to `path` when the `with` ends, removed if it fails: `path` holds the file it held or the whole new one, never
    half of one. An OSError is a DataError naming `path` (`what`: the file in words). A file new at `path` is taken
    back if the work of the enclosing `outputs_taken_back` then fails, unless `keep` (a cache for a resumed run)."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    new = not os.path.lexists(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        _take_back([(tmp, True)])
        if isinstance(e, OSError):
            raise DataError(f"{path}: cannot write{' ' + what if what else ''} ({e.strerror or e})") from None
        raise
    if new and not keep:
        note_created(path)


def write_atomic(path: str | Path, data: str | bytes, what: str = "") -> Path:
    """`data` (a str as UTF-8) into the file `path`, by `atomic_file`."""
    with atomic_file(path, what) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def check_output(path: str | Path, name: str = "", inputs: Iterable[str | Path | None] = (),
                 directory: bool = False, writes: Iterable[str] = ()) -> Path:
    """`path`, ready to be written before any work starts, or a DataError naming it (and `name`, its flag).

    Missing parent directories are made (with `directory`, the directory itself), and taken back if the work fails
    inside `outputs_taken_back`; a directory where a file goes, or the reverse, is refused, as is a path spanqa may
    not write. No file written may be one of `inputs`, however the two are spelled: compared after the directories
    exist, by resolved path and by inode (`..` segments, symbolic and hard links). `writes` names the files a
    directory output receives; a directory at one of their names is refused too.
    """
    path = Path(path)
    where = f"{name} {path}" if name else str(path)
    made = _make_dirs(path if directory else path.parent, where)
    if directory and not path.is_dir():
        raise _refuse(made, f"{where}: is a file, expected a directory")
    if not directory and path.is_dir():
        raise _refuse(made, f"{where}: is a directory, expected a file")
    if not os.access(path if path.exists() else path.parent, os.W_OK):
        raise _refuse(made, f"{where}: not writable (permission denied)")
    targets = [path, *(path / w for w in writes)] if directory else [path]
    for t in (t for t in targets[1:] if t.is_dir()):  # found before the work, not when its results are renamed
        raise _refuse(made, f"{where}: holds a directory {t.name} where a file is written; move it away or choose "
                            f"another {name or 'output'}")
    for inp in (i for i in inputs if i is not None and Path(i).exists()):
        for t in (t for t in targets if same_file(t, inp)):
            what = "is the input" if t == path else f"holds the input as {t.name}"
            shown = "" if str(t) == str(inp) else f" {inp}, spelled another way"
            raise _refuse(made, f"{where}: {what}{shown}; writing it would overwrite the input: choose another "
                                f"{name or 'output'}")
    note_made(made)
    return path


@contextmanager
def export_dir(path: str | Path, name: str, inputs: Iterable[str | Path | None] = ()) -> Iterator[Path]:
    """An export's directory (a model written whole: `export`, `calibrate`), checked before the work like
    check_output, and empty: files written over another model's would leave a folder that loads as a mix of two. If
    the work in the `with` fails (a model not found, an export that breaks off), the directory is left as it was
    found, so a failed export leaves neither half-written files nor a new empty directory: what was written in it is
    removed, and so is the directory, with the parents made for it, unless it was there before."""
    with outputs_taken_back():
        path = check_output(path, name, inputs, directory=True)
        held = sorted(p.name for p in path.iterdir())
        if held:
            shown = ", ".join(held[:4]) + (f" and {len(held) - 4} more" if len(held) > 4 else "")
            raise DataError(f"{name} {path}: already holds files ({shown}); export into a new or empty directory")
        try:
            yield path
        except BaseException:
            for p in path.iterdir():
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
            raise


def umask_mode(paths: Iterable[str | Path]) -> None:
    """Give files (and directories) spanqa wrote the mode the umask gives new ones (0644 and 0755 under umask 022).

    safetensors writes its files 0600, which would hide a model directory from the other users it is shared with.
    """
    mask = os.umask(0)
    os.umask(mask)
    for p in paths:
        p = Path(p)
        p.chmod((0o777 if p.is_dir() else 0o666) & ~mask)

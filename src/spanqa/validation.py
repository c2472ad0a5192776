"""Checks of user text and files, shared by data loading, the reader, the API, the CLI and batch answering.

A bad field raises `Invalid(field, reason)`; each caller says where it was (file and line, record id, request item)
in its own one-line error, so the same input gets the same words everywhere.
"""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path
from typing import Any

from spanqa.errors import DataError


class Invalid(Exception):
    """A field that cannot be used: `kind` is missing, type, empty, too_long or unicode."""

    def __init__(self, field_name: str, reason: str, kind: str = "invalid"):
        super().__init__(f"{field_name} {reason}")
        self.field_name, self.reason, self.kind = field_name, reason, kind


def is_unicode(text: str) -> bool:
    """False for strings with lone surrogates, which JSON escapes can produce and tokenizers reject."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_text(value: Any, name: str, allow_empty: bool = False, limit: int | None = None,
               record: bool = True) -> str:
    """`value` if it is a usable text (a string, not blank, valid Unicode, at most `limit` characters).

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
    return value


def check_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(name, f"must be an integer, got {type(value).__name__}", "type")
    return value


def check_file(path: str | Path, what: str = "file", expect: str = "a text file") -> Path:
    """`path` if it is an existing file, or a DataError naming it."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: {what} not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected {expect}")
    return path


def open_text(path: str | Path, what: str = "file", expect: str = "a text file", newlines: bool = False) -> str:
    """A whole UTF-8 file (`.gz`: gzip) as text, or a DataError naming the file.

    As stored by default, so character offsets index the file; `newlines=True` reads \\r\\n and \\r as \\n.
    """
    path = check_file(path, what, expect)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        if newlines:
            return io.TextIOWrapper(io.BytesIO(raw), encoding="utf-8").read()
        return raw.decode("utf-8")
    except (OSError, EOFError, zlib.error) as e:  # zlib.error: damaged gzip data
        raise DataError(f"{path}: cannot read: {e}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None

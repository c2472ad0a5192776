"""Sources → documents: the text a collection is built from, each document's text exactly as answers will index it.

    folder/            every file below it with a known suffix (hidden files and folders, pipes, sockets and dangling
                       links skipped), in sorted order
    *.txt, *.md        one document: the file's UTF-8 text as stored (no newline translation: CRLF stays CRLF)
    *.jsonl            one document per line: {"id"?, "text", "title"?} (id defaults to FILE:LINE)
    *.json             SQuAD JSON: one document per paragraph, id "TITLE#N" (the paragraph's index in its article)
    *.pdf              one document per page with text (id "FILE#page=N"); needs the `documents` extra (pypdf)
    *.html, *.htm      one document: the visible text (scripts, styles and markup dropped, blocks on their own
                       lines); needs the `documents` extra (beautifulsoup4)
    (.gz of the text formats is read as gzip)

A document's character offsets are offsets into `Document.text`: for .txt/.md/.jsonl/.json that is the stored text
itself; for PDF and HTML it is the extracted text, which the index keeps. Every problem (a missing or empty source,
a non-UTF-8 file, a PDF that cannot be read) is one DataError naming the file and, for records, the line.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from spanqa.errors import DataError
from spanqa.validation import Invalid, check_text, open_text

TEXT_SUFFIXES = (".txt", ".md")
SUFFIXES = (*TEXT_SUFFIXES, ".jsonl", ".json", ".pdf", ".html", ".htm")
EXTRA_HINT = "pip install 'spanqa[documents]'"


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    source: str  # the file it came from, as given or found in a given folder
    title: str = ""
    page: int | None = None  # PDF page number, from 1


@dataclass(frozen=True)
class SourceFile:
    path: Path
    kind: str  # text, jsonl, squad, pdf, html

    def fingerprint(self) -> str:
        """sha256 of the file's bytes: what decides whether a re-run may reuse this file's documents."""
        h = hashlib.sha256()
        try:
            with open(self.path, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
        except OSError as e:  # a file that cannot be opened (permissions)
            raise DataError(f"{self.path}: cannot read: {e.strerror or e}") from None
        return h.hexdigest()


def kind_of(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix == ".gz":
        suffix = Path(path.stem).suffix.lower()
        if suffix in (".pdf", ".html", ".htm"):
            return None
    return {".txt": "text", ".md": "text", ".jsonl": "jsonl", ".json": "squad", ".pdf": "pdf", ".html": "html",
            ".htm": "html"}.get(suffix)


def find_sources(sources: list[str | os.PathLike], index: Path | None = None) -> list[SourceFile]:
    """The files that `sources` name (folders walked), each once, in the order given; DataError for a bad one.
    `index`: the folder the index goes to, never read as a source (it may lie inside a source folder)."""
    if not sources:
        raise DataError("no sources given: name files or folders to index")
    skip = index.resolve() if index is not None else None
    found: dict[Path, SourceFile] = {}
    for src in sources:
        path = Path(src)
        if not path.exists():
            link = " (a symbolic link to nothing, or a loop of links)" if path.is_symlink() else ""
            raise DataError(f"{path}: source not found{link}")
        if skip is not None and path.resolve().is_relative_to(skip):
            where = "the index folder" if path.resolve() == skip else f"in the index folder {index}"
            raise DataError(f"{path}: is {where} (--out); name the documents, not the index")
        if path.is_dir():
            files = [f for f in _walk(path, skip) if kind_of(f)]
            if not files:
                raise DataError(f"{path}: folder holds no file to index (looked for {', '.join(SUFFIXES)})")
        elif kind_of(path) is None:
            raise DataError(f"{path}: cannot index this kind of file (expected one of {', '.join(SUFFIXES)})")
        elif not path.is_file():
            raise DataError(f"{path}: not a regular file (a pipe, socket or device); copy its text to a file")
        else:
            files = [path]
        for f in files:
            found.setdefault(f.resolve(), SourceFile(f, kind_of(f)))
    return list(found.values())


def _walk(folder: Path, skip: Path | None) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and Path(root, d).resolve() != skip)
        for name in sorted(files):
            # not pipes, sockets or dangling links: reading them would block or fail
            if not name.startswith(".") and os.path.isfile(os.path.join(root, name)):
                yield Path(root) / name


def read_source(src: SourceFile) -> list[Document]:
    """The documents of one source file; DataError (naming the file) if it is unreadable or holds no text."""
    reader = {"text": _read_text, "jsonl": _read_jsonl, "squad": _read_squad, "pdf": _read_pdf,
              "html": _read_html}[src.kind]
    docs = reader(src.path)
    if not docs:
        raise DataError(f"{src.path}: no text to index (the file is empty)")
    return docs


def _read_text(path: Path) -> list[Document]:
    text = open_text(path, what="source file")
    return [Document(str(path), text, str(path))] if text.strip() else []


def _read_jsonl(path: Path) -> list[Document]:
    docs = []
    for n, line in enumerate(open_text(path, what="source file").split("\n"), start=1):  # not splitlines: JSON
        # strings may hold U+2028 and other characters that str.splitlines takes for line breaks
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
            raise DataError(f"{path}: line {n}: not valid JSON ({getattr(e, 'msg', 'nested too deeply')})") from None
        if not isinstance(rec, dict):
            raise DataError(f"{path}: line {n}: expected a JSON object with a 'text' field, got {type(rec).__name__}")
        try:
            text = check_text(rec.get("text"), "text")
            doc_id = rec.get("id", f"{path}:{n}")
            if isinstance(doc_id, bool) or not isinstance(doc_id, str | int):
                raise Invalid("id", f"must be a string or an integer, got {type(doc_id).__name__}")
            title = check_text(rec.get("title") or "", "title", allow_empty=True)
        except Invalid as e:
            raise DataError(f"{path}: line {n}: field '{e.field_name}' {e.reason}") from None
        docs.append(Document(str(doc_id), text, str(path), title))
    return docs


def _read_squad(path: Path) -> list[Document]:
    try:
        data = json.loads(open_text(path, what="source file"))["data"]
        articles = [(a.get("title", ""), a["paragraphs"]) for a in data]
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    except (KeyError, TypeError, AttributeError):
        raise DataError(f"{path}: not SQuAD JSON (expected {{\"data\": [{{\"title\", \"paragraphs\": [...]}}]}}; "
                        "documents one per line go in a .jsonl file)") from None
    docs = []
    for title, paragraphs in articles:
        for i, p in enumerate(paragraphs):
            try:
                text = check_text(p.get("context") if isinstance(p, dict) else None, "context")
            except Invalid as e:
                raise DataError(f"{path}: article {title!r} paragraph {i}: {e}") from None
            docs.append(Document(f"{title}#{i}", text, str(path), str(title)))
    return docs


def _read_pdf(path: Path) -> list[Document]:
    try:
        from pypdf import PdfReader
    except ImportError:
        raise DataError(f"{path}: reading PDF needs pypdf: {EXTRA_HINT}") from None
    try:
        reader = PdfReader(path)
        if reader.is_encrypted:
            raise DataError(f"{path}: the PDF is encrypted; decrypt it first")
        pages = [page.extract_text() or "" for page in reader.pages]
    except DataError:
        raise
    except Exception as e:  # pypdf raises many kinds on damaged files: every one means "cannot read this PDF"
        raise DataError(f"{path}: cannot read the PDF ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    docs = [Document(f"{path}#page={n}", text, str(path), page=n) for n, text in enumerate(pages, start=1)
            if text.strip()]
    if not docs and pages:
        raise DataError(f"{path}: the PDF has no extractable text (scanned pages? spanqa does no OCR)")
    return docs


_BLOCKS = frozenset("address article aside blockquote br dd div dl dt figcaption figure footer form h1 h2 h3 h4 h5 "
                    "h6 header hr li main nav ol p pre section table td th tr ul".split())
_HIDDEN = frozenset("script style noscript template head title iframe object svg".split())


def html_text(markup: str) -> tuple[str, str]:
    """The visible text of an HTML page (inline runs joined, a blank line between blocks) and its <title>."""
    from bs4 import BeautifulSoup, NavigableString, Tag

    soup = BeautifulSoup(markup, "html.parser")
    parts: list[str] = []
    stack: list = [soup]
    while stack:  # depth first, without recursion: any nesting depth
        node = stack.pop()
        if node is None:  # the end of a block element
            parts.append("\n\n")
        elif type(node) is NavigableString:  # text; not comments, doctypes, CDATA or scripts
            parts.append(str(node))
        elif isinstance(node, Tag) and node.name not in _HIDDEN:
            if node.name in _BLOCKS:
                parts.append("\n\n")
                stack.append(None)
            stack.extend(reversed(node.contents))
    blocks = (" ".join(b.split()) for b in "".join(parts).split("\n\n"))
    title = " ".join(soup.title.get_text().split()) if soup.title else ""
    return "\n\n".join(b for b in blocks if b), title


def _read_html(path: Path) -> list[Document]:
    try:
        import bs4  # noqa: F401
    except ImportError:
        raise DataError(f"{path}: reading HTML needs beautifulsoup4: {EXTRA_HINT}") from None
    text, title = html_text(open_text(path, what="source file"))
    return [Document(str(path), text, str(path), title)] if text.strip() else []

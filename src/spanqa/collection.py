"""A collection: documents cut into passages with exact character offsets, and a BM25 index over the passages.

    Collection.build(["docs/", "faq.jsonl"], "my-index")     # or `spanqa index docs/ faq.jsonl --out my-index`
    Collection.load("my-index").search("Who wrote it?", k=10)  # [(passage, BM25 score), ...] best first

**Passages.** A document is split at blank lines into paragraphs; a paragraph longer than `passage_words` words into
sentences; a sentence longer than that into runs of words (overlapping by `overlap_words`). These units are packed
in order into passages of at most `passage_words` words; when a cut falls inside a paragraph, the next passage
repeats the last sentences (up to `overlap_words` words) of the one before, so an answer near a cut is read with its
context. A passage is a pair of offsets into its document's text, never a copy: `document_text[start:end]` *is* the
passage, whatever the text holds (CRLF, tabs, any Unicode, lines of any length).

**Retrieval.** BM25 (`bm25s`, Lucene's variant, k1 = 0.9, b = 0.4: Anserini's defaults) over terms: runs of Unicode
letters and digits, NFKC-normalised and lower-cased, one-character words ("5", "x", "é") kept, each reduced to its
Snowball stem (`stemmer`, PyStemmer; "none" keeps the words). A document's title (underscores read as spaces) counts
as terms of each of its passages (`title_words`), for retrieval only: the reader reads the passage. On 2,000 seeded
SQuAD *training* questions over the 20,963 train + dev paragraphs, the gold paragraph is in the top 1 / 10 for 65.5 /
87.6 % of questions with exact words and k1 = 1.5, b = 0.75, and 70.7 / 90.3 % with stems, titles and these k1, b.

**On disk** (DIR): `index.json` (format version, settings, the sources with their sha256), `documents.jsonl` (id,
source, title, page), `text.bin` (the documents' UTF-8 text, back to back), `passages.npy` (document, character and
byte offsets per passage) and `bm25/` (bm25s's arrays). Loading memory-maps the arrays and the text, so a loaded
index costs little memory and reads a passage's text straight from the file. An index is written to a temporary
folder beside DIR and renamed into place: a failed build leaves nothing half-written. Building again over the same
DIR reuses the documents of source files whose bytes did not change, and says whether it built, updated or rebuilt.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from spanqa.config import IndexConfig
from spanqa.documents import Document, SourceFile, find_sources, read_source
from spanqa.errors import DataError
from spanqa.validation import check_path, missing_dirs, note_made, outputs_taken_back

FORMAT, VERSION = "spanqa-index", 2  # 2: stems and title terms
MANIFEST = "index.json"
_WORD = re.compile(r"\w+")
_PARAGRAPH_BREAK = re.compile(r"(?:\r\n|\r|\n)(?:[^\S\r\n]*(?:\r\n|\r|\n))+")  # a line break, then a blank line
_SENTENCE_END = re.compile(r"[.!?\u2026\u3002\uff01\uff1f]+[\"'\u201d\u2019)\]]*\s+")


def words(text: str) -> list[str]:
    """Runs of letters and digits, NFKC-normalised and lower-cased."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).lower())


class Terms:
    """The BM25 tokenizer, for passages and questions alike: words, stemmed unless `stemmer` is "none"."""

    def __init__(self, stemmer: str):
        if stemmer == "none":
            self._stem = None
        else:
            import Stemmer

            self._stem = Stemmer.Stemmer(stemmer).stemWords

    def __call__(self, text: str) -> list[str]:
        w = words(text)
        return self._stem(w) if self._stem is not None else w


# ---- passages --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Unit:
    start: int
    end: int
    words: int
    opens_paragraph: bool


def _stripped(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _split(text: str, start: int, end: int, boundary: re.Pattern) -> list[tuple[int, int]]:
    """The non-blank pieces of text[start:end] between matches of `boundary`, whitespace trimmed."""
    pieces, at = [], start
    for m in boundary.finditer(text, start, end):
        pieces.append(_stripped(text, at, m.end() if boundary is _SENTENCE_END else m.start()))
        at = m.end()
    pieces.append(_stripped(text, at, end))
    return [(s, e) for s, e in pieces if s < e]


def _units(text: str, max_words: int, overlap: int) -> list[_Unit]:
    """Paragraphs that fit, else their sentences, else overlapping runs of words; each with its word count."""
    units = []
    for p0, p1 in _split(text, 0, len(text), _PARAGRAPH_BREAK):
        first = True
        n = len(_WORD.findall(text, p0, p1))
        pieces = [(p0, p1, n)] if n <= max_words else \
            [(s, e, len(_WORD.findall(text, s, e))) for s, e in _split(text, p0, p1, _SENTENCE_END)]
        for s, e, n in pieces:
            if n <= max_words:
                units.append(_Unit(s, e, n, first))
            else:  # a sentence too long for one passage (a very long line, a table): runs of words
                spans = [m.span() for m in _WORD.finditer(text, s, e)]
                step = max_words - overlap
                for i in range(0, len(spans) - overlap, step):
                    run = spans[i : i + max_words]
                    units.append(_Unit(s if i == 0 else run[0][0], e if i + max_words >= len(spans) else run[-1][1],
                                       len(run), first))
                    first = False
            first = False
    return [u for u in units if u.words > 0]


def cut_passages(text: str, max_words: int = 200, overlap: int = 40) -> list[tuple[int, int]]:
    """(start, end) character offsets of the passages of `text`, in order (see the module's docstring)."""
    out: list[tuple[int, int]] = []
    cur: list[_Unit] = []
    n = 0
    for u in _units(text, max_words, overlap):
        if cur and n + u.words > max_words:
            out.append((cur[0].start, cur[-1].end))
            keep: list[_Unit] = []
            if not u.opens_paragraph:  # cut inside a paragraph: repeat the last sentences of the passage
                for v in reversed(cur[1:]):
                    if sum(k.words for k in keep) + v.words > overlap or v.end > u.start:
                        break
                    keep.insert(0, v)
            cur = keep if sum(k.words for k in keep) + u.words <= max_words else []
            n = sum(k.words for k in cur)
        cur.append(u)
        n += u.words
    if cur:
        out.append((cur[0].start, cur[-1].end))
    return out


def _byte_offsets(text: str, positions: list[int]) -> dict[int, int]:
    """Character offset -> UTF-8 byte offset, for the given positions (one pass over the text)."""
    if text.isascii():
        return {p: p for p in positions}
    out, at, nbytes = {}, 0, 0
    for p in sorted(set(positions)):
        nbytes += len(text[at:p].encode("utf-8"))
        out[p], at = nbytes, p
    return out


# ---- building ---------------------------------------------------------------------------------------------------
@dataclass
class BuildReport:
    """What `build` did: built (no index there), rebuilt (another version or other settings), updated (some
    sources changed) or unchanged (nothing to do)."""

    action: str
    reason: str = ""
    documents: int = 0
    passages: int = 0
    sources: int = 0
    reused: list[str] = field(default_factory=list)  # source files whose documents came from the old index
    read: list[str] = field(default_factory=list)  # source files read now (new or changed)
    removed: list[str] = field(default_factory=list)  # source files in the old index and not in this one
    seconds: float = 0.0

    def summary(self, out: str | os.PathLike) -> str:
        what = f"{self.documents} documents, {self.passages} passages from {self.sources} source file(s)"
        if self.action == "unchanged":
            return f"{out}: up to date ({what}); no source changed"
        if self.action == "updated":
            detail = f"read {len(self.read)} new or changed, reused {len(self.reused)}, dropped {len(self.removed)}"
            return f"{out}: updated ({detail}): {what} in {self.seconds:.1f}s"
        reason = f" ({self.reason})" if self.reason else ""
        return f"{out}: {self.action}{reason}: {what} in {self.seconds:.1f}s"


def _write(tmp: Path, docs: list[Document], sources: list[dict], cfg: IndexConfig) -> tuple[int, list[list[str]]]:
    """Documents, text and passages into `tmp`; returns the passage count and each passage's terms (for BM25)."""
    rows, tokens, at, terms = [], [], 0, Terms(cfg.stemmer)
    with open(tmp / "text.bin", "wb") as text_out, open(tmp / "documents.jsonl", "w", encoding="utf-8") as meta:
        for d, doc in enumerate(docs):
            spans = cut_passages(doc.text, cfg.passage_words, cfg.overlap_words)
            byte = _byte_offsets(doc.text, [p for span in spans for p in span])
            rows += [(d, s, e, at + byte[s], at + byte[e]) for s, e in spans]
            title = terms(doc.title.replace("_", " ")) if cfg.title_words else []
            tokens += [title + terms(doc.text[s:e]) for s, e in spans]
            raw = doc.text.encode("utf-8")
            text_out.write(raw)
            meta.write(json.dumps({"id": doc.id, "source": doc.source, "title": doc.title, "page": doc.page,
                                   "bytes": [at, at + len(raw)]}, ensure_ascii=False) + "\n")
            at += len(raw)
    if not rows:
        raise DataError("the sources hold no words to index")
    np.save(tmp / "passages.npy", np.asarray(rows, dtype=np.int64))
    manifest = {"format": FORMAT, "version": VERSION, "settings": asdict(cfg), "documents": len(docs),
                "passages": len(rows), "sources": sources, "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "tokenizer": f"NFKC, lower case, \\w+ runs (one-character words kept), stemmer {cfg.stemmer}",
                "bm25": BM25_SETTINGS}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False))
    return len(rows), tokens


BM25_SETTINGS = {"method": "lucene", "k1": 0.9, "b": 0.4}


def _index_bm25(tmp: Path, tokens: list[list[str]]) -> None:
    import bm25s

    bm25 = bm25s.BM25(**BM25_SETTINGS)
    bm25.index(tokens, show_progress=False)
    bm25.save(tmp / "bm25", show_progress=False)


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Replace `out` by `tmp` with renames: readers see the old index or the new one, never a mix."""
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def _make_tmp(tmp: Path, out: Path) -> None:
    """The temporary folder beside `out` that the index is written to (with `out`'s missing parents, taken back
    if the build fails)."""
    made = missing_dirs(tmp)
    try:
        tmp.mkdir(parents=True)
    except OSError as e:
        raise DataError(f"{out}: cannot create the index folder there ({e.strerror or e}); choose another --out") \
            from None
    note_made(made)


def _checked_sources(sources: Iterable[str | os.PathLike]) -> list[Path]:
    """`sources` as Paths; a single path (a str would be read as one source a character) or anything but paths is
    refused by name, where Path() would raise Python's own TypeError naming nothing."""
    if isinstance(sources, str | bytes | os.PathLike) or not isinstance(sources, Iterable):
        raise DataError(f"sources must be a list of paths (files and folders), got {type(sources).__name__}")
    return [check_path(s, f"sources[{i}]") for i, s in enumerate(sources)]


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).exists():
        raise DataError(f"{out}: folder exists, is not empty and is not a spanqa index; choose another --out")


def _previous(cls: type[Collection], out: Path, cfg: IndexConfig) -> tuple[Collection | None, str]:
    """The index already in `out` if its documents can be reused, else None and why a build is needed."""
    if not (out / MANIFEST).exists():
        return None, ""
    try:
        old = cls.load(out)
    except DataError as e:
        return None, f"the index there could not be read: {str(e).split(': ', 1)[-1]}"
    if old.manifest["settings"] != asdict(cfg):
        return None, f"settings changed from {old.manifest['settings']}"
    return old, ""


# ---- the collection ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Passage:
    index: int  # in the collection
    document: int  # index of its document
    start: int  # character offsets into the document's text: text == document_text[start:end]
    end: int
    text: str


class Collection:
    """Passages of documents and their BM25 index, loaded from a folder (memory-mapped)."""

    def __init__(self, path: Path, manifest: dict, documents: list[dict], passages: np.ndarray, text, bm25):
        self.path, self.manifest, self.documents = path, manifest, documents
        self.passages, self._text, self.bm25 = passages, text, bm25
        self.terms = Terms(manifest["settings"]["stemmer"])
        self.last_build: BuildReport | None = None

    @classmethod
    def load(cls, path: str | os.PathLike) -> Collection:
        """Open an index folder; DataError (naming the folder or file) if it is not one this version reads."""
        path = check_path(path, "path")
        manifest = _read_manifest(path)
        try:
            import bm25s

            with open(path / "documents.jsonl", encoding="utf-8") as f:
                documents = [json.loads(line) for line in f]
            passages = np.load(path / "passages.npy", mmap_mode="r")
            text = np.memmap(path / "text.bin", dtype=np.uint8, mode="r")
            bm25 = bm25s.BM25.load(path / "bm25", mmap=True, show_progress=False)
            sizes_agree = (len(documents) == manifest["documents"] and len(passages) == manifest["passages"]
                           and len(text) == documents[-1]["bytes"][1])  # a cut text.bin would give wrong passages
            index = cls(path, manifest, documents, passages, text, bm25)
        except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
            raise DataError(f"{path}: damaged index ({type(e).__name__}: {str(e).splitlines()[0][:200]}); build it "
                            "again with `spanqa index SOURCES --out DIR`") from None
        if not sizes_agree:
            raise DataError(f"{path}: damaged index (its files disagree on the number of documents, passages or "
                            "bytes of text); build it again with `spanqa index SOURCES --out DIR`")
        return index

    def __len__(self) -> int:
        return len(self.passages)

    def document_text(self, document: int) -> str:
        b0, b1 = self.documents[document]["bytes"]
        return bytes(self._text[b0:b1]).decode("utf-8")

    def passage(self, index: int) -> Passage:
        d, s, e, b0, b1 = (int(x) for x in self.passages[index])
        return Passage(index, d, s, e, bytes(self._text[b0:b1]).decode("utf-8"))

    def search(self, question: str, k: int) -> list[tuple[int, float]]:
        """The k passages that BM25 ranks highest for `question`, as (passage index, score), best first; passages
        sharing no word with the question are never returned (so fewer than k may come back, or none)."""
        ids = self.bm25.get_tokens_ids(self.terms(question))
        if not ids or k < 1:
            return []
        scores = self.bm25.get_scores_from_ids(ids)
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[scores[top] > 0]
        top = top[np.lexsort((top, -scores[top]))]  # by score, ties by passage order: the same on every run
        return [(int(i), float(scores[i])) for i in top]

    # ---- building ----------------------------------------------------------------------------------------------
    @classmethod
    @outputs_taken_back()
    def build(cls, sources: Sequence[str | os.PathLike], out: str | os.PathLike,
              config: IndexConfig | None = None) -> Collection:
        """Index the documents of `sources` (files and folders) into the folder `out`, reusing the documents of
        unchanged source files when `out` already holds an index with the same settings. `last_build` on the
        result says what was done."""
        t0 = time.perf_counter()
        sources, out, config = _checked_sources(sources), check_path(out, "out"), config or IndexConfig()
        _check_out(out)
        files = find_sources(sources, out)
        old, reason = _previous(cls, out, config)
        report = BuildReport("built" if not (out / MANIFEST).exists() else "rebuilt" if old is None else "updated",
                             reason, sources=len(files))
        sources_meta, docs = _gather(files, old, report)
        if old is not None and not report.read and not report.removed and \
                [s["path"] for s in sources_meta] == [s["path"] for s in old.manifest["sources"]]:
            report.action, report.documents, report.passages = "unchanged", len(old.documents), len(old)
            old.last_build = report
            return old
        _check_unique_ids(docs)
        tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _make_tmp(tmp, out)
            report.passages, tokens = _write(tmp, docs, sources_meta, config)
            _index_bm25(tmp, tokens)
            del tokens
            _swap_into_place(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        report.documents, report.seconds = len(docs), time.perf_counter() - t0
        index = cls.load(out)
        index.last_build = report
        return index

    def _source_documents(self, source: dict) -> list[Document]:
        a, b = source["documents"]
        return [Document(m["id"], self.document_text(i), m["source"], m["title"], m["page"])
                for i, m in zip(range(a, b), self.documents[a:b], strict=True)]


def _gather(files: list[SourceFile], old: Collection | None, report: BuildReport) -> tuple[list[dict], list[Document]]:
    """Every source file's documents (from the old index when its bytes are unchanged) and its manifest entry."""
    previous = {(s["path"], s["sha256"]): s for s in old.manifest["sources"]} if old is not None else {}
    sources_meta, docs = [], []
    for f in files:
        sha = f.fingerprint()
        key = (str(f.path.resolve()), sha)
        if key in previous:
            file_docs = old._source_documents(previous[key])
            report.reused.append(str(f.path))
        else:
            file_docs = read_source(f)
            report.read.append(str(f.path))
        sources_meta.append({"path": key[0], "given": str(f.path), "kind": f.kind, "sha256": sha,
                             "documents": [len(docs), len(docs) + len(file_docs)]})
        docs += file_docs
    kept = {s["path"] for s in sources_meta}
    report.removed = [s["given"] for s in old.manifest["sources"] if s["path"] not in kept] if old is not None else []
    return sources_meta, docs


def _check_unique_ids(docs: list[Document]) -> None:
    seen: dict[str, str] = {}
    for d in docs:
        if d.id in seen:
            raise DataError(f"{d.source}: document id {d.id!r} is used twice (also in {seen[d.id]}); ids must be "
                            "unique in a collection")
        seen[d.id] = d.source


def _read_manifest(path: Path) -> dict:
    where = path / MANIFEST
    if not path.is_dir():
        raise DataError(f"{path}: index folder not found")
    if not where.exists():
        raise DataError(f"{path}: not a spanqa index (no {MANIFEST}); build one with `spanqa index SOURCES --out "
                        f"{path}`")
    try:
        manifest = json.loads(where.read_text(encoding="utf-8"))
        fmt, version = manifest.get("format"), manifest.get("version")
    except (OSError, ValueError, AttributeError) as e:
        raise DataError(f"{where}: not a spanqa index manifest ({type(e).__name__})") from None
    if fmt != FORMAT:
        raise DataError(f"{where}: not a spanqa index manifest (format {fmt!r})")
    if version != VERSION:
        raise DataError(f"{where}: index format version {version!r}, and this spanqa reads version {VERSION}; "
                        f"build it again with `spanqa index SOURCES --out {path}`")
    return manifest

"""Collections: sources -> documents -> passages with exact offsets -> a BM25 index that saves, loads and updates."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

from spanqa.cli import main
from spanqa.collection import VERSION, Collection, Terms, cut_passages, words
from spanqa.config import IndexConfig, SettingError
from spanqa.documents import find_sources, html_text, read_source
from spanqa.errors import DataError

AWKWARD = {
    "unicode": "Zoë's café opened in 1999. 東京は日本の首都です。 Emoji 🎉 and combining é (e + \u0301) stay.\n\n"
               "Ünïcödé paragraph two: naïve façade, Ωmega, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢. The answer is 42!",
    "crlf": "First line of a Windows file.\r\nSecond line, same paragraph.\r\n\r\nA new paragraph after CRLF CRLF.\r\n",
    "tabs": "col1\tcol2\tcol3\n\tindented\twith\ttabs. Then words.\n\n\t\n\nAfter a blank line holding a tab.",
    "long_line": " ".join(f"w{i}" for i in range(5000)),  # one line, no sentence end: cut into runs of words
    "old_mac": "Line one.\rLine two.\r\rNew paragraph with CR only.",
}


def covered(text: str, spans: list[tuple[int, int]]) -> bool:
    """Every word of `text` lies inside some passage."""
    return all(any(s <= m.start() and m.end() <= e for s, e in spans) for m in re.finditer(r"\w+", text))


# ---- passages -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(AWKWARD))
@pytest.mark.parametrize("size, overlap", [(200, 40), (7, 3), (1, 0)])
def test_passages_are_exact_slices_that_cover_every_word(name, size, overlap):
    text = AWKWARD[name]
    spans = cut_passages(text, size, overlap)
    assert spans and covered(text, spans)
    for s, e in spans:
        piece = text[s:e]
        assert piece == piece.strip() and piece  # trimmed, never empty
        assert len(re.findall(r"\w+", piece)) <= size
    assert [s for s, _ in spans] == sorted(s for s, _ in spans)  # in document order
    assert all(e1 <= e2 for (_, e1), (_, e2) in zip(spans, spans[1:], strict=False))


def test_long_line_runs_overlap_by_the_overlap():
    text = AWKWARD["long_line"]
    spans = cut_passages(text, 200, 40)
    assert len(spans) == 31  # 5,000 words in steps of 160
    first, second = text[slice(*spans[0])].split(), text[slice(*spans[1])].split()
    assert len(first) == 200 and first[-40:] == second[:40]


def test_short_paragraphs_pack_and_long_ones_split_at_sentences():
    para = "One two three. Four five six. Seven eight nine."  # 9 words, 3 sentences
    text = "\n\n".join([para] * 3)
    assert cut_passages(text, 18, 0) == [(0, 2 * len(para) + 2), (2 * len(para) + 4, len(text))]
    spans = cut_passages(para, 6, 3)  # split into sentences; the cut inside the paragraph repeats one sentence
    assert [para[s:e] for s, e in spans] == ["One two three. Four five six.", "Four five six. Seven eight nine."]


def test_tokenizer_keeps_one_character_words_and_folds_case_and_width():
    assert words("Apollo 7 had 3 crew; x = Ｘ. É-é") == ["apollo", "7", "had", "3", "crew", "x", "x", "é", "é"]


def test_terms_are_snowball_stems_unless_the_stemmer_is_none():
    assert Terms("english")("Publishing 3 published books; publishes") == ["publish", "3", "publish", "book", "publish"]
    assert Terms("none")("Publishing books") == ["publishing", "books"]
    with pytest.raises(SettingError, match="stemmer.*klingon"):
        IndexConfig(stemmer="klingon")


def test_stems_and_title_words_find_what_exact_words_miss(tmp_path):
    docs = distractors(200) + [
        {"id": "stem", "text": "The committee publishes its findings every spring."},
        {"id": "titled", "title": "Hindenburg_disaster", "text": "The airship burned while docking at Lakehurst."}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(d) for d in docs))

    def top(cfg: IndexConfig, q: str) -> list[str]:
        index = Collection.build([tmp_path / "d.jsonl"], tmp_path / f"idx-{cfg.stemmer}-{cfg.title_words}", cfg)
        return [index.documents[index.passage(p).document]["id"] for p, _ in index.search(q, 3)]

    assert top(IndexConfig(), "Finding published when?")[0] == "stem"
    assert "stem" not in top(IndexConfig(stemmer="none"), "Finding published when?")
    assert top(IndexConfig(), "What ended Hindenburg?") == ["titled"]  # the title holds the only shared word
    assert top(IndexConfig(title_words=False), "What ended Hindenburg?") == []
    loaded = Collection.load(tmp_path / "idx-english-True")  # the query is stemmed as the index was built
    assert loaded.search("findings publishing", 1) == loaded.search("finding published", 1) != []


# ---- sources ---------------------------------------------------------------------------------------------------
def make_pdf(pages: list[str]) -> bytes:
    """A minimal valid PDF with one Helvetica text line per page ("" for a page without text)."""
    n = len(pages)
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>",
            f"<< /Type /Pages /Kids [{' '.join(f'{4 + 2 * i} 0 R' for i in range(n))}] /Count {n} >>".encode(),
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    for i, text in enumerate(pages):
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode() if text else b""
        objs.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> "
                    f"/Contents {5 + 2 * i} 0 R >>".encode())
        objs.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
    out, offsets = b"%PDF-1.4\n", []
    for k, obj in enumerate(objs, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % k + obj + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1) + b"".join(b"%010d 00000 n \n" % o for o in offsets)
    return out + b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)


@pytest.fixture()
def corpus(tmp_path):
    """A folder of every plain kind of source, awkward texts included."""
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / ".hidden").mkdir()
    (root / ".hidden" / "skip.txt").write_text("never indexed")
    for name, text in AWKWARD.items():
        (root / f"{name}.txt").write_bytes(text.encode("utf-8"))  # as stored: CRLF stays CRLF
    (root / "sub" / "austen.md").write_text("# Books\n\nPride and Prejudice is an 1813 novel of manners written by "
                                            "Jane Austen.\n", encoding="utf-8")
    (root / "notes.jsonl").write_text(
        json.dumps({"id": "n1", "text": "The Eiffel Tower is in Paris.", "title": "Paris"}) + "\n\n" +
        json.dumps({"text": "Line separators\u2028inside JSON strings are not line breaks."}, ensure_ascii=False)
        + "\n", encoding="utf-8")
    (root / "squad.json").write_text(json.dumps({"data": [{"title": "Apollo", "paragraphs": [
        {"context": "Apollo 7 was the first crewed flight of the Apollo program.", "qas": []},
        {"context": "Apollo 8 was the first crewed spacecraft to orbit the Moon.", "qas": []}]}]}))
    (root / "ignored.csv").write_text("a,b\n")
    return root


def test_a_folder_yields_every_kind_with_exact_texts(corpus, tmp_path):
    files = find_sources([corpus])
    names = [f.path.relative_to(corpus).as_posix() for f in files]
    assert names == ["crlf.txt", "long_line.txt", "notes.jsonl", "old_mac.txt", "squad.json", "tabs.txt",
                     "unicode.txt", "sub/austen.md"]  # sorted, folder by folder; hidden and unknown kinds skipped
    docs = {d.id: d for f in files for d in read_source(f)}
    for name, text in AWKWARD.items():
        assert docs[str(corpus / f"{name}.txt")].text == text  # byte-for-byte as stored
    assert docs["n1"].title == "Paris"
    assert docs[f"{corpus / 'notes.jsonl'}:3"].text.startswith("Line separators\u2028inside")
    assert docs["Apollo#1"].text.startswith("Apollo 8") and docs["Apollo#1"].title == "Apollo"


def test_every_passage_of_an_index_is_an_exact_slice_of_its_document(corpus, tmp_path):
    index = Collection.build([corpus], tmp_path / "idx", IndexConfig(passage_words=12, overlap_words=4))
    assert len(index.documents) == 10 and len(index) > 10
    texts = [index.document_text(d) for d in range(len(index.documents))]
    for i in range(len(index)):
        p = index.passage(i)
        assert p.text == texts[p.document][p.start : p.end]
    by_id = {m["id"]: texts[d] for d, m in enumerate(index.documents)}
    assert by_id[str(corpus / "crlf.txt")] == AWKWARD["crlf"]


def test_pdf_pages_and_html_visible_text(tmp_path):
    pytest.importorskip("pypdf", reason="PDF sources need the documents extra (pypdf)")
    pytest.importorskip("bs4", reason="HTML sources need the documents extra (beautifulsoup4)")
    (tmp_path / "book.pdf").write_bytes(make_pdf(["Chapter one is about whales.", "", "Page three names Ishmael."]))
    (tmp_path / "page.html").write_text(
        "<html><head><title>The  Page</title><style>p {color: red}</style><script>var x = 1;</script></head>"
        "<body><p>Hello <b>bold</b> world.</p><!-- a comment --><div>Second block</div></body></html>")
    index = Collection.build([tmp_path / "book.pdf", tmp_path / "page.html"], tmp_path / "idx")
    meta = {m["id"]: m for m in index.documents}
    assert meta[f"{tmp_path / 'book.pdf'}#page=1"]["page"] == 1 and meta[f"{tmp_path / 'book.pdf'}#page=3"]["page"] == 3
    assert len(meta) == 3  # the page without text is no document
    assert index.document_text(2) == "Hello bold world.\n\nSecond block"
    assert meta[str(tmp_path / "page.html")]["title"] == "The Page"
    assert html_text("<p>a<script>b</script></p>c") == ("a\n\nc", "")


# ---- retrieval -------------------------------------------------------------------------------------------------
def distractors(n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    vocab = ["river", "mountain", "city", "king", "war", "music", "science", "church", "trade", "empire", "ocean"]
    return [{"id": f"d{i}", "text": " ".join(rng.choice(vocab, 40))} for i in range(n)]


def test_bm25_ranks_a_planted_passage_first_and_one_character_words_are_searchable(tmp_path):
    docs = distractors(300) + [
        {"id": "planted", "text": "The zeppelin Hindenburg burned at Lakehurst in 1937."},
        {"id": "seven", "text": "Apollo 7 flew in October."},
        {"id": "eight", "text": "Apollo 8 flew in December."},
        {"id": "x", "text": "The variable x is unknown."}]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(d) for d in docs))
    index = Collection.build([tmp_path / "d.jsonl"], tmp_path / "idx")
    top = lambda q, k=3: [index.documents[index.passage(p).document]["id"] for p, _ in index.search(q, k)]  # noqa: E731
    assert top("Where did the Hindenburg zeppelin burn?")[0] == "planted"
    assert top("Which Apollo was 7?")[0] == "seven" and top("Apollo 8")[0] == "eight"
    assert top("x", 5) == ["x"]  # only passages sharing a word come back
    assert index.search("completely unrelated qwerty", 5) == []
    scores = [s for _, s in index.search("river city king", 50)]
    assert scores == sorted(scores, reverse=True) and len(scores) == 50


def test_saving_and_loading_gives_the_same_results_memory_mapped(corpus, tmp_path):
    built = Collection.build([corpus], tmp_path / "idx")
    loaded = Collection.load(tmp_path / "idx")
    for q in ["Who wrote Pride and Prejudice?", "Apollo 7", "café 1999", "w4242", "CRLF paragraph"]:
        assert built.search(q, 5) == loaded.search(q, 5) and loaded.search(q, 5)
    assert isinstance(loaded.passages, np.memmap) and isinstance(loaded.bm25.scores["data"], np.memmap)


# ---- building again: unchanged, updated, rebuilt -------------------------------------------------------------
def test_building_again_says_whether_it_updated_or_rebuilt(corpus, tmp_path):
    out = tmp_path / "idx"
    assert Collection.build([corpus], out).last_build.action == "built"
    again = Collection.build([corpus], out).last_build
    assert again.action == "unchanged" and "up to date" in again.summary(out)
    (corpus / "sub" / "austen.md").write_text("Emma is a novel by Jane Austen, published in 1815.")
    up = Collection.build([corpus], out)
    assert up.last_build.action == "updated" and up.last_build.read == [str(corpus / "sub" / "austen.md")]
    assert len(up.last_build.reused) == 7
    fresh = Collection.build([corpus], tmp_path / "fresh")
    for q in ["Emma 1815", "Apollo 8", "Pride and Prejudice"]:  # an update equals a build from scratch
        assert up.search(q, 5) == fresh.search(q, 5)
    (corpus / "tabs.txt").unlink()
    assert Collection.build([corpus], out).last_build.removed == [str(corpus / "tabs.txt")]
    rebuilt = Collection.build([corpus], out, IndexConfig(passage_words=50)).last_build
    assert rebuilt.action == "rebuilt" and "settings changed" in rebuilt.reason
    manifest = json.loads((out / "index.json").read_text())
    (out / "index.json").write_text(json.dumps({**manifest, "version": 0}))
    with pytest.raises(DataError, match=rf"index\.json: index format version 0, and this spanqa reads version "
                                        rf"{VERSION};"):
        Collection.load(out)
    assert Collection.build([corpus], out, IndexConfig(passage_words=50)).last_build.action == "rebuilt"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs", "fresh", "idx"]  # no temporary folders left


# ---- bad input: one line naming the file, exit 2, nothing half-written ----------------------------------------
def bad_sources(tmp_path):
    (tmp_path / "empty.txt").write_text("  \n\t\n")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a PDF")
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "bad.jsonl").write_text('{"id": 1, "text": "fine"}\n{"id": 2, "text": ""}\n')
    (tmp_path / "dup.jsonl").write_text('{"id": "a", "text": "one"}\n{"id": "a", "text": "two"}\n')
    (tmp_path / "notsquad.json").write_text('[1, 2]')
    (tmp_path / "loop.txt").symlink_to(tmp_path / "loop.txt")
    (tmp_path / "dangling.txt").symlink_to(tmp_path / "gone.txt")
    return {
        "missing.txt": "missing.txt: source not found",
        "loop.txt": "loop.txt: source not found (a symbolic link to nothing, or a loop of links)",
        "dangling.txt": "dangling.txt: source not found (a symbolic link to nothing, or a loop of links)",
        "empty.txt": "empty.txt: no text to index",
        "latin1.txt": "latin1.txt: not UTF-8 text",
        "broken.pdf": "broken.pdf: cannot read the PDF",
        "empty_dir": "empty_dir: folder holds no file to index",
        "bad.jsonl": "bad.jsonl: line 2: field 'text' is empty",
        "dup.jsonl": "document id 'a' is used twice",
        "notsquad.json": "notsquad.json: not SQuAD JSON",
        "data.csv": "data.csv: cannot index this kind of file",
    }


def test_bad_sources_are_one_line_and_leave_the_old_index_untouched(tmp_path, capsys):
    pytest.importorskip("pypdf", reason="the unreadable-PDF case needs the documents extra (pypdf)")
    good = tmp_path / "good.txt"
    good.write_text("A good document about rivers.")
    out = tmp_path / "idx"
    assert main(["index", str(good), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    (tmp_path / "data.csv").write_text("x")
    for name, message in bad_sources(tmp_path).items():
        capsys.readouterr()
        assert main(["index", str(good), str(tmp_path / name), "--out", str(out)]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("spanqa: error: ") and err.count("\n") == 1 and message in err, (name, err)
        assert main(["index", str(tmp_path / name), "--out", str(tmp_path / "new")]) == 2
        assert not (tmp_path / "new").exists()
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left behind


def test_out_must_be_an_index_or_new(tmp_path, capsys):
    (tmp_path / "doc.txt").write_text("words")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "precious.txt").write_text("keep me")
    assert main(["index", str(tmp_path / "doc.txt"), "--out", str(tmp_path / "busy")]) == 2
    assert "is not a spanqa index; choose another --out" in capsys.readouterr().err
    assert (tmp_path / "busy" / "precious.txt").read_text() == "keep me"
    assert main(["index", str(tmp_path / "doc.txt"), "--out", str(tmp_path / "n"), "--overlap-words", "300"]) == 2
    assert "--overlap-words must be below passage_words" in capsys.readouterr().err


def test_an_out_that_cannot_be_made_is_one_line(tmp_path, capsys):
    (tmp_path / "doc.txt").write_text("words")
    (tmp_path / "afile").write_text("not a folder")
    assert main(["index", str(tmp_path / "doc.txt"), "--out", str(tmp_path / "afile" / "idx")]) == 2
    err = capsys.readouterr().err
    assert err == f"spanqa: error: {tmp_path / 'afile' / 'idx'}: cannot create the index folder there (Not a " \
                  "directory); choose another --out\n"


def test_pipes_sockets_and_dangling_links_are_skipped_in_a_folder_and_refused_by_name(tmp_path, capsys):
    import socket

    root = tmp_path / "docs"
    root.mkdir()
    (root / "a.txt").write_text("A document about rivers.")
    os.mkfifo(root / "pipe.txt")  # reading it would wait forever for a writer
    (root / "dangling.txt").symlink_to(tmp_path / "nowhere.txt")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "s.md"))
    try:
        assert [f.path.name for f in find_sources([root])] == ["a.txt"]
        assert main(["index", str(root), "--out", str(tmp_path / "idx")]) == 0
        for name in ("pipe.txt", "s.md"):
            capsys.readouterr()
            assert main(["index", str(root / name), "--out", str(tmp_path / "new")]) == 2
            assert capsys.readouterr().err == f"spanqa: error: {root / name}: not a regular file (a pipe, socket or " \
                                              "device); copy its text to a file\n"
    finally:
        sock.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_source_is_one_line(tmp_path, capsys):
    (tmp_path / "secret.txt").write_text("words")
    (tmp_path / "secret.txt").chmod(0)
    assert main(["index", str(tmp_path / "secret.txt"), "--out", str(tmp_path / "idx")]) == 2
    assert capsys.readouterr().err == f"spanqa: error: {tmp_path / 'secret.txt'}: cannot read: Permission denied\n"


def test_an_index_inside_its_source_folder_is_not_read_as_documents(tmp_path, capsys):
    """Building again must not index the index's own documents.jsonl and index.json."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("A document about rivers.")
    assert main(["index", str(docs), "--out", str(docs / "idx")]) == 0
    (docs / "b.txt").write_text("A document about lakes.")
    assert main(["index", str(docs), "--out", str(docs / "idx")]) == 0
    assert "updated (read 1 new or changed, reused 1, dropped 0): 2 documents" in capsys.readouterr().out
    assert main(["index", str(docs / "idx"), "--out", str(docs / "idx")]) == 2
    assert capsys.readouterr().err == f"spanqa: error: {docs / 'idx'}: is the index folder (--out); name the " \
                                      "documents, not the index\n"


def test_a_build_that_fails_takes_back_the_parents_made_for_out(tmp_path, capsys):
    """Before: the temporary folder was made with --out's missing parents and removed alone when the build failed
    (sources with no word in them), so `index x.txt --out new/deeper/idx` left new/deeper/ behind."""
    (tmp_path / "punctuation.txt").write_text("!!! ... ???\n")
    assert main(["index", str(tmp_path / "punctuation.txt"), "--out", str(tmp_path / "new" / "deeper" / "idx")]) == 2
    assert capsys.readouterr().err == "spanqa: error: the sources hold no words to index\n"
    with pytest.raises(DataError, match="the sources hold no words to index"):
        Collection.build([tmp_path / "punctuation.txt"], tmp_path / "new" / "idx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["punctuation.txt"]


def test_arguments_that_are_not_paths_are_refused_by_name(tmp_path):
    """Before: Index.load(None), Index.build(None, out) and Index.build([...], None) were Python's own TypeError,
    naming nothing; a single path given as a str was read as one source a character, the first of them "/"."""
    from spanqa.ask import Index

    (tmp_path / "doc.txt").write_text("words to index")
    doc, out = tmp_path / "doc.txt", tmp_path / "idx"
    not_a_path = "must be a path (a str or os.PathLike), got"
    not_a_list = "must be a list of paths (files and folders), got"
    refused = [(lambda: Index.load(None), f"path {not_a_path} NoneType"),
               (lambda: Collection.load(3), f"path {not_a_path} int"),
               (lambda: Index.build(None, out), f"sources {not_a_list} NoneType"),
               (lambda: Index.build(str(tmp_path), out), f"sources {not_a_list} str"),
               (lambda: Index.build([doc, None], out), f"sources[1] {not_a_path} NoneType"),
               (lambda: Index.build([doc], None), f"out {not_a_path} NoneType")]
    for call, message in refused:
        with pytest.raises(DataError, match=f"^{re.escape(message)}$"):
            call()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["doc.txt"]
    assert len(Index.build((doc,), out)) == 1  # any list of paths, each a str or an os.PathLike

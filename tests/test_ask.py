"""Asking a collection: answers ranked across passages by one score, exact slices of their documents, each once."""

from __future__ import annotations

import json
import math
import re

import pytest

from spanqa.ask import Index, answer_key, says_no_answer
from spanqa.cli import main
from spanqa.collection import VERSION
from spanqa.config import IndexConfig
from spanqa.decoding import SpanCandidate
from spanqa.reader import Prediction

AUSTEN = "Pride and Prejudice is an 1813 novel of manners written by Jane Austen."
TOPICS = [
    AUSTEN,
    "The Eiffel Tower is in Paris. It was finished in 1889 for the World's Fair.",
    "Ada Lovelace wrote the first published algorithm, for Charles Babbage's Analytical Engine.",
    "Mount Everest, at 8,849 metres, is the highest mountain above sea level.",
    "Zoë's café in Zürich serves crème brûlée.\r\n\r\nIt opened in 1999,\tafter the war of the 🎉 emojis.",
]
QUESTIONS = ["Who wrote Pride and Prejudice?", "When was the Eiffel Tower finished?", "What did Ada Lovelace write?",
             "How high is Mount Everest?", "When did the café in Zürich open?"]


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "docs"
    root.mkdir()
    for i, text in enumerate(TOPICS):
        (root / f"t{i}.txt").write_bytes(text.encode("utf-8"))
    long = " ".join(f"Sentence {i} says that the river {i % 7} flows north." for i in range(60))
    (root / "long.txt").write_text(long)
    return root


@pytest.fixture()
def index(folder, tmp_path, tiny_reader):
    built = Index.build([folder], tmp_path / "idx", IndexConfig(passage_words=25, overlap_words=10))
    built.reader = tiny_reader
    return built


def test_every_answer_is_an_exact_slice_of_its_document(index):
    for result in index.ask_many(QUESTIONS + ["Which way does river 3 flow?"], passages=6, top_k=10):
        assert result.answers and not result.no_answer and len(result.passages) <= 6
        scores = [a.score for a in result.answers]
        assert scores == sorted(scores, reverse=True) and all(0 < a.reader_score <= 1 for a in result.answers)
        for a in result.answers:
            text = index.document_text(a.doc)
            assert text[a.start : a.end] == a.text
            assert a.passage.text == text[a.passage.start : a.passage.end]
            assert a.passage.start <= a.start <= a.end <= a.passage.end
            assert index.documents[a.doc]["id"] == a.document and a.source.endswith(".txt")


def test_each_answer_text_once_even_from_overlapping_passages(index):
    """The long document's passages overlap by 10 words, so the same span is read twice: it is listed once."""
    result = index.ask("Which way does river 3 flow in sentence 12?", passages=10, top_k=20)
    keys = [answer_key(a.text) for a in result.answers]
    assert len(keys) == len(set(keys)) == 20
    read = [index.passage(p) for p, _ in result.passages]
    assert any(p.document == q.document and p.start < q.end and q.start < p.end and p != q
               for p in read for q in read)  # overlapping passages were read
    places = [(a.document, a.start, a.end) for a in result.answers]
    assert len(places) == len(set(places))
    for a in result.answers:
        assert all((x["document"], x["start"], x["end"]) != (a.document, a.start, a.end) for x in a.also_in)


def test_an_answer_in_two_documents_lists_the_other_as_also_in(tmp_path, tiny_reader):
    root = tmp_path / "docs"
    root.mkdir()
    (root / "a.txt").write_text(AUSTEN)
    (root / "b.txt").write_text(AUSTEN)  # the same text: every span scores the same in both
    index = Index.build([root], tmp_path / "idx")
    index.reader = tiny_reader
    result = index.ask("Who wrote Pride and Prejudice?", passages=5, top_k=3)
    assert len(result.passages) == 2
    for a in result.answers:
        assert a.document == str(root / "a.txt")  # equal scores: the first retrieved wins
        assert [(x["document"], x["start"], x["end"]) for x in a.also_in][0] == (str(root / "b.txt"), a.start, a.end)


@pytest.mark.parametrize("weight", [0.0, 0.5])
def test_the_score_is_the_spans_log_odds_against_null_plus_weighted_bm25(index, tiny_reader, weight):
    """Each answer's scores are what the reader says reading its passage alone: P_begin * P_end of that window, and
    its log-odds against the window's [CLS] plus the weighted BM25 score of the passage."""
    index.bm25_weight = weight
    q = "Which way does the river flow?"
    result = index.ask(q, passages=5, top_k=20)
    assert len({a.passage.index for a in result.answers}) > 1  # answers from several passages, one ranking
    for a in result.answers:
        alone = tiny_reader.answer(q, a.passage.text, top_k=30)
        same = [c for c in alone.answers if (c.start, c.end) == (a.start - a.passage.start, a.end - a.passage.start)]
        assert same and math.isclose(same[0].score, a.reader_score, rel_tol=1e-5)
        want = math.log(same[0].score) - alone.null_log_score + weight * a.bm25
        assert math.isclose(a.score, want, rel_tol=1e-4, abs_tol=1e-4)


def test_questions_share_batches_and_match_one_by_one(index, tiny_reader, monkeypatch):
    calls = []
    logits = tiny_reader.logits
    monkeypatch.setattr(tiny_reader, "logits", lambda batch: calls.append(len(batch["input_ids"])) or logits(batch))
    together = index.ask_many(QUESTIONS, passages=4, top_k=3)
    n_read = sum(len(r.passages) for r in together)
    assert sum(calls) == n_read and len(calls) < n_read  # one window per passage, in shared batches
    for q, r in zip(QUESTIONS, together, strict=True):
        alone = index.ask(q, passages=4, top_k=3)
        assert [(a.document, a.start, a.end) for a in alone.answers] == [(a.document, a.start, a.end)
                                                                          for a in r.answers]
        assert [a.score for a in alone.answers] == pytest.approx([a.score for a in r.answers], rel=1e-5)


def test_no_answer_when_nothing_is_retrieved_or_the_reader_abstains_everywhere(index):
    result = index.ask("qwertyuiop zxcvbnm?", passages=5)
    assert result.no_answer and result.answers == [] and result.passages == []
    assert result.to_dict() == {"answers": [], "no_answer": True, "passages_read": 0}
    span = SpanCandidate("Paris", 0, 5, 0.5, math.log(0.5), 0, 1, 1)
    assert says_no_answer([]) and says_no_answer([Prediction([span], True, 0.0), Prediction([], False, 0.0)])
    assert not says_no_answer([Prediction([span], True, 0.0), Prediction([span], False, 0.0)])


def test_probabilities_are_the_answer_passages_tokens(index):
    result = index.ask(QUESTIONS[1], passages=3, top_k=2, probabilities=True)
    for a in result.answers:
        tokens = a.probabilities.to_dict()["tokens"]
        assert all(a.passage.text[t["start"] : t["end"]] == t["text"] for t in tokens)
        assert "probabilities" in a.as_dict()
    assert all(a.probabilities is None for a in index.ask(QUESTIONS[1], passages=3, top_k=2).answers)


@pytest.mark.parametrize("kwargs, message", [({"passages": 0}, "passages must be an integer of at least 1"),
                                             ({"top_k": [1, 2]}, "top_k: 2 values for 1 questions"),
                                             ({"probabilities": "no"}, "probabilities must be true, false or a list"),
                                             ({"probabilities": [True, False]}, "probabilities: 2 flags for 1 ques")])
def test_bad_settings_are_refused(index, kwargs, message):
    from spanqa.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        index.ask_many(["Who?"], **kwargs)
    with pytest.raises(ConfigError, match="question is empty"):
        index.ask("  ")


@pytest.mark.parametrize("kwargs, message", [({"passages": 0}, "passages must be an integer of at least 1, got 0"),
                                             ({"batch_size": 0}, "batch_size must be an integer of at least 1"),
                                             ({"top_k": "2"}, "top_k must be an integer of at least 1, got '2'"),
                                             ({"chunk": None}, "chunk must be an integer of at least 1, got None")])
def test_ask_file_refuses_wrong_counts_before_writing(index, tmp_path, kwargs, message):
    """Before: passages=0 or batch_size=0 was refused only after the output and its log were created, and a string
    or None was a TypeError."""
    from spanqa.errors import SpanqaError

    inp = tmp_path / "q.jsonl"
    inp.write_text(json.dumps({"id": 1, "question": QUESTIONS[0]}) + "\n")
    with pytest.raises(SpanqaError, match=message):
        index.ask_file(inp, tmp_path / "out" / "a.jsonl", progress=False, **kwargs)
    assert not (tmp_path / "out").exists()


def test_numpy_integer_counts_ask_as_plain_ints(index, tmp_path):
    """Before: `Index.ask(q, passages=np.int64(3))` was refused as 'must be an integer'; taken, the counts reach the
    search and the reader as ints."""
    import numpy as np

    searched = []
    search = index.search
    index.search = lambda q, k: searched.append(k) or search(q, k)
    got = index.ask(QUESTIONS[0], passages=np.int64(3), top_k=np.int32(2))
    assert got.to_dict() == index.ask(QUESTIONS[0], passages=3, top_k=2).to_dict() and len(got.answers) == 2
    assert [type(k) for k in searched] == [int, int]
    inp = tmp_path / "q.jsonl"
    inp.write_text("".join(json.dumps({"id": i, "question": q}) + "\n" for i, q in enumerate(QUESTIONS)))
    stats = index.ask_file(inp, tmp_path / "a.jsonl", passages=np.int64(3), top_k=np.int64(2), chunk=np.int64(2),
                           batch_size=np.int64(4), progress=False)
    index.ask_file(inp, tmp_path / "b.jsonl", passages=3, top_k=2, chunk=2, batch_size=4, progress=False)
    assert stats.answered == 5 and (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_per_question_counts_may_be_a_numpy_array(index):
    """Before: `ask_many(qs, passages=np.array([...]))` was refused ('passages must be an integer of at least 1'),
    while the probabilities flags took an array. Now a 1-D integer array is taken as a list is: its counts reach the
    search as ints; a wrong length or shape, or a value that is not a count, is still refused by name."""
    import numpy as np

    from spanqa.errors import ConfigError

    searched = []
    search = index.search
    index.search = lambda q, k: searched.append(k) or search(q, k)
    questions = QUESTIONS[:3]
    got = index.ask_many(questions, passages=np.array([3, 1, 2]), top_k=np.array([2, 1, 3], dtype=np.int32))
    assert searched == [3, 1, 2] and all(type(k) is int for k in searched)
    want = index.ask_many(questions, passages=[3, 1, 2], top_k=[2, 1, 3])
    assert [r.to_dict() for r in got] == [r.to_dict() for r in want]
    for kwargs, message in [({"passages": np.array([3, 1])}, "passages: 2 values for 3 questions"),
                            ({"top_k": np.array([[1, 2, 3]])}, "top_k must be one count or a 1-D array of 3 counts, "
                                                               "got a 2-D array"),
                            ({"passages": np.array([3, 0, 2])}, "passages[1] must be an integer of at least 1, got"),
                            ({"top_k": np.array([1.0, 2.0, 3.0])}, "top_k[0] must be an integer of at least 1, got"),
                            ({"top_k": "2"}, "top_k must be an integer of at least 1, got '2'")]:
        with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
            index.ask_many(questions, **kwargs)


def test_ask_file_names_a_path_that_is_not_a_path(index, tmp_path):
    """Before: `index.ask_file(None, out)` was Python's own TypeError from Path(None), naming no argument."""
    from spanqa.errors import SpanqaError

    inp = tmp_path / "q.jsonl"
    inp.write_text(json.dumps({"id": 1, "question": QUESTIONS[0]}) + "\n")
    for args, name in (((None, tmp_path / "a.jsonl"), "input_path"), ((inp, None), "output_path")):
        with pytest.raises(SpanqaError, match=f"^{name} must be a path \\(a str or os.PathLike\\), got NoneType$"):
            index.ask_file(*args, progress=False)
    assert not (tmp_path / "a.jsonl").exists()


# ---- files and the command line -------------------------------------------------------------------------------
def test_ask_file_streams_and_resumes(index, tmp_path):
    inp, out = tmp_path / "q.jsonl", tmp_path / "a.jsonl"
    inp.write_text("".join(json.dumps({"id": i, "question": q}) + "\n" for i, q in enumerate(QUESTIONS * 3)))
    stats = index.ask_file(inp, out, passages=3, top_k=2, chunk=4, progress=False)
    assert stats.answered == 15
    full = out.read_text(encoding="utf-8")
    rows = [json.loads(line) for line in full.splitlines()]
    assert [r["id"] for r in rows] == list(range(15)) and all(len(r["answers"]) == 2 for r in rows)
    assert rows[0]["answers"][0]["passage"]["text"] and rows[0]["passages_read"] == len(index.search(QUESTIONS[0], 3))
    out.write_text(full[: full.index("\n", len(full) // 2) + 30], encoding="utf-8")  # killed mid-write
    again = index.ask_file(inp, out, passages=3, top_k=2, chunk=4, progress=False)
    assert again.recovered_partial_line and again.already_done + again.answered == 15
    assert out.read_text(encoding="utf-8") == full  # the same bytes as an uninterrupted run
    bom = tmp_path / "bom.jsonl"  # a Windows tool's BOM first: read as the same questions
    bom.write_bytes(b"\xef\xbb\xbf" + inp.read_bytes())
    assert index.ask_file(bom, tmp_path / "b.jsonl", passages=3, top_k=2, chunk=4, progress=False).answered == 15


def test_cli_index_then_ask(folder, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "idx"
    assert main(["index", str(folder), "--out", str(out)]) == 0
    assert "built: 6 documents" in capsys.readouterr().out
    assert main(["ask", "--index", str(out), "--model", str(tiny_model_dir), "--question", QUESTIONS[0],
                 "--top-k", "3", "--passages", "2", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert len(got["answers"]) == 3 and got["passages_read"] == 2
    assert main(["ask", "--index", str(out), "--model", str(tiny_model_dir), "--question", QUESTIONS[0]]) == 0
    line = capsys.readouterr().out.strip().split("\t")
    assert len(line) == 4 and line[3].endswith("]")  # text, score, document, source [start:end]
    assert main(["index", str(folder), "--out", str(out)]) == 0
    assert "up to date" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--index", "{tmp}/nowhere", "--question", "Who?"], "nowhere: index folder not found"),
    (["--index", "{tmp}", "--question", "Who?"], "not a spanqa index (no index.json)"),
    (["--index", "{idx}", "--question", " "], "--question is empty"),
    (["--index", "{idx}"], "give --question, or --input FILE --output FILE"),
    (["--index", "{idx}", "--input", "{tmp}/q.jsonl"], "--input and --output go together"),
    (["--index", "{idx}", "--input", "{tmp}/q.jsonl", "--output", "{tmp}/a.jsonl"], "q.jsonl: line 1: field "
                                                                                    "'question' is missing"),
    (["--index", "{idx}", "--question", "Who?", "--passages", "0"], "--passages must be at least 1"),
])
def test_ask_bad_input_is_one_line_and_writes_nothing(folder, tmp_path, tiny_model_dir, capsys, argv, message):
    idx = tmp_path / "idx"
    Index.build([folder], idx)
    (tmp_path / "q.jsonl").write_text('{"id": 1, "context": "no question here"}\n')
    capsys.readouterr()
    argv = [a.format(tmp=tmp_path, idx=idx) for a in argv]
    assert main(["ask", *argv, "--model", str(tiny_model_dir), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("spanqa: error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "a.jsonl").exists()


def test_an_index_from_another_version_is_refused_by_ask(folder, tmp_path, tiny_model_dir, capsys):
    idx = tmp_path / "idx"
    Index.build([folder], idx)
    manifest = json.loads((idx / "index.json").read_text())
    (idx / "index.json").write_text(json.dumps({**manifest, "version": 99}))
    assert main(["ask", "--index", str(idx), "--model", str(tiny_model_dir), "--question", "Who?"]) == 2
    assert f"index.json: index format version 99, and this spanqa reads version {VERSION};" in capsys.readouterr().err


@pytest.mark.parametrize("damage, message", [
    ("cut_text", "files disagree on the number of documents, passages or bytes of text"),
    ("manifest_without_counts", "(KeyError: 'documents')"),
])
def test_a_damaged_index_is_refused_by_ask_and_rebuilt_by_index(folder, tmp_path, tiny_model_dir, capsys, damage,
                                                                 message):
    """A text.bin cut short (a full disk, a partial copy) used to give passages that were not the documents'."""
    idx = tmp_path / "idx"
    Index.build([folder], idx)
    if damage == "cut_text":
        (idx / "text.bin").write_bytes((idx / "text.bin").read_bytes()[:-20])
    else:
        (idx / "index.json").write_text(json.dumps({"format": "spanqa-index", "version": VERSION}))
    assert main(["ask", "--index", str(idx), "--model", str(tiny_model_dir), "--question", QUESTIONS[3]]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"spanqa: error: {idx}: damaged index ") and message in err and err.count("\n") == 1
    assert main(["index", str(folder), "--out", str(idx)]) == 0
    assert f"{idx}: rebuilt (the index there could not be read: damaged index" in capsys.readouterr().out


def test_default_model_finds_the_answer_among_documents(folder, tmp_path):
    """The shipped model over a small collection: the right document, the right span, from one shared ranking."""
    index = Index.build([folder], tmp_path / "idx")
    for q, want, doc in [(QUESTIONS[0], "Jane Austen", "t0.txt"), (QUESTIONS[1], "1889", "t1.txt"),
                         (QUESTIONS[4], "1999", "t4.txt")]:
        best = index.ask(q, passages=6).best
        assert best.text == want and best.document.endswith(doc)
        assert index.document_text(best.doc)[best.start : best.end] == want

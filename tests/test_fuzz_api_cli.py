"""Property-based tests of the Python API and the CLI: wild text and wrong types give a clear error or answers
that slice the context exactly; never a crash, a traceback or a wrong slice."""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
from fuzzing import BUDGETS, fuzz, json_values, wild_text
from hypothesis import strategies as st

from spanqa.batch_answer import answer_file
from spanqa.cli import main
from spanqa.data import is_unicode
from spanqa.errors import SpanqaError
from spanqa.reader import Reader
from spanqa.validation import is_visible

_any = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.binary(max_size=10), st.text(max_size=10),
                 st.lists(st.text(max_size=5), max_size=3), st.dictionaries(st.text(max_size=3), st.integers()))


def check_prediction(pred, context: str, top_k: int) -> None:
    assert 0 <= len(pred.answers) <= top_k and isinstance(pred.no_answer, bool)
    assert pred.answers or pred.no_answer  # no span at all is "no answer", never [] with no_answer false
    scores = [a.score for a in pred.answers]
    assert scores == sorted(scores, reverse=True)
    assert len({(a.start, a.end) for a in pred.answers}) == len(pred.answers)
    for a in pred.answers:
        assert 0 <= a.start <= a.end <= len(context) and context[a.start : a.end] == a.text
        assert 0.0 <= a.score <= 1.0


@pytest.mark.parametrize("budget", BUDGETS)
def test_api_answer_on_wild_text(tiny_reader, budget):
    def prop(question, context, top_k):
        blank = not is_visible(question) or not is_visible(context)  # empty to a reader (issue 15)
        try:
            pred = tiny_reader.answer(question, context, top_k=top_k)
        except SpanqaError as e:
            assert blank and "is empty" in str(e)  # the only input the API refuses
            return
        assert not blank
        check_prediction(pred, context, top_k)

    fuzz("api: Reader.answer on wild text", budget, prop, question=wild_text(20), context=wild_text(),
         top_k=st.integers(1, 5))


@pytest.mark.parametrize("budget", BUDGETS)
def test_api_wrong_types_give_clear_errors(tiny_reader, budget):
    def prop(questions, contexts, top_k, batch_size):
        try:
            preds = tiny_reader.predict(questions, contexts, top_k=top_k, batch_size=batch_size)
        except SpanqaError as e:
            assert str(e) and "\n" not in str(e)
            return
        assert len(preds) == len(contexts)
        for p, c in zip(preds, contexts, strict=True):
            check_prediction(p, c, top_k)

    texts = st.lists(st.one_of(wild_text(8), _any), max_size=3)
    fuzz("api: Reader.predict with wrong types", budget, prop,
         questions=st.one_of(_any, texts, texts.map(tuple), st.lists(wild_text(8), max_size=3).map(np.array)),
         contexts=st.one_of(_any, texts), top_k=st.one_of(st.integers(-2, 4), _any),
         batch_size=st.one_of(st.integers(-1, 8), _any))


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse's own usage errors
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture()
def loaded_once(tiny_reader, monkeypatch):
    """The CLI loads its model on every call: hand it the tiny reader, to spend the budget on inputs."""
    monkeypatch.setattr(Reader, "load", classmethod(lambda cls, path=None, **kw: tiny_reader))


@pytest.mark.parametrize("budget", BUDGETS)
def test_cli_answer_on_wild_text(loaded_once, budget):
    def prop(question, context, top_k, as_file):
        with tempfile.TemporaryDirectory() as d:
            if as_file:
                Path(d, "ctx.txt").write_bytes(context.encode("utf-8"))
                src = [f"--context-file={d}/ctx.txt"]
            else:
                src = [f"--context={context}"]
            rc, out, err = run_cli(["answer", f"--question={question}", *src, f"--top-k={top_k}", "--json"])
        if rc == 0:
            pred = json.loads(out)
            assert len(pred["answers"]) <= max(top_k, 1) and isinstance(pred["no_answer"], bool)
            assert pred["answers"] or pred["no_answer"]
            for a in pred["answers"]:
                assert context[a["start"] : a["end"]] == a["text"]
        else:
            assert rc == 2 and err.startswith("spanqa: error:") and len(err.strip().splitlines()) == 1
            assert not is_visible(question) or not is_visible(context) or top_k < 1, err
            assert "Traceback" not in err

    fuzz("cli: spanqa answer", budget, prop, question=wild_text(20), context=wild_text(),
         top_k=st.integers(-1, 4), as_file=st.booleans())


def valid(rec) -> bool:
    if not isinstance(rec, dict) or isinstance(rec.get("id"), bool) or not isinstance(rec.get("id"), str | int):
        return False
    return all(isinstance(rec.get(k), str) and is_visible(rec[k]) and is_unicode(rec[k])
               for k in ("question", "context"))


@pytest.mark.parametrize("budget", BUDGETS)
def test_cli_batch_answering_of_wild_lines(tiny_reader, budget):
    record = st.fixed_dictionaries({"id": st.one_of(st.text(max_size=6), st.integers(0, 9), json_values(2)),
                                    "question": st.one_of(wild_text(10), json_values(2)),
                                    "context": st.one_of(wild_text(30), json_values(2))})
    line = st.one_of(record.map(json.dumps), json_values().map(json.dumps), st.text(max_size=30),
                     st.just(""), st.just("{\"id\": \"x\", \"question\": \"\\udc80\", \"context\": \"c\"}"))

    def prop(lines, skip_invalid, chunk):
        with tempfile.TemporaryDirectory() as d:
            inp, out = Path(d, "q.jsonl"), Path(d, "a.jsonl")
            inp.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
            try:
                stats = answer_file(tiny_reader, inp, out, chunk=chunk, skip_invalid=skip_invalid, progress=False)
            except SpanqaError as e:
                assert not skip_invalid and str(e).startswith(f"{inp}: line ") and "\n" not in str(e)
                assert not out.exists() or out.read_text() == ""  # found before any answer is written
                return
            by_id = {}  # the context of the first VALID record of each id
            for raw in inp.read_text(encoding="utf-8", errors="surrogatepass").split("\n"):
                try:
                    rec = json.loads(raw.removeprefix("\ufeff"))  # a leading BOM is not part of the JSON
                except ValueError:
                    continue
                if valid(rec):
                    by_id.setdefault(rec["id"], rec["context"])
            rows = [json.loads(r) for r in out.read_text(encoding="utf-8").splitlines()]  # any line reader
            assert len(rows) == stats.answered == len({r["id"] for r in rows})
            for r in rows:
                for a in r["answers"]:
                    assert by_id[r["id"]][a["start"] : a["end"]] == a["text"]

    fuzz("cli: batch answering of wild JSONL lines", budget, prop, lines=st.lists(line, max_size=8),
         skip_invalid=st.booleans(), chunk=st.integers(1, 4))

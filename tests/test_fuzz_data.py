"""Property-based tests of data loading: random, wrong-typed and broken records only ever give a DataError."""

from __future__ import annotations

import atexit
import gzip
import json
import shutil
import tempfile
from pathlib import Path

import pytest
from fuzzing import BUDGETS, fuzz, json_values, wild_text
from hypothesis import strategies as st

from spanqa.data import load_dataset
from spanqa.errors import DataError
from spanqa.validation import is_visible

FIELDS = ["id", "question", "context", "answers", "text", "answer_start", "is_impossible", "qas", "paragraphs",
          "data", "title", "version"]
_value = json_values()
_text_or_value = st.one_of(wild_text(10), _value)


def _answers():
    return st.one_of(_value, st.fixed_dictionaries({}, optional={"text": st.lists(_text_or_value, max_size=3),
                                                                   "answer_start": st.lists(_value, max_size=3)}))


def record():
    """Record-shaped dicts whose fields hold anything; sometimes valid, mostly not."""
    return st.one_of(
        _value,
        st.dictionaries(st.sampled_from(FIELDS), _text_or_value, max_size=6),
        st.fixed_dictionaries({"id": st.one_of(st.text(max_size=4), _value), "question": _text_or_value,
                               "context": _text_or_value}, optional={"answers": _answers()}),
    )


def squad():
    qa = st.one_of(_value, st.fixed_dictionaries(
        {}, optional={"id": st.one_of(st.text(max_size=4), _value), "question": _text_or_value,
                      "answers": st.one_of(_value, st.lists(st.one_of(_value, st.fixed_dictionaries(
                          {}, optional={"text": _text_or_value, "answer_start": _value})), max_size=3)),
                      "is_impossible": _value}))
    para = st.one_of(_value, st.fixed_dictionaries({}, optional={"context": _text_or_value,
                                                                 "qas": st.one_of(_value, st.lists(qa, max_size=4))}))
    article = st.one_of(_value, st.fixed_dictionaries({}, optional={"paragraphs": st.one_of(
        _value, st.lists(para, max_size=3))}))
    return st.one_of(_value, st.fixed_dictionaries({"data": st.one_of(_value, st.lists(article, max_size=3))},
                                                   optional={"version": _value}))


def check_load(path: Path) -> None:
    for skip in (False, True):
        try:
            data = load_dataset(path, skip_invalid=skip)
        except DataError as e:
            msg = str(e)
            assert msg.startswith(str(path)) and "\n" not in msg  # one line that names the file
            continue
        assert data.examples
        assert len({ex.id for ex in data.examples}) == len(data.examples)
        for ex in data.examples:
            assert isinstance(ex.id, str) and ex.question.strip() and ex.context.strip()
            for a in ex.answers:
                assert ex.context[a.start : a.end] == a.text


_DIR = Path(tempfile.mkdtemp(prefix="spanqa-fuzz-"))  # one folder, files overwritten input after input
atexit.register(shutil.rmtree, _DIR, ignore_errors=True)


def _write(suffix: str, payload: bytes, gz: bool) -> Path:
    path = _DIR / ("data" + suffix + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


@pytest.mark.parametrize("budget", BUDGETS)
def test_random_jsonl_records(budget):
    def prop(lines, garbage, gz):
        text = "\n".join(json.dumps(r, ensure_ascii=bool(i % 2)) for i, r in enumerate(lines))
        payload = text.encode("utf-8", "surrogatepass") + b"\n" + garbage
        check_load(_write(".jsonl", payload, gz))

    fuzz("data: random JSONL records", budget, prop, lines=st.lists(record(), max_size=6),
         garbage=st.one_of(st.just(b""), st.binary(max_size=40), st.text(max_size=40).map(str.encode)),
         gz=st.booleans())


@pytest.mark.parametrize("budget", BUDGETS)
def test_random_squad_json(budget):
    def prop(doc, suffix, gz):
        check_load(_write(suffix, json.dumps(doc).encode(), gz))

    fuzz("data: random SQuAD JSON", budget, prop, doc=squad(), suffix=st.sampled_from([".json", ""]),
         gz=st.booleans())


@pytest.mark.parametrize("budget", BUDGETS)
def test_random_bytes(budget):
    def prop(payload, suffix, gz, cut, flip):
        path = _write(suffix, payload, gz)
        raw = bytearray(path.read_bytes())
        if cut:  # a truncated file
            raw = raw[: max(1, len(raw) // 2)] + bytes(cut - 1)
        if flip and raw:  # a damaged byte (inside a gzip stream: bad deflate data or checksum)
            raw[flip[0] % len(raw)] ^= flip[1]
        path.write_bytes(bytes(raw))
        check_load(path)

    valid = st.lists(record(), max_size=4).map(lambda rs: "\n".join(map(json.dumps, rs)).encode())
    fuzz("data: random and damaged bytes", budget, prop,
         payload=st.one_of(st.binary(max_size=200), valid, st.just(b"[" * 3000)),
         suffix=st.sampled_from([".json", ".jsonl", ".txt"]), gz=st.booleans(), cut=st.integers(0, 3),
         flip=st.none() | st.tuples(st.integers(0, 10**6), st.integers(1, 255)))


@st.composite
def valid_examples(draw):
    """Valid questions on wild text, each with an answer sliced from its context."""
    out = []
    for i in range(draw(st.integers(1, 4))):
        context = draw(wild_text().filter(is_visible))  # text a reader sees (issue 15: the rest is empty)
        question = draw(wild_text(10).filter(is_visible))
        start = draw(st.integers(0, len(context) - 1))
        end = draw(st.integers(start + 1, min(len(context), start + 40)))
        answer = context[start:end]
        if not is_visible(answer):
            answer, start = None, None  # an unanswerable question
        out.append((f"q{i}", question, context, answer, start))
    return out


@pytest.mark.parametrize("budget", BUDGETS)
def test_valid_records_load_exactly(budget):
    def prop(examples, ascii_only, squad_layout):
        if squad_layout:
            qas = [{"id": q, "question": qu, "answers": [] if a is None else [{"text": a, "answer_start": s}],
                    "is_impossible": a is None} for q, qu, _, a, s in examples]
            paras = [{"context": c, "qas": [qa]} for (_, _, c, _, _), qa in zip(examples, qas, strict=True)]
            payload = json.dumps({"version": "v2.0", "data": [{"paragraphs": paras}]}, ensure_ascii=ascii_only)
            path = _write(".json", payload.encode("utf-8"), gz=False)
        else:
            gold = [{"text": [], "answer_start": []} if a is None else {"text": [a], "answer_start": [s]}
                    for _, _, _, a, s in examples]
            lines = [json.dumps({"id": q, "question": qu, "context": c, "answers": g}, ensure_ascii=ascii_only)
                     for (q, qu, c, _, _), g in zip(examples, gold, strict=True)]
            path = _write(".jsonl", "\n".join(lines).encode("utf-8"), gz=False)
        data = load_dataset(path)
        got = [(ex.id, ex.question, ex.context, ex.answers[0].text if ex.answers else None,
                ex.answers[0].start if ex.answers else None) for ex in data.examples]
        assert got == examples

    fuzz("data: valid records load exactly", budget, prop, examples=valid_examples(), ascii_only=st.booleans(),
         squad_layout=st.booleans())

"""Loading SQuAD JSON and HF-layout JSONL, and the errors users see for bad records."""

import gzip
import json

import pytest
from conftest import DEV_V11, DEV_V20, need

from spanqa.data import load_dataset
from spanqa.errors import DataError


def squad(qas, context="The cat sat on the mat.", version="1.1"):
    return {"version": version, "data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]}


def write(tmp_path, name, obj):
    p = tmp_path / name
    text = obj if isinstance(obj, str) else json.dumps(obj)
    if name.endswith(".gz"):
        with gzip.open(p, "wt") as f:
            f.write(text)
    else:
        p.write_text(text)
    return p


GOOD = {"id": "q1", "question": "Where did the cat sit?", "answers": [{"text": "the mat", "answer_start": 15}]}


@pytest.mark.parametrize("name", ["d.json", "d.json.gz"])
def test_squad_json_plain_and_gz(tmp_path, name):
    ds = load_dataset(write(tmp_path, name, squad([GOOD])))
    (ex,) = ds.examples
    assert ex.id == "q1" and ex.answers[0].text == "the mat" and ex.context[15:22] == "the mat"
    assert ds.version == "v1.1" and not ds.has_unanswerable


def test_jsonl_hf_layout_with_unanswerable(tmp_path):
    lines = [
        {"id": "a", "question": "q?", "context": "abc def", "answers": {"text": ["def"], "answer_start": [4]}},
        {"id": "b", "question": "q?", "context": "abc def", "answers": {"text": [], "answer_start": []}},
    ]
    p = write(tmp_path, "d.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n")
    ds = load_dataset(p)
    assert [e.is_impossible for e in ds.examples] == [False, True] and ds.version == "v2.0"


@pytest.mark.parametrize(
    "qa, match",
    [
        ({**GOOD, "answers": [{"text": "the mat", "answer_start": 3}]}, r"id 'q1': field 'answers\[0\].answer_start'"),
        ({**GOOD, "question": "   "}, "id 'q1': field 'question' is empty"),
        ({**GOOD, "question": 42}, "field 'question' must be a string, got int"),
        ({k: v for k, v in GOOD.items() if k != "question"}, "field 'question' is missing"),
        ({**GOOD, "answers": [{"text": "the mat", "answer_start": "15"}]}, "must be an integer, got str"),
        ({**GOOD, "answers": []}, "answers' is empty but is_impossible is not true"),
    ],
)
def test_bad_records_name_file_id_and_field(tmp_path, qa, match):
    p = write(tmp_path, "bad.json", squad([qa]))
    with pytest.raises(DataError, match=match) as e:
        load_dataset(p)
    assert str(p) in str(e.value)


def test_empty_context_and_duplicates(tmp_path):
    with pytest.raises(DataError, match="field 'context' is empty"):
        load_dataset(write(tmp_path, "c.json", squad([GOOD], context=" ")))
    with pytest.raises(DataError, match="'q1' is used twice"):
        load_dataset(write(tmp_path, "dup.json", squad([GOOD, GOOD])))


def test_skip_invalid_counts_and_keeps_the_rest(tmp_path):
    bad = {**GOOD, "id": "q2", "answers": [{"text": "dog", "answer_start": 0}]}
    ds = load_dataset(write(tmp_path, "mixed.json", squad([GOOD, bad, {**GOOD, "id": "q3", "question": ""}])),
                      skip_invalid=True)
    assert [e.id for e in ds.examples] == ["q1"] and sum(ds.skipped.values()) == 2


def test_file_errors(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_dataset(tmp_path / "nope.json")
    with pytest.raises(DataError, match="malformed JSON: .* line 1"):
        load_dataset(write(tmp_path, "m.json", '{"data": [oops'))
    with pytest.raises(DataError, match="not SQuAD JSON"):
        load_dataset(write(tmp_path, "l.json", "[1, 2]"))
    with pytest.raises(DataError, match="line 2: field 'line' is not valid JSON"):
        load_dataset(write(tmp_path, "x.jsonl", json.dumps({"id": "a", "question": "q", "context": "c"}) + "\n{bad\n"))
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataError, match="not UTF-8"):
        load_dataset(tmp_path / "bin.json")
    with pytest.raises(DataError, match="no valid questions"):
        load_dataset(write(tmp_path, "e.json", squad([])))


def test_official_files_load_exactly():
    ds = load_dataset(need(DEV_V11))
    assert len(ds.examples) == 10570 and sum(len(e.answers) for e in ds.examples) == 34726
    v2 = load_dataset(need(DEV_V20))
    assert len(v2.examples) == 11873 and sum(e.is_impossible for e in v2.examples) == 5945

"""Hugging Face QA checkpoints both ways: linear heads fold into qa_outputs exactly; MLP heads are refused."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from spanqa.errors import ModelError
from spanqa.formatting import FormatConfig

CONTEXT = ("The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in "
           "France. They were descended from Norse raiders and pirates from Denmark, Iceland and Norway.")
QUESTIONS = ["Who gave their name to Normandy?", "Where did the raiders come from?", "When did the Normans live?"]


def test_export_load_with_transformers_and_import_back(tiny_reader, tmp_path):
    from transformers import AutoModelForQuestionAnswering

    from spanqa.hf import export_hf
    from spanqa.reader import Reader

    small = FormatConfig(max_seq_len=64, doc_stride=16, max_question_len=24)
    tiny_reader.config = replace(tiny_reader.config, format=small)
    export_hf(tiny_reader, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["BertForQuestionAnswering"]

    qa = AutoModelForQuestionAnswering.from_pretrained(tmp_path).eval()
    enc = tiny_reader.tokenizer(QUESTIONS[0], CONTEXT, return_tensors="pt")
    with torch.inference_mode():
        out = qa(**enc)
        hidden = tiny_reader.model.encoder(**enc).last_hidden_state
        begin, end = tiny_reader.model.begin_head(hidden), tiny_reader.model.end_head(hidden)
    torch.testing.assert_close(out.start_logits, begin, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.end_logits, end, atol=1e-5, rtol=1e-5)

    back = Reader.load(tmp_path, engine="torch")
    assert back.config.format == tiny_reader.config.format  # settings travel in config.json
    contexts = [CONTEXT * 2] * len(QUESTIONS)  # several windows at max_seq_len 64
    for a, b in zip(tiny_reader.predict(QUESTIONS, contexts, top_k=3), back.predict(QUESTIONS, contexts, top_k=3),
                    strict=True):
        assert [(c.start, c.end) for c in a.answers] == [(c.start, c.end) for c in b.answers]
        assert [c.score for c in a.answers] == pytest.approx([c.score for c in b.answers], rel=1e-4)


def test_plain_hf_checkpoint_loads_with_default_settings(tiny_reader, tmp_path):
    from transformers import AutoModelForQuestionAnswering

    from spanqa.reader import Reader

    qa = AutoModelForQuestionAnswering.from_config(tiny_reader.model.encoder.config)  # not made by spanqa
    qa.save_pretrained(tmp_path)
    tiny_reader.tokenizer.save_pretrained(tmp_path)
    r = Reader.load(tmp_path, engine="torch")
    assert r.config.head.kind == "linear" and r.config.format == FormatConfig()
    torch.testing.assert_close(r.model.end_head.net.weight[0], qa.qa_outputs.weight[1])
    assert r.answer(QUESTIONS[0], CONTEXT).best.text in CONTEXT


def test_mlp_heads_are_refused(tiny_reader, tokenizer, tmp_path, capsys):
    from spanqa.cli import main
    from spanqa.hf import export_hf
    from spanqa.model import HeadConfig, SpanModel
    from spanqa.reader import Reader, ReaderConfig

    mlp = Reader(SpanModel(tiny_reader.model.encoder, HeadConfig(kind="mlp")), tokenizer,
                 ReaderConfig(head=HeadConfig(kind="mlp")), device="cpu")
    with pytest.raises(ModelError, match="mlp heads.*--format onnx"):
        export_hf(mlp, tmp_path / "x")
    mlp.save(tmp_path / "mlp")
    assert main(["export", "--model", str(tmp_path / "mlp"), "--format", "hf", "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("spanqa: error:") and "Traceback" not in err and err.count("\n") == 1
    assert not (tmp_path / "y").exists()  # the failed export took back the --out it made


def test_non_qa_directory_is_not_a_model(tiny_reader, tmp_path):
    from spanqa.reader import Reader

    tiny_reader.model.encoder.save_pretrained(tmp_path)  # an encoder, not a QA model
    with pytest.raises(ModelError, match="not a spanqa model"):
        Reader.load(tmp_path)


@pytest.mark.parametrize("fmt", ["hf", "onnx"])
def test_export_into_a_folder_that_holds_files_is_refused(tiny_reader, tiny_model_dir, tmp_path, capsys, fmt):
    """Exported into another saved reader's folder, the export replaced its config.json and model.safetensors and
    kept its heads and spanqa.json: a folder that loaded, without a word, as one model's encoder under another's
    heads. An empty folder (one a refused export left) is still fine."""
    from spanqa.cli import main

    other = tmp_path / "other"
    tiny_reader.save(other)
    before = {p.name: p.read_bytes() for p in other.iterdir()}
    assert main(["export", "--model", str(tiny_model_dir), "--format", fmt, "--out", str(other)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"spanqa: error: --out {other}: already holds files (config.json, heads.safetensors, "
                          "model.safetensors, spanqa.json and ")
    assert err.endswith("more); export into a new or empty directory\n") and err.count("\n") == 1
    assert {p.name: p.read_bytes() for p in other.iterdir()} == before
    (tmp_path / "empty").mkdir()
    assert main(["export", "--model", str(tiny_model_dir), "--format", fmt, "--out", str(tmp_path / "empty")]) == 0


@pytest.mark.parametrize("fmt", ["hf", "onnx"])
def test_a_failed_export_leaves_no_directory_behind(tiny_model_dir, tmp_path, capsys, monkeypatch, fmt):
    """--out is checked (and made) before the model loads; a model that was not found used to leave that new, empty
    --out behind (and an export that broke off, its half-written files). Now the folder is left as it was found."""
    from spanqa import engines, hf
    from spanqa.cli import main
    from spanqa.errors import SpanqaError

    out = tmp_path / "new" / "deeper" / "X"
    assert main(["export", "--model", str(tmp_path / "missing"), "--format", fmt, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"spanqa: error: {tmp_path / 'missing'}: model directory not found\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither --out nor the parents made for it
    (tmp_path / "empty").mkdir()
    assert main(["export", "--model", str(tmp_path / "missing"), "--format", fmt, "--out",
                 str(tmp_path / "empty")]) == 2
    assert list((tmp_path / "empty").iterdir()) == []  # a folder that was there stays, empty

    def breaks_off(*args, **kwargs):
        (out / "model.onnx").write_bytes(b"half")
        raise SpanqaError("the export broke off")

    out.mkdir(parents=True)
    monkeypatch.setattr(hf, "export_hf", breaks_off)
    monkeypatch.setattr(engines, "export_onnx", breaks_off)
    capsys.readouterr()
    assert main(["export", "--model", str(tiny_model_dir), "--format", fmt, "--out", str(out)]) == 2
    assert capsys.readouterr().err == "spanqa: error: the export broke off\n"
    assert out.is_dir() and list(out.iterdir()) == []  # no half-written files

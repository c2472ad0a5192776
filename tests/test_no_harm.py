"""No input corrupts data, loses results or prints a traceback (issue 15): one test per row of the issue's table.

Every failure a user can cause ends in one line `spanqa: error: ...` naming the file or flag, exit 2, before any
model loads or any question is answered, and leaves every input byte for byte as it was.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

from spanqa.cli import main
from spanqa.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CONTEXT = "Pride and Prejudice is an 1813 novel of manners written by Jane Austen."
Q = "Who wrote Pride and Prejudice?"


def small_jsonl(path: Path, n: int = 5) -> Path:
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": f"who wrote book {i}?",
                                        "context": f"Book {i} was written by Author{i} in {1800 + i}."}) + "\n"
                            for i in range(n)), encoding="utf-8")
    return path


def fails(capsys, argv: list, *words: str) -> str:
    """Run the CLI; it must exit 2 with exactly one line `spanqa: error: ...` holding `words`."""
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("spanqa: error: "), err
    for w in words:
        assert w in err, err
    return err


@pytest.fixture()
def no_model_load(monkeypatch):
    """Fail the test if a model directory is opened: the checks must come first."""
    def boom(*a, **k):
        raise AssertionError("a model was loaded before the inputs and outputs were checked")

    monkeypatch.setattr("spanqa.checkpoint.load", boom)


# ---- 1, 2, 7: the output of `answer --input` is never the input -------------------------------------------------
def _same_spellings(tmp: Path) -> dict[str, str]:
    """Ways to spell tmp/same.jsonl: `..` through a directory that does not exist yet, a symbolic link, a
    symbolically linked directory, a hard link."""
    (tmp / "real").mkdir()
    (tmp / "linkdir").symlink_to(tmp)
    (tmp / "soft.jsonl").symlink_to(tmp / "same.jsonl")
    os.link(tmp / "same.jsonl", tmp / "hard.jsonl")
    return {"dotdot-missing-dir": f"{tmp}/sub/../same.jsonl", "dotdot-deep": f"{tmp}/a/b/../../same.jsonl",
            "dotdot-existing-dir": f"{tmp}/real/../same.jsonl", "symlink": f"{tmp}/soft.jsonl",
            "symlinked-dir": f"{tmp}/linkdir/same.jsonl", "hard-link": f"{tmp}/hard.jsonl",
            "dot-and-slashes": f"{tmp}/.//same.jsonl"}


@pytest.mark.parametrize("spelling", ["dotdot-missing-dir", "dotdot-deep", "dotdot-existing-dir", "symlink",
                                      "symlinked-dir", "hard-link", "dot-and-slashes"])
@pytest.mark.parametrize("chunk", ["512", "2"])
def test_row1_row2_an_output_spelled_as_the_input_is_refused(tmp_path, tiny_model_dir, capsys, no_model_load,
                                                             spelling, chunk):
    inp = small_jsonl(tmp_path / "same.jsonl")
    before = inp.read_bytes()
    out = _same_spellings(tmp_path)[spelling]
    fails(capsys, ["answer", "--model", tiny_model_dir, "--input", inp, "--output", out, "--chunk", chunk,
                   "--no-progress"], "--output", "is the input", "would overwrite the input")
    assert inp.read_bytes() == before
    assert not (tmp_path / "sub").exists() and not (tmp_path / "a").exists()  # directories made for it taken back
    assert not list(tmp_path.glob("*.spanqa"))


def test_row1_the_input_spelled_through_dotdot_is_refused_too(tmp_path, tiny_model_dir, capsys):
    out = small_jsonl(tmp_path / "x.jsonl")
    before = out.read_bytes()
    (tmp_path / "d").mkdir()
    fails(capsys, ["answer", "--model", tiny_model_dir, "--input", f"{tmp_path}/d/../x.jsonl", "--output",
                   f"{tmp_path}/new/../x.jsonl"], "is the input")
    fails(capsys, ["answer", "--model", tiny_model_dir, "--input", f"{tmp_path}/d/../x.jsonl", "--output", out],
          "is the input")
    assert out.read_bytes() == before


def test_row2_a_jsonl_that_spanqa_did_not_write_is_not_resumed(tmp_path, tiny_model_dir, capsys, no_model_load):
    inp = small_jsonl(tmp_path / "a.jsonl")
    copy = tmp_path / "b.jsonl"
    shutil.copy(inp, copy)  # a question file: it has ids, but it is no answer file
    fails(capsys, ["answer", "--model", tiny_model_dir, "--input", inp, "--output", copy],
          "b.jsonl: line 1 is not an answer line written by `spanqa answer --input`")
    assert copy.read_bytes() == inp.read_bytes()


def test_row2_answers_without_spanqas_fingerprints_are_not_resumed(tmp_path, tiny_model_dir, capsys):
    inp, out = small_jsonl(tmp_path / "a.jsonl"), tmp_path / "ans.jsonl"
    assert main(["answer", "--model", str(tiny_model_dir), "--input", str(inp), "--output", str(out),
                 "--no-progress"]) == 0
    capsys.readouterr()
    shutil.copy(out, tmp_path / "copied.jsonl")  # answer lines of the right shape, but no fingerprint log
    before = (tmp_path / "copied.jsonl").read_bytes()
    fails(capsys, ["answer", "--model", tiny_model_dir, "--input", inp, "--output", tmp_path / "copied.jsonl"],
          "copied.jsonl.spanqa has no fingerprint")
    assert (tmp_path / "copied.jsonl").read_bytes() == before


def test_row2_answers_of_other_questions_under_the_same_ids_are_not_resumed(tmp_path, tiny_model_dir, capsys):
    inp, out = small_jsonl(tmp_path / "a.jsonl"), tmp_path / "ans.jsonl"
    assert main(["answer", "--model", str(tiny_model_dir), "--input", str(inp), "--output", str(out),
                 "--no-progress"]) == 0
    capsys.readouterr()
    answers = out.read_bytes()
    other = tmp_path / "other.jsonl"  # the same ids, one question changed
    other.write_text(inp.read_text().replace("who wrote book 3?", "when was book 3 written?"))
    fails(capsys, ["answer", "--model", tiny_model_dir, "--input", other, "--output", out],
          "line 4: id 'q3' was answered in", "for another question or context")
    assert out.read_bytes() == answers
    # the input grown by new questions resumes: only the new ones are answered
    with open(inp, "a") as f:
        f.write(json.dumps({"id": "q9", "question": "who?", "context": "Nobody did."}) + "\n")
    assert main(["answer", "--model", str(tiny_model_dir), "--input", str(inp), "--output", str(out), "--json",
                 "--no-progress"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["answered"] == 1 and stats["already_done"] == 5


def test_row2_a_fingerprint_log_that_is_not_ours_is_left_alone(tmp_path, tiny_model_dir, capsys):
    inp = small_jsonl(tmp_path / "a.jsonl")
    log = tmp_path / "ans.jsonl.spanqa"
    log.write_text("my notes\n")
    fails(capsys, ["answer", "--model", tiny_model_dir, "--input", inp, "--output", tmp_path / "ans.jsonl"],
          "ans.jsonl.spanqa: line 1 is not a fingerprint")
    assert log.read_text() == "my notes\n" and not (tmp_path / "ans.jsonl").exists()


def test_row7_an_output_that_is_a_directory_is_refused(tmp_path, tiny_model_dir, capsys, no_model_load):
    inp = small_jsonl(tmp_path / "a.jsonl")
    fails(capsys, ["answer", "--model", tiny_model_dir, "--input", inp, "--output", tmp_path],
          f"--output {tmp_path}: is a directory, expected a file")
    blocked = tmp_path / "afile"
    blocked.write_text("x")
    fails(capsys, ["answer", "--model", tiny_model_dir, "--input", inp, "--output", blocked / "ans.jsonl"],
          f"{blocked} is a file")


# ---- 3, 8: damaged model files -----------------------------------------------------------------------------------
def _copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("name", ["heads.safetensors", "model.safetensors"])
def test_row3_a_truncated_safetensors_file_is_named(tmp_path, tiny_model_dir, capsys, name):
    model = _copy_model(tiny_model_dir, tmp_path / "m")
    with open(model / name, "r+b") as f:
        f.truncate(min(1000, (model / name).stat().st_size // 2))
    fails(capsys, ["answer", "--model", model, "--question", Q, "--context", CONTEXT],
          f"{model / name}: damaged or not a safetensors file")


def test_row3_a_truncated_hf_checkpoint_is_named(tmp_path, tiny_reader, capsys):
    from spanqa.hf import export_hf

    model = export_hf(tiny_reader, tmp_path / "hf")
    with open(model / "model.safetensors", "r+b") as f:
        f.truncate(1000)
    fails(capsys, ["answer", "--model", model, "--question", Q, "--context", CONTEXT],
          f"{model / 'model.safetensors'}: damaged or not a safetensors file")


def test_row3_a_truncated_delta_shard_of_the_shipped_model_is_named(tmp_path, capsys):
    from spanqa.default_model import default_model_dir

    model = _copy_model(default_model_dir(), tmp_path / "m")
    shard = model / "encoder_delta-02.safetensors"
    with open(shard, "r+b") as f:
        f.truncate(1000)
    fails(capsys, ["answer", "--model", model, "--question", Q, "--context", CONTEXT],
          f"{shard}: damaged or not a safetensors file")


@pytest.mark.parametrize("text, words", [
    ("[]", "must be a JSON object, got list"),
    ('"reader"', "must be a JSON object, got str"),
    ("null", "must be a JSON object, got NoneType"),
    ("{", "malformed JSON"),
    ('{"format": []}', "format must be an object, got list"),
    ('{"format": {"max_seq_len": "384"}}', "format.max_seq_len must be a non-negative int"),
    ('{"decode": {"null_threshold": "high"}}', "decode.null_threshold must be a float"),
    ('{"head": {"kind": "mlp", "mlp_hidden": -3}}', "head.mlp_hidden must be a non-negative int"),
    ('{"encoder_delta": {"files": ["../../elsewhere.safetensors"]}}', "encoder_delta must be an object"),
    ('{"encoder_delta": []}', "encoder_delta must be an object"),
])
def test_row8_a_bad_spanqa_json_is_named(tmp_path, tiny_model_dir, capsys, text, words):
    model = _copy_model(tiny_model_dir, tmp_path / "m")
    (model / "spanqa.json").write_text(text)
    fails(capsys, ["answer", "--model", model, "--question", Q, "--context", CONTEXT],
          f"{model / 'spanqa.json'}: ", words)


# ---- 4, 5: outputs are checked before the work -------------------------------------------------------------------
def test_row4_evaluate_checks_out_before_the_work(tmp_path, tiny_model_dir, capsys, no_model_load, monkeypatch):
    monkeypatch.setattr("spanqa.evaluation.evaluate", lambda *a, **k: pytest.fail("evaluated before --out was checked"))
    data = small_jsonl(tmp_path / "dev.jsonl")
    (tmp_path / "F").write_text("results of last week\n")
    fails(capsys, ["evaluate", "--model", tiny_model_dir, "--data", data, "--out", tmp_path / "F"],
          f"--out {tmp_path / 'F'}: is a file, expected a directory")
    assert (tmp_path / "F").read_text() == "results of last week\n"
    # an --out that would overwrite the data it evaluates
    (tmp_path / "ev").mkdir()
    shutil.copy(data, tmp_path / "ev" / "predictions.json")
    fails(capsys, ["evaluate", "--model", tiny_model_dir, "--data", tmp_path / "ev" / "predictions.json", "--out",
                   tmp_path / "ev"], "holds the input as predictions.json")


def test_row4_evaluate_api_checks_out_dir_first(tmp_path, tiny_reader, monkeypatch):
    from spanqa.data import load_dataset
    from spanqa.errors import DataError
    from spanqa.evaluation import evaluate

    data = load_dataset(small_jsonl(tmp_path / "dev.jsonl"))
    monkeypatch.setattr(tiny_reader, "predict", lambda *a, **k: pytest.fail("answered before out_dir was checked"))
    (tmp_path / "F").write_text("x")
    with pytest.raises(DataError, match="is a file, expected a directory"):
        evaluate(tiny_reader, data, out_dir=tmp_path / "F")


def test_row5_explain_and_export_check_out_first(tmp_path, tiny_model_dir, capsys, no_model_load):
    (tmp_path / "file").write_text("x")
    fails(capsys, ["explain", "--model", tiny_model_dir, "--question", Q, "--context", CONTEXT, "--out",
                   tmp_path / "file" / "chart.png"], f"--out {tmp_path / 'file' / 'chart.png'}: ",
          f"{tmp_path / 'file'} is a file")
    for fmt in ("onnx", "hf"):
        fails(capsys, ["export", "--model", tiny_model_dir, "--format", fmt, "--out", tmp_path / "file"],
              f"--out {tmp_path / 'file'}: is a file, expected a directory")
    fails(capsys, ["export", "--model", tiny_model_dir, "--format", "hf", "--out", f"{tiny_model_dir}/x/.."],
          "is the input")
    ctx = tmp_path / "ctx.png"
    ctx.write_text(CONTEXT)
    fails(capsys, ["explain", "--model", tiny_model_dir, "--question", Q, "--context-file", ctx, "--out",
                   tmp_path / "." / "ctx.png"], "is the input")
    assert ctx.read_text() == CONTEXT and (tmp_path / "file").read_text() == "x"


def test_train_checks_out_and_device_before_loading_data(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("spanqa.training.load_dataset", lambda *a, **k: pytest.fail("data loaded before the checks"))
    (tmp_path / "file").write_text("x")
    fails(capsys, ["train", "--train", tmp_path / "t.json", "--out", tmp_path / "file"],
          "--out", "is a file, expected a directory")
    fails(capsys, ["train", "--train", tmp_path / "t.json", "--out", tmp_path / "run", "--device", "banana"],
          "--device 'banana': unknown device")
    data = small_jsonl(tmp_path / "train_log.jsonl")
    fails(capsys, ["train", "--train", data, "--out", tmp_path], "holds the input as train_log.jsonl")


# ---- 6: devices ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device, cuda, count, words", [
    ("banana", True, 1, "--device 'banana': unknown device"),
    ("cuda", False, 0, "--device cuda: no CUDA GPU is usable here"),
    ("cuda:0", False, 0, "--device cuda:0: no CUDA GPU is usable here"),
    ("cuda:3", True, 1, "--device cuda:3: there are only 1 CUDA device(s)"),
    ("meta", False, 0, "--device meta: spanqa runs on cpu, cuda"),
    ("cpu:x", False, 0, "unknown device"),
])
def test_row6_a_device_this_machine_lacks_is_one_line(capsys, tiny_model_dir, monkeypatch, no_model_load, device,
                                                      cuda, count, words):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    fails(capsys, ["answer", "--model", tiny_model_dir, "--question", Q, "--context", CONTEXT, "--device", device],
          words)


def test_row6_resolve_device_is_the_one_check(monkeypatch):
    from spanqa.reader import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == resolve_device(None) == torch.device("cpu") == resolve_device("cpu")
    with pytest.raises(ConfigError, match="no CUDA GPU"):
        resolve_device("cuda")


# ---- 9: endless and oversized inputs -------------------------------------------------------------------------------
@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_row9_an_endless_context_file_stops_at_the_limit(tmp_path, tiny_model_dir, capsys, no_model_load):
    t = time.perf_counter()
    fails(capsys, ["answer", "--model", tiny_model_dir, "--question", "x", "--context-file", "/dev/zero"],
          "/dev/zero: context file is larger than the limit of 16,777,216 bytes", "--max-context-bytes")
    fails(capsys, ["explain", "--model", tiny_model_dir, "--question", "x", "--context-file", "/dev/zero", "--out",
                   tmp_path / "c.png", "--max-context-bytes", "1000"], "larger than the limit of 1,000 bytes")
    assert time.perf_counter() - t < 30


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_row9_an_endless_input_line_stops_at_the_limit(tmp_path, tiny_model_dir, capsys):
    fails(capsys, ["answer", "--model", tiny_model_dir, "--input", "/dev/zero", "--output", tmp_path / "a.jsonl",
                   "--max-context-bytes", "100000", "--skip-invalid"],
          "/dev/zero: line 1 is longer than 100,000 bytes", "--max-context-bytes")


def test_row9_the_limit_is_exact(tmp_path, tiny_model_dir, capsys):
    f = tmp_path / "ctx.txt"
    f.write_bytes(CONTEXT.encode())
    n = len(CONTEXT.encode())
    assert main(["answer", "--model", str(tiny_model_dir), "--question", Q, "--context-file", str(f),
                 "--max-context-bytes", str(n)]) == 0
    assert capsys.readouterr().out.strip() in CONTEXT
    fails(capsys, ["answer", "--model", tiny_model_dir, "--question", Q, "--context-file", f, "--max-context-bytes",
                   n - 1], f"larger than the limit of {n - 1:,} bytes")
    fails(capsys, ["answer", "--question", Q, "--context", "x", "--max-context-bytes", "0"],
          "--max-context-bytes must be at least 1")
    line = json.dumps({"id": "a", "question": Q, "context": CONTEXT}) + "\n"
    (tmp_path / "q.jsonl").write_text(line)
    size = len(line.encode())
    assert main(["answer", "--model", str(tiny_model_dir), "--input", str(tmp_path / "q.jsonl"), "--output",
                 str(tmp_path / "a.jsonl"), "--max-context-bytes", str(size), "--no-progress"]) == 0
    capsys.readouterr()
    fails(capsys, ["answer", "--model", tiny_model_dir, "--input", tmp_path / "q.jsonl", "--output",
                   tmp_path / "b.jsonl", "--max-context-bytes", size - 1], f"line 1 is longer than {size - 1:,}")


# ---- 10: a client that goes away ---------------------------------------------------------------------------------
def test_row10_a_client_that_disconnects_mid_body_is_one_debug_line(tiny_reader, caplog):
    pytest.importorskip("fastapi")
    from spanqa.api import create_app
    from spanqa.config import ServeConfig

    app = create_app(tiny_reader, ServeConfig())
    sent = []

    async def receive():
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/answer", "raw_path": b"/v1/answer", "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), (b"content-length", b"10")],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
    with caplog.at_level(logging.DEBUG):
        asyncio.run(app(scope, receive, send))  # raised ClientDisconnect (and logged it) before
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r for r in caplog.records if r.name == "spanqa.serve" and "disconnected" in r.getMessage()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_row10_a_real_server_logs_no_traceback_for_a_vanished_client(tiny_model_dir, tmp_path):
    pytest.importorskip("uvicorn")
    port = _free_port()
    log = open(tmp_path / "server.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "spanqa", "serve", "--model", str(tiny_model_dir), "--port",
                             str(port), "--device", "cpu"], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "server.log").read_text()
                time.sleep(0.1)
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(b"POST /v1/answer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 10\r\n\r\n")
        time.sleep(1.0)
        assert json.loads(urllib.request.urlopen(url, timeout=5).read())["status"] == "ok"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = (tmp_path / "server.log").read_text()
    assert "Traceback" not in text and "ClientDisconnect" not in text, text[-3000:]


# ---- 11: text that is empty to a reader --------------------------------------------------------------------------
INVISIBLE = ["\u200b", "\u200b\u200c\u200d\ufeff", "\x00", "\x00\x01\x7f", "\u2060\u202e", " \u200b\t\u3000",
             "\u0301\u0301"]


@pytest.mark.parametrize("text", INVISIBLE, ids=[t.encode("unicode_escape").decode()[:24] for t in INVISIBLE])
def test_row11_invisible_text_is_empty_everywhere(tmp_path, tiny_model_dir, tiny_reader, capsys, text):
    fails(capsys, ["answer", "--model", tiny_model_dir, "--question", Q, "--context", text], "the context is ")
    fails(capsys, ["answer", "--model", tiny_model_dir, "--question", text, "--context", CONTEXT], "--question is ")
    with pytest.raises(ConfigError, match="is empty"):
        tiny_reader.answer(Q, text)
    inp = tmp_path / "q.jsonl"
    inp.write_text(json.dumps({"id": "a", "question": Q, "context": text}) + "\n")
    fails(capsys, ["answer", "--model", tiny_model_dir, "--input", inp, "--output", tmp_path / "a.jsonl"],
          "line 1: field 'context' is empty")
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from spanqa.api import create_app

    with TestClient(create_app(tiny_reader)) as client:
        for body in ({"question": Q, "context": text}, {"question": text, "context": CONTEXT}):
            r = client.post("/v1/answer", json=body)
            assert r.status_code == 422 and r.json()["error"]["code"] == "empty_field", r.text


def test_row11_visible_text_with_invisible_characters_is_kept(tiny_reader):
    ctx = "\u200bJane\u200b Austen\x00 wrote it."
    pred = tiny_reader.answer("who\u200b?", ctx)
    assert pred.answers and all(ctx[a.start : a.end] == a.text for a in pred.answers)


@pytest.mark.parametrize("context", ["\ufffd", "\ue000\ue001", "\U000f0000"])
def test_row11_no_span_means_no_answer(tiny_reader, context):
    """Characters the tokenizer drops leave no span to give: the answer says so, never [] with no_answer false."""
    pred = tiny_reader.answer(Q, context)
    assert pred.to_dict() == {"answers": [], "no_answer": True}


# ---- 12: files spanqa writes are shareable -----------------------------------------------------------------------
@pytest.fixture()
def umask():
    def set_mask(mask: int) -> None:
        os.umask(mask)

    saved = os.umask(0o022)
    os.umask(saved)
    yield set_mask
    os.umask(saved)


def _modes(d: Path) -> dict[str, int]:
    return {str(p.relative_to(d)): stat.S_IMODE(p.stat().st_mode) for p in d.rglob("*")}


@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_row12_saved_readers_and_checkpoints_get_the_umask_mode(tmp_path, tiny_reader, umask, mask):
    from spanqa.hf import export_hf
    from spanqa.training import save_checkpoint

    umask(mask)
    tiny_reader.save(tmp_path / "reader")
    export_hf(tiny_reader, tmp_path / "hf")
    opt = torch.optim.AdamW(tiny_reader.model.parameters())
    save_checkpoint(tmp_path / "run", tiny_reader, opt, {"step": 1}, {"rng": torch.zeros(2)})
    modes = _modes(tmp_path)
    want = {True: 0o777 & ~mask, False: 0o666 & ~mask}
    wrong = {p: oct(m) for p, m in modes.items() if m != want[(tmp_path / p).is_dir()]}
    assert not wrong
    assert {"reader/model.safetensors", "reader/heads.safetensors", "hf/model.safetensors",
            "run/checkpoint/trainer_state.safetensors"} <= set(modes)


def test_row12_the_shipped_delta_format_gets_the_umask_mode(tmp_path, umask, tiny_reader, tiny_model_dir):
    from spanqa.checkpoint import pack_delta

    umask(0o022)
    with torch.no_grad():  # trained away from its base (the saved tiny reader): one weight changed
        next(iter(tiny_reader.model.encoder.parameters())).add_(0.5)
    meta = pack_delta(tiny_reader.model, tiny_reader.config, tmp_path / "packed", base_dir=str(tiny_model_dir),
                      base_sha256="0" * 64)
    assert meta["encoder_delta"]["files"]
    modes = {p: oct(m) for p, m in _modes(tmp_path / "packed").items()}
    assert modes == {p: "0o644" for p in modes} and len(modes) == 3


# ---- 13: progress on a terminal ----------------------------------------------------------------------------------
def _tty(monkeypatch, is_tty: bool) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: is_tty, raising=False)


@pytest.mark.parametrize("command", ["evaluate", "answer --input"])
def test_row13_commands_over_many_questions_draw_no_bar_into_a_log(tmp_path, tiny_model_dir, capsys, monkeypatch,
                                                                   command):
    """evaluate, calibrate, train, answer --input and ask --input drew their bars into a redirected stderr (a log
    file filled with carriage returns), unlike answer, explain and teach: a bar only on a terminal, for all."""
    data = small_jsonl(tmp_path / "q.jsonl")
    argv = {"evaluate": ["evaluate", "--data", data],
            "answer --input": ["answer", "--input", data, "--output", tmp_path / "a.jsonl"]}[command]
    argv = [str(a) for a in [*argv, "--model", tiny_model_dir]]
    monkeypatch.setattr("spanqa.reader.PROGRESS_DELAY_S", 0)
    capsys.readouterr()
    _tty(monkeypatch, False)
    assert main(argv) == 0
    assert "\r" not in capsys.readouterr().err
    (tmp_path / "a.jsonl").unlink(missing_ok=True)
    (tmp_path / "a.jsonl.spanqa").unlink(missing_ok=True)
    _tty(monkeypatch, True)
    assert main(argv) == 0
    assert "\r" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["answer", "explain"])
def test_row13_one_long_question_shows_windows_done_of_total_on_a_tty(tmp_path, tiny_model_dir, tiny_reader,
                                                                      capsys, monkeypatch, command):
    from spanqa.formatting import iter_windows

    monkeypatch.setattr("spanqa.reader.PROGRESS_DELAY_S", 0)
    context = " ".join([CONTEXT] * 200)
    n = len(list(iter_windows(tiny_reader.tokenizer, [Q], [context], tiny_reader.config.format)))
    assert n > 3
    argv = [command, "--model", str(tiny_model_dir), "--question", Q, "--context", context]
    if command == "explain":  # the bar is the point here, not a chart of 3,000 tokens
        argv += ["--out", str(tmp_path / "c.png")]
        monkeypatch.setattr("spanqa.explain.plot_probabilities", lambda tp, out, *a, **k: Path(out))
    capsys.readouterr()
    _tty(monkeypatch, True)
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert re.search(rf"\b{n}/{n} \[", err) and "window" in err, err
    assert main(argv + ["--no-progress"]) == 0
    assert capsys.readouterr().err == ""
    _tty(monkeypatch, False)
    assert main(argv) == 0
    assert capsys.readouterr().err == ""


# ---- 14: the benchmarks' dependencies install with the package ---------------------------------------------------
def _extras() -> dict[str, set[str]]:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(reqs: list[str]) -> set[str]:
        return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}

    extras = {k: v for k, v in project["optional-dependencies"].items()}

    def expand(reqs: list[str]) -> set[str]:
        out = names(reqs)
        for r in reqs:
            m = re.match(r"spanqa\[(.+)\]", r)
            if m:
                for extra in m.group(1).split(","):
                    out |= expand(extras[extra.strip()])
        return out - {"spanqa"}

    return {"": names(project["dependencies"]), **{k: expand(v) for k, v in extras.items()}}


def test_row14_a_bench_extra_installs_what_every_benchmark_imports():
    import ast
    from importlib.metadata import packages_distributions

    extras = _extras()
    assert "bench" in extras, "pyproject.toml has no bench extra"
    have = extras[""] | extras["bench"]
    dists = packages_distributions()
    local = {p.stem for p in (ROOT / "benchmarks").glob("*.py")} | {"spanqa"}
    needed: dict[str, str] = {}
    own_venv = {"haystack_worker.py"}  # runs in the venv open_squad.py makes for it (haystack-ai<3)
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        if path.name in own_venv:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            for m in mods:
                top = m.split(".")[0]
                if top not in sys.stdlib_module_names and top not in local:
                    needed[top] = path.name
            if isinstance(node, ast.ImportFrom) and node.module == "transformers" and \
                    any(a.name == "Trainer" for a in node.names):
                needed["accelerate"] = path.name  # transformers' Trainer refuses to start without it
    missing = {}
    for mod, where in needed.items():
        candidates = {d.lower().replace("_", "-") for d in dists.get(mod, [mod])}
        if not candidates & have:
            missing[mod] = where
    assert not missing, f"imported by benchmarks but installed by no dependency or the bench extra: {missing}"


def test_row14_the_readme_installs_the_bench_extra_and_speed_py_finds_its_venv():
    readme = (ROOT / "README.md").read_text()
    assert "'.[bench]'" in readme or ".[dev,bench]" in readme
    speed = (ROOT / "benchmarks" / "speed.py").read_text()
    assert "/work/" not in speed  # the pipeline's venv is made by a README step, not found on one machine


# ---- cosmetic: one-line warnings, the JSON error's words --------------------------------------------------------
def test_a_long_question_warns_in_one_line(tiny_model_dir):
    proc = subprocess.run([sys.executable, "-m", "spanqa", "answer", "--model", str(tiny_model_dir), "--question",
                           "why " * 1250, "--context", CONTEXT], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": ""})
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        "spanqa: warning: 1 question(s) longer than max_question_len=64 tokens were truncated"]


def test_json_errors_read_well(tmp_path, tiny_model_dir, capsys):
    inp = tmp_path / "q.jsonl"
    inp.write_text('{"id": "a", "question": "q", "context": "unterminated')  # the string starts at column 41
    err = fails(capsys, ["answer", "--model", tiny_model_dir, "--input", inp, "--output", tmp_path / "a.jsonl"],
                "is not valid JSON (Unterminated string starting at column 41)")
    assert "at at" not in err
    from spanqa.data import load_dataset
    from spanqa.errors import DataError

    with pytest.raises(DataError, match=r"starting at column 41\)") as e:
        load_dataset(inp)
    assert "at at" not in str(e.value)


# ---- a failed command leaves no new directory behind ----------------------------------------------------------------
def _bad_inputs(tmp: Path) -> dict[str, Path]:
    """Inputs for the runs that fail after their outputs were checked: good and malformed SQuAD, a bad JSONL."""
    from test_cli import squad_file

    (tmp / "in").mkdir()
    (tmp / "in" / "malformed.json").write_text('{"data": [')
    bad = small_jsonl(tmp / "in" / "bad.jsonl")
    bad.write_text(bad.read_text() + json.dumps({"id": "x", "question": "", "context": "c"}) + "\n")
    return {"ok": squad_file(tmp / "in" / "ok.json"), "malformed": tmp / "in" / "malformed.json", "bad": bad,
            "missing": tmp / "in" / "no-model"}


FAILED_RUNS = {  # a command whose --out is checked (its directories made) before the work, which then fails
    "evaluate, no model": ["evaluate", "--model", "{missing}", "--data", "{ok}", "--out", "{out}/ev"],
    "evaluate, bad data": ["evaluate", "--model", "{model}", "--data", "{malformed}", "--out", "{out}/ev"],
    "calibrate, no model": ["calibrate", "--model", "{missing}", "--data", "{ok}", "--out", "{out}/cal"],
    "explain, no model": ["explain", "--model", "{missing}", "--question", Q, "--context", CONTEXT, "--out",
                          "{out}/chart.png"],
    "teach, no model": ["teach", "--model", "{missing}", "--data", "{ok}", "--out", "{out}/t.safetensors"],
    "train, bad data": ["train", "--base", "{model}", "--train", "{malformed}", "--out", "{out}/run", "--device",
                        "cpu"],
    "negatives, bad data": ["negatives", "--data", "{malformed}", "--out", "{out}/neg.json"],
    "answer --input, no model": ["answer", "--model", "{missing}", "--input", "{bad}", "--output", "{out}/a.jsonl",
                                 "--skip-invalid"],
    "answer --input, bad line": ["answer", "--model", "{model}", "--input", "{bad}", "--output", "{out}/a.jsonl"],
}


@pytest.mark.parametrize("run", FAILED_RUNS)
def test_a_failed_command_takes_back_the_directories_made_for_its_output(tmp_path, tiny_model_dir, capsys, run):
    """Before: the output's directories were made when it was checked, before the model or the data were read,
    and stayed when that failed (`evaluate --model missing --out ev/X` left an empty ev/X/). Now the ones made are
    taken back, and a folder that was there before stays."""
    paths = _bad_inputs(tmp_path)
    held = sorted(p.name for p in (tmp_path / "in").iterdir())
    for out in (tmp_path / "new" / "deeper", tmp_path / "in"):
        fails(capsys, [a.format(**paths, model=tiny_model_dir, out=out) for a in FAILED_RUNS[run]])
        assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]  # no new/, nor new/deeper/
        assert sorted(p.name for p in (tmp_path / "in").iterdir()) == held  # a folder that was there stays as it was


def test_ask_input_with_a_bad_line_takes_back_its_output_directories(tmp_path, tiny_model_dir, capsys):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "d.txt").write_text(CONTEXT)
    assert main(["index", str(tmp_path / "docs"), "--out", str(tmp_path / "idx")]) == 0
    (tmp_path / "q.jsonl").write_text('{"id": 1, "question": "who?"}\n{"id": 2, "question": ""}\n')
    fails(capsys, ["ask", "--index", tmp_path / "idx", "--model", tiny_model_dir, "--input", tmp_path / "q.jsonl",
                   "--output", tmp_path / "new" / "a.jsonl"], "line 2: field 'question' is empty")
    assert not (tmp_path / "new").exists()


@pytest.mark.filterwarnings("ignore:.*no question is unanswerable")
def test_a_calibration_that_breaks_off_leaves_no_half_written_model(tmp_path, tiny_model_dir, capsys, monkeypatch):
    """--out is a new model directory, made before the work; the copy of the model into it and the new settings are
    written last. One that broke off there left its half-copied model; now --out is taken back whole."""
    from test_cli import squad_file

    from spanqa import checkpoint
    from spanqa.errors import SpanqaError

    def breaks_off(out, config):
        raise SpanqaError("the disk is full")

    monkeypatch.setattr(checkpoint, "write_config", breaks_off)
    out = tmp_path / "new" / "cal"
    fails(capsys, ["calibrate", "--model", tiny_model_dir, "--data", squad_file(tmp_path / "ok.json"), "--out", out,
                   "--no-progress"], "the disk is full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.json"]


def _api_runs() -> dict:
    """API calls that check their outputs before the work, then fail: (paths, new, reader, model dir) -> None."""
    from spanqa.ask import Index
    from spanqa.batch_answer import answer_file
    from spanqa.config import NegativesConfig, TrainConfig
    from spanqa.data import load_dataset
    from spanqa.evaluation import evaluate
    from spanqa.negatives import mine
    from spanqa.training import train

    def ask_file(paths, new, reader, model):
        (paths["ok"].parent / "docs").mkdir()
        (paths["ok"].parent / "docs" / "d.txt").write_text(CONTEXT)
        index = Index.build([paths["ok"].parent / "docs"], paths["ok"].parent / "idx")
        index.reader = reader
        index.ask_file(paths["bad"], new / "a.jsonl", progress=False)

    return {"evaluate": lambda paths, new, reader, model: evaluate(reader, load_dataset(paths["ok"]), out_dir=new),
            "train": lambda paths, new, reader, model: train(TrainConfig(
                train=str(paths["malformed"]), out=str(new), base=str(model), device="cpu", progress=False)),
            "mine": lambda paths, new, reader, model: mine(NegativesConfig(data=str(paths["malformed"]),
                                                                           out=str(new / "neg.json"))),
            "answer_file": lambda paths, new, reader, model: answer_file(reader, paths["bad"], new / "a.jsonl",
                                                                         progress=False),
            "Index.ask_file": ask_file}


@pytest.mark.parametrize("run", ["evaluate", "train", "mine", "answer_file", "Index.ask_file"])
def test_the_api_takes_back_the_directories_made_for_a_failed_run(tmp_path, tiny_model_dir, tiny_reader,
                                                                 monkeypatch, run):
    """The API checks its outputs before the work, as the commands do; a run that failed after that left the new
    directories behind."""
    from spanqa.errors import SpanqaError

    def fails_to_answer(*args, **kwargs):
        raise SpanqaError("the reader failed")

    monkeypatch.setattr(tiny_reader, "predict", fails_to_answer)
    paths = _bad_inputs(tmp_path)
    with pytest.raises(SpanqaError):
        _api_runs()[run](paths, tmp_path / "new" / "deeper", tiny_reader, tiny_model_dir)
    assert not (tmp_path / "new").exists()

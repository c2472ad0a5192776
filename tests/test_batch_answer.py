"""Batch answering of a JSONL file: streaming in chunks, resumable, partial last line recovered, bad lines."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from spanqa.batch_answer import answer_file
from spanqa.cli import main

CONTEXTS = [
    "The Eiffel Tower is in Paris. It was finished in 1889 for the World's Fair.",
    "Ada Lovelace wrote the first published algorithm, for Charles Babbage's Analytical Engine.",
    "Mount Everest, at 8,849 metres, is the highest mountain above sea level. " * 4,
]


def write_questions(path, n, start=0):
    with open(path, "w", encoding="utf-8") as f:
        for i in range(start, start + n):
            f.write(json.dumps({"id": f"q{i}", "question": f"question number {i}?",
                                "context": CONTEXTS[i % len(CONTEXTS)]}) + "\n")
    return path


def read_answers(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def check_answers(rows, n):
    assert [r["id"] for r in rows] == [f"q{i}" for i in range(n)]  # each id once, in input order
    for r in rows:
        assert set(r) == {"id", "answers", "no_answer"}
        ctx = CONTEXTS[int(r["id"][1:]) % len(CONTEXTS)]
        for a in r["answers"]:
            assert ctx[a["start"] : a["end"]] == a["text"]


def run_cli(*argv):
    # torch: these tests compare files byte for byte across runs that batch differently, and onnx-int8 (the CPU
    # default) quantises activations per batch, so its scores move in the last digits with the batch's company
    return main(["answer", *argv, "--no-progress", "--engine", "torch"])


def test_answers_every_line_in_chunks_with_bounded_batches(tmp_path, tiny_reader):
    inp, out = write_questions(tmp_path / "q.jsonl", 23), tmp_path / "a.jsonl"
    sizes = []
    predict = tiny_reader.predict
    tiny_reader.predict = lambda qs, cs, **kw: sizes.append(len(qs)) or predict(qs, cs, **kw)
    stats = answer_file(tiny_reader, inp, out, chunk=5, progress=False, top_k=2)
    assert sizes == [5, 5, 5, 5, 3]  # never more than a chunk in memory
    assert stats.answered == 23 and stats.already_done == 0
    rows = read_answers(out)
    check_answers(rows, 23)
    assert all(1 <= len(r["answers"]) <= 2 for r in rows)


@pytest.mark.parametrize("kwargs, message", [({"top_k": "2"}, "top_k must be an integer of at least 1, got '2'"),
                                             ({"chunk": None}, "chunk must be an integer of at least 1, got None"),
                                             ({"batch_size": 0}, "batch_size must be an integer of at least 1"),
                                             ({"top_k": 2.0}, "top_k must be an integer of at least 1, got 2.0")])
def test_wrong_counts_are_named_before_any_file_is_written(tmp_path, tiny_reader, kwargs, message):
    """Before: a string or None was a TypeError from a comparison, and the message named no argument."""
    from spanqa.errors import DataError

    inp = write_questions(tmp_path / "q.jsonl", 2)
    with pytest.raises(DataError, match=message):
        answer_file(tiny_reader, inp, tmp_path / "a.jsonl", progress=False, **kwargs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.jsonl"]


@pytest.mark.parametrize("paths, message", [((None, "a.jsonl"), r"^input_path must be a path \(a str or os.PathLike\), "
                                                                 "got NoneType$"),
                                           (("q.jsonl", None), "^output_path must be a path .* got NoneType$"),
                                           ((3, "a.jsonl"), "^input_path must be a path .* got int$"),
                                           (("q.jsonl", b"a.jsonl"), "^output_path must be a path .* got bytes$")],
                         ids=["input None", "output None", "input int", "output bytes"])
def test_a_path_that_is_not_a_path_is_named(tmp_path, tiny_reader, paths, message):
    """Before: `answer_file(reader, None, out)` was Python's own TypeError ('expected str, bytes or os.PathLike
    object, not NoneType'), naming no argument."""
    from spanqa.errors import DataError

    write_questions(tmp_path / "q.jsonl", 2)
    inp, out = (tmp_path / p if isinstance(p, str) else p for p in paths)
    with pytest.raises(DataError, match=message):
        answer_file(tiny_reader, inp, out, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.jsonl"]


def test_numpy_integer_counts_write_what_plain_ints_write(tmp_path, tiny_reader):
    """Before: `top_k=np.int64(2)` was refused as 'must be an integer'; taken, it reaches the reader as an int."""
    import numpy as np

    inp = write_questions(tmp_path / "q.jsonl", 5)
    answer_file(tiny_reader, inp, tmp_path / "plain.jsonl", top_k=2, chunk=2, batch_size=3, progress=False)
    seen = []
    predict = tiny_reader.predict
    tiny_reader.predict = lambda qs, cs, **kw: seen.append(kw) or predict(qs, cs, **kw)
    stats = answer_file(tiny_reader, inp, tmp_path / "np.jsonl", top_k=np.int64(2), chunk=np.int32(2),
                        batch_size=np.uint8(3), progress=False)
    assert stats.answered == 5 and len(seen) == 3  # chunks of 2
    assert {(type(kw["top_k"]), type(kw["batch_size"])) for kw in seen} == {(int, int)}
    assert (tmp_path / "np.jsonl").read_bytes() == (tmp_path / "plain.jsonl").read_bytes()


def test_an_input_with_a_utf8_bom_is_read(tmp_path, tiny_reader):
    """Before: line 1 was refused as 'not valid JSON (Unexpected UTF-8 BOM (decode using utf-8-sig) ...)'."""
    plain = write_questions(tmp_path / "q.jsonl", 3)
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    assert answer_file(tiny_reader, bom, tmp_path / "a.jsonl", progress=False).answered == 3
    answer_file(tiny_reader, plain, tmp_path / "b.jsonl", progress=False)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()


def test_rerun_skips_answered_ids_and_recovers_a_partial_last_line(tmp_path, tiny_model_dir, capsys):
    inp, out = write_questions(tmp_path / "q.jsonl", 12), tmp_path / "a.jsonl"
    assert run_cli("--model", str(tiny_model_dir), "--input", str(inp), "--output", str(out), "--chunk", "4") == 0
    full = out.read_bytes()
    assert run_cli("--model", str(tiny_model_dir), "--input", str(inp), "--output", str(out), "--json") == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["answered"] == 0 and stats["already_done"] == 12
    assert out.read_bytes() == full
    # a kill in the middle of writing line 10: lines 1-9 whole, line 10 cut
    lines = full.splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:9]) + lines[9][:17])
    assert run_cli("--model", str(tiny_model_dir), "--input", str(inp), "--output", str(out), "--json") == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats == {**stats, "answered": 3, "already_done": 9, "recovered_partial_line": True}
    assert out.read_bytes() == full  # the same answers, each id once, as if never interrupted
    # more questions appended to the input: only the new ones are answered
    write_questions(tmp_path / "more.jsonl", 3, start=12)
    with open(inp, "a") as f:
        f.write((tmp_path / "more.jsonl").read_text())
    assert run_cli("--model", str(tiny_model_dir), "--input", str(inp), "--output", str(out), "--json") == 0
    assert json.loads(capsys.readouterr().out)["answered"] == 3
    check_answers(read_answers(out), 15)


def test_sigkill_mid_run_then_rerun_completes(tmp_path, tiny_model_dir):
    inp, out = write_questions(tmp_path / "q.jsonl", 600), tmp_path / "a.jsonl"
    cmd = [sys.executable, "-m", "spanqa", "answer", "--model", str(tiny_model_dir), "--input", str(inp),
           "--output", str(out), "--chunk", "1", "--no-progress"]  # chunk 1: many writes to land a kill in
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while (not out.exists() or out.stat().st_size < 2000) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "answering ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_before = len(out.read_bytes().splitlines())
    assert 0 < n_before < 600
    done = subprocess.run(cmd[:-3] + ["--no-progress"], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "already in" in done.stderr
    check_answers(read_answers(out), 600)


def test_hf_layout_and_gzip_input(tmp_path, tiny_reader):
    inp = tmp_path / "q.jsonl.gz"
    with gzip.open(inp, "wt", encoding="utf-8") as f:
        for i in range(4):
            f.write(json.dumps({"id": f"q{i}", "title": "T", "question": "what?", "context": CONTEXTS[i % 3],
                                "answers": {"text": ["x"], "answer_start": [0]}}) + "\n\n")
    stats = answer_file(tiny_reader, inp, tmp_path / "a.jsonl", progress=False)
    assert stats.answered == 4
    check_answers(read_answers(tmp_path / "a.jsonl"), 4)


BAD_LINES = [
    (b'{"id": "b", "question": "q?"}', "line 2: field 'context' is missing"),
    (b'{"id": "b", "question": 3, "context": "c"}', "line 2: field 'question' must be a string, got int"),
    (b'{"id": ["b"], "question": "q", "context": "c"}', "line 2: field 'id' must be a string or an integer"),
    (b'{"id": "b", "question": "  ", "context": "c"}', "line 2: field 'question' is empty"),
    (b'{"id": "b", "question": "q", "context": "\\udc80"}', "line 2: field 'context' is not valid Unicode"),
    (b'{"id": "b", "question": "q",', "line 2: field 'line' is not valid JSON"),
    (b'["b", "q", "c"]', "line 2: field 'line' must be a JSON object, got list"),
    (b'{"id": "b", "question": "q", "context": "caf\xe9"}', "line 2: field 'line' is not UTF-8 text"),
    (b'{"id": "a", "question": "q", "context": "c"}', "line 2: field 'id' 'a' is used twice"),
    (b"[" * 100_000, "line 2: field 'line' is nested too deeply"),
    (b'{"version": "1.1", "data": []}', "line 2: field 'id' is missing: this looks like SQuAD JSON"),
    (b"{", "line 2: field 'line' is not valid JSON (Expecting property name enclosed in double quotes at column 1) "
           "(one JSON document over many lines? --input reads JSONL: one object a line)"),
]


@pytest.mark.parametrize("bad,message", BAD_LINES, ids=[m.split("field ")[1][:30] for _, m in BAD_LINES])
def test_bad_lines_are_named_or_skipped(tmp_path, tiny_model_dir, capsys, bad, message):
    inp, out = tmp_path / "q.jsonl", tmp_path / "a.jsonl"
    good = json.dumps({"id": "a", "question": "where?", "context": CONTEXTS[0]}).encode()
    inp.write_bytes(good + b"\n" + bad + b"\n" + good.replace(b'"a"', b'"c"') + b"\n")
    assert run_cli("--model", str(tiny_model_dir), "--input", str(inp), "--output", str(out)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"spanqa: error: {inp}: {message}")
    assert len(err.splitlines()) == 1 and not out.exists()  # reported before any work
    assert run_cli("--model", str(tiny_model_dir), "--input", str(inp), "--output", str(out), "--skip-invalid",
                   "--json") == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["answered"] == 2 and sum(stats["invalid"].values()) == 1
    assert [r["id"] for r in read_answers(out)] == ["a", "c"]


@pytest.mark.parametrize("argv,message", [
    (["--input", "IN"], "--input and --output go together"),
    (["--input", "IN", "--output", "OUT", "--question", "q?"], "do not also give --question"),
    (["--input", "IN", "--output", "OUT", "--chunk", "0"], "--chunk must be at least 1"),
    (["--input", "MISSING", "--output", "OUT"], "MISSING: file not found"),
    (["--input", "IN", "--output", "OUT.gz"], "answers are written as plain JSONL, not gzip; name it without .gz"),
    (["--question", "q?"], "give --question and --context"),
])
def test_flag_errors(tmp_path, tiny_model_dir, capsys, argv, message):
    write_questions(tmp_path / "IN", 2)
    argv = [str(tmp_path / a) if a in ("IN", "OUT", "OUT.gz", "MISSING") else a for a in argv]
    assert run_cli("--model", str(tiny_model_dir), *argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("spanqa: error:") and message in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["IN"]  # a file named .gz held plain text before


def test_an_output_file_that_is_not_ours_is_refused(tmp_path, tiny_model_dir, capsys):
    inp, out = write_questions(tmp_path / "q.jsonl", 2), tmp_path / "a.jsonl"
    out.write_text("some notes\n")
    assert run_cli("--model", str(tiny_model_dir), "--input", str(inp), "--output", str(out)) == 2
    assert "line 1 is not an answer line" in capsys.readouterr().err
    assert out.read_text() == "some notes\n"
    assert run_cli("--model", str(tiny_model_dir), "--input", str(inp), "--output", str(inp)) == 2
    assert "would overwrite the input" in capsys.readouterr().err


def _kill_states(log: bytes, out: bytes, chunk: int) -> dict[str, tuple[bytes, bytes | None]]:
    """(log, output) as a kill would leave them at every boundary of a run that wrote `log` and `out` in chunks of
    `chunk`: each chunk's fingerprints go to the log before its answers go to the output."""
    head, *prints = log.splitlines(keepends=True)
    answers = out.splitlines(keepends=True)
    states = {"log header cut": (head[:7], None), "log header only": (head, None), "both empty": (b"", b"")}
    for done in [*range(0, len(answers), chunk), len(answers)]:
        nxt = min(done + chunk, len(answers))
        logged, written = head + b"".join(prints[:done]), b"".join(answers[:done])
        states[f"after {done}"] = (logged, written)
        if done < len(answers):
            states[f"after {done}, next prints cut"] = (logged + prints[done][:9], written)
            states[f"after {done}, next prints on disk"] = (head + b"".join(prints[:nxt]), written)
            states[f"after {done}, next answer cut"] = (head + b"".join(prints[:nxt]), written + answers[done][:11])
    return states


def _asker(tmp_path, tiny_reader, n: int):
    """`Index.ask_file` (what `spanqa ask --index DIR --input --output` runs) over an index of CONTEXTS, on n
    questions that retrieve passages, as a function of the output path."""
    from spanqa.ask import Index

    docs = tmp_path / "docs"
    docs.mkdir()
    for i, context in enumerate(CONTEXTS):
        (docs / f"d{i}.txt").write_text(context)
    index = Index.build([docs], tmp_path / "idx")
    index.reader = tiny_reader
    inp = tmp_path / "q.jsonl"
    words = ["Eiffel Tower", "Ada Lovelace", "Mount Everest"]
    inp.write_text("".join(json.dumps({"id": f"q{i}", "question": f"What of the {words[i % 3]}, {i}?"}) + "\n"
                           for i in range(n)))
    return lambda out: index.ask_file(inp, out, passages=2, top_k=2, chunk=3, progress=False)


@pytest.mark.parametrize("command", ["answer", "ask"])
def test_a_kill_at_every_chunk_boundary_resumes_to_the_same_bytes(tmp_path, tiny_reader, command):
    """Killed before the first chunk, between a chunk's fingerprints and its answers, mid-line, after the last chunk:
    the rerun writes exactly what the uninterrupted run wrote, and a third run has nothing left to do. `ask --input`
    runs the same loop over other records (a question alone, its fingerprint of one text) and other answer lines
    (passages, passages_read), which each resumed state must read back as its own."""
    if command == "answer":
        inp = write_questions(tmp_path / "q.jsonl", 7)

        def run(out):
            return answer_file(tiny_reader, inp, out, chunk=3, progress=False)
    else:
        run = _asker(tmp_path, tiny_reader, 7)
    full = tmp_path / "full.jsonl"
    run(full)
    log = (tmp_path / "full.jsonl.spanqa").read_bytes()
    states = _kill_states(log, full.read_bytes(), 3)
    assert len(states) == 3 + 4 + 3 * 3  # 7 questions: chunks end after 0, 3, 6 and 7 answers
    if command == "ask":
        assert all(json.loads(line)["passages_read"] == 2 for line in full.read_text().splitlines())
    for name, (log_bytes, out_bytes) in states.items():
        out = tmp_path / f"{name.replace(' ', '_').replace(',', '')}.jsonl"
        (tmp_path / (out.name + ".spanqa")).write_bytes(log_bytes)
        if out_bytes is not None:
            out.write_bytes(out_bytes)
        stats = run(out)
        assert out.read_bytes() == full.read_bytes(), name
        assert stats.already_done + stats.answered == 7, name
        assert run(out).answered == 0, name

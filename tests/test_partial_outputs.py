"""A failed command leaves nothing half-written: result files are whole or absent, and the files a failed command
created are taken back (validation.atomic_file, outputs_taken_back); files that were there before stay."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from spanqa.cli import main
from spanqa.errors import DataError
from spanqa.validation import outputs_taken_back

Q = "Who wrote Pride and Prejudice?"
CONTEXT = "Pride and Prejudice is an 1813 novel of manners written by Jane Austen."


def squad_file(path: Path, n: int = 4) -> Path:
    paras = []
    for i in range(n):
        ctx = f"Item {i} is kept in room {100 + i}. The keeper of item {i} is named Keeper{i}."
        paras.append({"context": ctx, "qas": [{"id": f"q{i}", "question": f"Which room keeps item {i}?",
                                               "answers": [{"text": f"room {100 + i}",
                                                            "answer_start": ctx.index("room")}]}]})
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paras}]}))
    return path


def listing(d: Path) -> dict[str, bytes | None]:
    """Every entry under `d` (a directory as None, a file as its bytes): what a failed command must leave as found."""
    return {str(p.relative_to(d)): None if p.is_dir() else p.read_bytes() for p in sorted(d.rglob("*"))}


def one_line_error(capsys, *words: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    return err


def fail_writing(monkeypatch, name: str) -> None:
    """Path.write_text of a file called `name` (or its temporary twin) writes a few bytes, then the disk is full."""
    real = Path.write_text
    stem = name.split(".")[0]

    def write_text(self, text, *args, **kwargs):
        if self.name == name or self.name.startswith(f".{stem}.tmp"):
            real(self, text[:5], *args, **kwargs)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)


# ---- evaluate ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("failing", ["null_odds.json", "metrics.json"])
def test_evaluate_failing_mid_write_leaves_out_as_found(tiny_model_dir, tmp_path, capsys, monkeypatch, failing):
    data, out = squad_file(tmp_path / "d.json"), tmp_path / "ev"
    out.mkdir()
    (out / "predictions.json").write_text("an older run's\n")
    (out / "notes.txt").write_text("mine\n")
    before = listing(out)
    fail_writing(monkeypatch, failing)
    assert main(["evaluate", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out),
                 "--no-progress"]) == 2
    one_line_error(capsys, f"{out / failing}: cannot write (No space left on device)")
    assert listing(out) == before  # no result, no half a result, no temporary file; the old file untouched


def test_evaluate_with_a_directory_where_a_result_goes_is_refused_before_the_work(tiny_model_dir, tmp_path, capsys):
    data, out = squad_file(tmp_path / "d.json"), tmp_path / "ev"
    (out / "metrics.json").mkdir(parents=True)
    before = listing(out)
    assert main(["evaluate", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out),
                 "--no-progress"]) == 2
    one_line_error(capsys, f"--out {out}: holds a directory metrics.json where a file is written")
    assert listing(out) == before


def test_evaluate_results_are_taken_back_when_the_command_then_fails(tiny_reader, tmp_path):
    from spanqa.data import load_dataset
    from spanqa.evaluation import OUT_FILES, evaluate

    data = load_dataset(squad_file(tmp_path / "d.json"))
    new, old = tmp_path / "new" / "ev", tmp_path / "old"
    old.mkdir()
    (old / "metrics.json").write_text("{}")
    for out in (new, old):
        with pytest.raises(KeyboardInterrupt), outputs_taken_back():
            evaluate(tiny_reader, data, out_dir=out)
            assert sorted(p.name for p in out.iterdir()) == sorted(OUT_FILES)  # all written, whole
            raise KeyboardInterrupt  # then the command fails (an interrupt while printing the metrics)
    assert not (tmp_path / "new").exists()  # the files it created, then the directories made for them
    assert [p.name for p in old.iterdir()] == ["metrics.json"]  # a file that was there before stays
    assert json.loads((old / "metrics.json").read_text())["num_questions"] == 4
    evaluate(tiny_reader, data, out_dir=new)  # and a run that does not fail keeps them all
    assert sorted(p.name for p in new.iterdir()) == sorted(OUT_FILES)


# ---- explain ----------------------------------------------------------------------------------------------------
def test_explain_failing_mid_save_leaves_no_chart(tiny_model_dir, tmp_path, capsys, monkeypatch):
    from matplotlib.figure import Figure

    def savefig(self, path, *args, **kwargs):
        Path(path).write_bytes(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", savefig)
    out = tmp_path / "charts" / "c.png"
    assert main(["explain", "--model", str(tiny_model_dir), "--question", Q, "--context", CONTEXT, "--out",
                 str(out), "--no-progress"]) == 2
    one_line_error(capsys, f"{out}: cannot write the chart (No space left on device)")
    assert listing(tmp_path) == {}  # no chart, no temporary file, no directory made for it
    old = tmp_path / "old.png"
    old.write_bytes(b"an older chart")
    assert main(["explain", "--model", str(tiny_model_dir), "--question", Q, "--context", CONTEXT, "--out",
                 str(old), "--no-progress"]) == 2
    assert listing(tmp_path) == {"old.png": b"an older chart"}


def test_a_new_chart_is_taken_back_when_the_command_then_fails(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import spanqa.explain

    real = spanqa.explain.explain

    def explain_then_interrupt(*args, **kwargs):
        answer, path = real(*args, **kwargs)
        assert path.read_bytes()[:4] == b"\x89PNG"
        raise KeyboardInterrupt

    monkeypatch.setattr(spanqa.explain, "explain", explain_then_interrupt)
    out = tmp_path / "charts" / "c.png"
    assert main(["explain", "--model", str(tiny_model_dir), "--question", Q, "--context", CONTEXT, "--out",
                 str(out), "--no-progress"]) == 130
    assert listing(tmp_path) == {}


# ---- answer --input and ask --input -----------------------------------------------------------------------------
def write_questions(path: Path, n: int, context: bool = True) -> Path:
    path.write_text("".join(json.dumps({"id": f"q{i}", "question": f"What of Jane Austen, {i}?",
                                        **({"context": CONTEXT} if context else {})}) + "\n" for i in range(n)))
    return path


def failing_after(calls: int, answer):
    """`answer`, that fails (as an engine error would) on its call number `calls` + 1."""
    done = []

    def fail(*args, **kwargs):
        if len(done) == calls:
            raise DataError("the engine failed")
        done.append(1)
        return answer(*args, **kwargs)

    return fail


def test_answer_input_failing_in_the_first_chunk_leaves_no_output(tiny_model_dir, tmp_path, capsys, monkeypatch):
    from spanqa.reader import Reader

    inp = write_questions(tmp_path / "q.jsonl", 5)
    monkeypatch.setattr(Reader, "predict", failing_after(0, Reader.predict))
    out = tmp_path / "new" / "a.jsonl"
    argv = ["answer", "--model", str(tiny_model_dir), "--engine", "torch", "--input", str(inp), "--no-progress",
            "--chunk", "2"]
    assert main([*argv, "--output", str(out)]) == 2
    one_line_error(capsys, "the engine failed")
    assert listing(tmp_path) == {"q.jsonl": inp.read_bytes()}  # no answers file, no log, no directory
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")  # an output that was there before stays as found; the log this run began goes
    assert main([*argv, "--output", str(empty)]) == 2
    assert listing(tmp_path) == {"empty.jsonl": b"", "q.jsonl": inp.read_bytes()}


@pytest.fixture()
def asker(tmp_path, tiny_reader):
    """(Index with the tiny reader, questions file) for `ask --input`."""
    from spanqa.ask import Index

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "d.txt").write_text(CONTEXT)
    index = Index.build([docs], tmp_path / "idx")
    index.reader = tiny_reader
    return index, write_questions(tmp_path / "q.jsonl", 5, context=False)


def test_ask_input_failing_in_the_first_chunk_leaves_no_output(asker, tmp_path, monkeypatch):
    index, inp = asker
    monkeypatch.setattr(index, "ask_many", failing_after(0, index.ask_many))
    out = tmp_path / "new" / "a.jsonl"
    with pytest.raises(DataError, match="the engine failed"):
        index.ask_file(inp, out, chunk=2, progress=False)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("command", ["answer", "ask"])
def test_a_failure_after_a_chunk_keeps_the_output_and_resumes_to_the_same_bytes(tmp_path, tiny_reader, asker,
                                                                                command, monkeypatch):
    from spanqa.batch_answer import answer_file

    index, questions = asker
    if command == "answer":
        inp = write_questions(tmp_path / "qc.jsonl", 5)

        def run(out):
            return answer_file(tiny_reader, inp, out, chunk=2, progress=False)
        owner, name = tiny_reader, "predict"
    else:
        def run(out):
            return index.ask_file(questions, out, chunk=2, progress=False)
        owner, name = index, "ask_many"
    full = tmp_path / "full.jsonl"
    run(full)
    out = tmp_path / "new" / "a.jsonl"
    real = getattr(owner, name)
    monkeypatch.setattr(owner, name, failing_after(1, real))
    with pytest.raises(DataError, match="the engine failed"):
        run(out)
    assert len(out.read_text().splitlines()) == 2  # the first chunk stays, to be resumed
    assert len((tmp_path / "new" / "a.jsonl.spanqa").read_text().splitlines()) == 1 + 2
    monkeypatch.setattr(owner, name, real)
    assert run(out).answered == 3
    assert out.read_bytes() == full.read_bytes()
    assert (tmp_path / "new" / "a.jsonl.spanqa").read_bytes() == (tmp_path / "full.jsonl.spanqa").read_bytes()


# ---- the teacher file -------------------------------------------------------------------------------------------
def test_save_targets_failing_mid_write_leaves_no_temporary_file(tiny_reader, tmp_path, monkeypatch):
    import safetensors.numpy

    from spanqa.data import Example
    from spanqa.distill import save_targets, teach

    targets = teach(tiny_reader, [Example("q0", Q, CONTEXT)], meta={"teacher": "tiny"})

    def save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a teacher file")
        raise OSError(errno.ENOSPC, "No space left on device")

    real = safetensors.numpy.save_file
    monkeypatch.setattr(safetensors.numpy, "save_file", save_file)
    with pytest.raises(DataError, match="t.safetensors: cannot write the teacher file .No space left on device."):
        save_targets(targets, tmp_path / "t.safetensors")
    assert listing(tmp_path) == {}
    monkeypatch.setattr(safetensors.numpy, "save_file", real)
    for keep in (False, True):  # a command that fails after it: the file is taken back, unless training keeps it
        with pytest.raises(KeyboardInterrupt), outputs_taken_back():
            save_targets(targets, tmp_path / "t.safetensors", keep=keep)
            raise KeyboardInterrupt
        assert (tmp_path / "t.safetensors").exists() == keep

"""CLI smoke tests (answer, train, evaluate) and the errors users see: one line, exit 2, no traceback."""

import json
import subprocess
import sys

import pytest

from spanqa.cli import main


def squad_file(path, n=6):
    paras = []
    for i in range(n):
        ctx = f"Item {i} is kept in room {100 + i}. The keeper of item {i} is named Keeper{i}."
        paras.append({"context": ctx, "qas": [
            {"id": f"q{i}", "question": f"Which room keeps item {i}?",
             "answers": [{"text": f"room {100 + i}", "answer_start": ctx.index("room")}]}]})
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paras}]}))
    return path


def test_answer_json(tiny_model_dir, capsys):
    ctx = "Grace Hopper   wrote\tthe first compiler in 1952 — café 😀."
    assert main(["answer", "--model", str(tiny_model_dir), "--question", "who?", "--context", ctx,
                 "--json", "--top-k", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"answers", "no_answer"} and 1 <= len(out["answers"]) <= 3
    assert all(ctx[a["start"] : a["end"]] == a["text"] for a in out["answers"])


def test_answer_from_context_file(tiny_model_dir, tmp_path, capsys):
    f = tmp_path / "ctx.txt"
    f.write_text("Paris is the capital of France.")
    assert main(["answer", "--model", str(tiny_model_dir), "--question", "capital?", "--context-file", str(f)]) == 0
    assert capsys.readouterr().out.strip() in "Paris is the capital of France."


def test_train_then_evaluate(tiny_model_dir, tmp_path, capsys):
    data = squad_file(tmp_path / "train.json")
    out = tmp_path / "run"
    assert main(["train", "--base", str(tiny_model_dir), "--train", str(data), "--dev", str(data), "--out",
                 str(out), "--max-steps", "3", "--batch-size", "2", "--no-progress", "--device", "cpu"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 3 and summary["dev"]["num_questions"] == 6
    assert (out / "spanqa.json").exists() and (out / "checkpoint" / "trainer_state.json").exists()
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[0]["event"] == "start" and log[-1]["event"] == "end"
    assert main(["train", "--base", str(tiny_model_dir), "--train", str(data), "--out", str(out),
                 "--max-steps", "3"]) == 2
    assert "--resume" in capsys.readouterr().err
    # resume with more steps continues from step 3
    assert main(["train", "--base", str(tiny_model_dir), "--train", str(data), "--out", str(out),
                 "--max-steps", "5", "--batch-size", "2", "--no-progress", "--resume", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 5

    ev = tmp_path / "ev"
    assert main(["evaluate", "--model", str(out), "--data", str(data), "--out", str(ev), "--json",
                 "--limit", "4"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    for k in ("exact_match", "f1", "begin_accuracy", "end_accuracy", "num_questions"):
        assert k in metrics
    assert metrics["num_questions"] == 4
    preds = json.loads((ev / "predictions.json").read_text())
    assert sorted(preds) == ["q0", "q1", "q2", "q3"] and all(isinstance(v, str) for v in preds.values())
    assert (ev / "nbest.json").exists() and (ev / "metrics.json").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["evaluate", "--model", "{model}", "--data", "{tmp}/missing.json"], "missing.json: file not found"),
        (["evaluate", "--model", "{model}", "--data", "{tmp}/malformed.json"], "malformed JSON"),
        (["evaluate", "--model", "{model}", "--data", "{tmp}/wrong_start.json"], "answer_start"),
        (["evaluate", "--model", "{model}", "--data", "{tmp}/empty_q.json"], "field 'question' is empty"),
        (["answer", "--model", "{model}", "--question", " ", "--context", "x"], "--question is empty"),
        (["answer", "--model", "{tmp}/nomodel", "--question", "q", "--context", "x"], "model directory not found"),
        (["answer", "--model", "{model}/spanqa.json", "--question", "q", "--context", "x"],
         "spanqa.json: is a file, expected a model directory"),
        (["calibrate", "--model", "{model}/spanqa.json", "--data", "{tmp}/ok.json", "--out", "{tmp}/cal"],
         "spanqa.json: is a file, expected a model directory"),
        (["answer", "--model", "{model}", "--question", "q", "--context-file", "{tmp}/none.txt"], "not found"),
        (["train", "--base", "{model}", "--train", "{tmp}/wrong_start.json", "--out", "{tmp}/o"], "answer_start"),
        (["train", "--base", "{model}", "--train", "{tmp}/ok.json", "--out", "{tmp}/o2", "--max-seq-len", "2000"],
         "above the encoder's limit"),
    ],
)
def test_bad_input_is_one_clear_line(tiny_model_dir, tmp_path, capsys, args, message):
    (tmp_path / "malformed.json").write_text('{"data": [')
    squad_file(tmp_path / "ok.json")
    good = json.loads((tmp_path / "ok.json").read_text())
    bad = json.loads(json.dumps(good))
    bad["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = 1
    (tmp_path / "wrong_start.json").write_text(json.dumps(bad))
    empty = json.loads(json.dumps(good))
    empty["data"][0]["paragraphs"][1]["qas"][0]["question"] = ""
    (tmp_path / "empty_q.json").write_text(json.dumps(empty))
    argv = [a.format(model=tiny_model_dir, tmp=tmp_path) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("spanqa: error:")


@pytest.mark.parametrize("bad", ["missing.json", "malformed.json"])
def test_python_dash_m_exits_2_without_traceback(tiny_model_dir, tmp_path, bad):
    (tmp_path / "malformed.json").write_text('{"data": [')
    argv = ["evaluate", "--model", str(tiny_model_dir), "--data", str(tmp_path / bad)]
    proc = subprocess.run([sys.executable, "-m", "spanqa", *argv], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert bad in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip().splitlines()[-1]]  # exactly one line


def test_serve_on_a_port_in_use_is_one_line_before_the_model_loads(tiny_model_dir):
    import socket
    import time

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "spanqa", "serve", "--model", str(tiny_model_dir), "--port",
                               str(port)], capture_output=True, text=True, timeout=120)
        seconds = time.perf_counter() - t
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"spanqa: error: --host 127.0.0.1 --port {port}: cannot listen "
                                               "there (Address already in use); choose another --port (or --host)"]
    assert seconds < 5  # refused before torch and the model load (about 4 s more here)


def test_serve_skips_an_address_this_machine_lacks_as_uvicorn_does(monkeypatch):
    """`localhost` may resolve to ::1 on a machine with IPv6 turned off: asyncio skips such an address, so the
    check does too, and refuses only when no address can be bound."""
    import socket

    from spanqa.errors import SpanqaError
    from spanqa.serving import check_listen

    lacking = (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.255.255.1", 0))  # no interface has it
    here = (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 0))
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [lacking, here])
    check_listen("localhost", 0)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: [lacking])
    with pytest.raises(SpanqaError, match="cannot listen there"):
        check_listen("localhost", 0)


@pytest.mark.parametrize("command", ["answer", "evaluate", "train", "teach", "negatives", "calibrate", "serve",
                                     "explain", "export", "index", "ask"])
def test_help_names_no_empty_default_and_helps_every_flag(command, capsys):
    """`train --help` showed `--base BASE ... (default: )` and `--teacher ... (default: )`; `--question` and
    `--context` had no help at all."""
    from spanqa.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    bare = [a.option_strings[-1] for a in sub._actions if not a.help]
    assert not bare, f"{command}: flags without help: {bare}"
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0 and "(default: )" not in capsys.readouterr().out

def test_evaluate_names_every_file_it_wrote(tiny_model_dir, tmp_path, capsys):
    data = squad_file(tmp_path / "dev.json")
    ev = tmp_path / "ev"
    assert main(["evaluate", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(ev), "--limit", "2",
                 "--no-progress"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    written = sorted(p.name for p in ev.iterdir())
    assert "null_odds.json" in written and last == f"wrote {', '.join(sorted(written, key=last.find))} to {ev}"


def test_a_flag_is_never_taken_as_an_abbreviation_of_another(capsys):
    """argparse took `evaluate --threads 1` as --threads-per-actor (a Ray setting, ignored without --ray), so the run
    went on without the thread count asked for; a flag the command does not have is now one line."""
    for argv in (["evaluate", "--data", "d.json", "--threads", "1"], ["answer", "--quest", "q", "--context", "c"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert f"unrecognized arguments: {argv[-2]}" in err or f"unrecognized arguments: {argv[1]}" in err, err

"""`spanqa explain` and the CLI side of `spanqa serve` (flags, errors); the chart files themselves."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest

from spanqa.cli import main

pytest.importorskip("matplotlib")

CONTEXT = "Pride and Prejudice is an 1813 novel of manners written by Jane Austen."
Q = "Who wrote Pride and Prejudice?"


def test_plot_writes_png_and_svg(tiny_reader, tmp_path):
    from spanqa.explain import plot_probabilities, token_probabilities

    tp = token_probabilities(tiny_reader, [Q], [CONTEXT])[0]
    png = plot_probabilities(tp, tmp_path / "c.png", Q, span=(59, 70), answer="Jane Austen")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = plot_probabilities(tp, tmp_path / "sub" / "c.svg", Q + " $x$", span=None, answer=None, log_scale=True)
    assert b"<svg" in svg.read_bytes()[:1000]


@pytest.mark.parametrize("log_scale", [False, True])
def test_a_chart_of_a_long_document_is_drawn_in_seconds(tmp_path, log_scale):
    """120,000 words drew 240,000 bar patches: `explain` had not finished after 120 s. Past BARS_UP_TO tokens the
    probabilities are drawn as one line collection per head."""
    import time

    from spanqa.explain import BARS_UP_TO, plot_probabilities
    from spanqa.scoring import TokenProbs

    n = 100_000
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(n)).tolist()
    tp = TokenProbs(text=["w"] * n, start=list(range(0, 2 * n, 2)), end=list(range(1, 2 * n, 2)), p_begin=p, p_end=p)
    t = time.perf_counter()
    png = plot_probabilities(tp, tmp_path / "long.png", Q, span=(10, 20), answer="w", log_scale=log_scale)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and n > BARS_UP_TO
    assert time.perf_counter() - t < 60  # a few seconds here; bars took minutes


def test_explain_cli_on_a_saved_model(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "chart.png"
    assert main(["explain", "--model", str(tiny_model_dir), "--question", Q, "--context", CONTEXT,
                 "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["chart"] == str(out) and out.read_bytes()[:4] == b"\x89PNG"
    a = printed["answers"][0]
    assert CONTEXT[a["start"] : a["end"]] == a["text"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--question", Q, "--context", CONTEXT, "--out", "chart.jpg"], "must end in one of .png, .svg, .pdf"),
        (["--question", " ", "--context", CONTEXT, "--out", "c.png"], "--question is empty"),
        (["--question", Q, "--context", "", "--out", "c.png"], "the context is empty"),
        (["--question", Q, "--context-file", "/nonexistent/ctx.txt", "--out", "c.png"], "context file not found"),
    ],
)
def test_explain_cli_errors_are_one_line(argv, message, capsys):
    assert main(["explain", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--engine", "onnx"], "engine 'onnx' is not available"),
        (["--port", "70000"], "--port must be between 0 and 65535"),
        (["--api-key", "clé"], "printable ASCII"),
        (["--max-batch", "0"], "--max-batch must be at least 1"),
        (["--model", "/nonexistent/model"], "model directory not found"),
    ],
)
def test_serve_cli_errors_are_one_line(argv, message, capsys):
    from spanqa.reader import Reader

    if message.startswith("engine") and "engine" in inspect.signature(Reader.load).parameters:
        pytest.skip("Reader.load takes an engine in this version")
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_serve_cli_settings_and_env_api_key(monkeypatch):
    import spanqa.serving as serving

    seen = {}
    monkeypatch.setattr(serving, "serve", lambda s: seen.setdefault("s", s))
    monkeypatch.setenv("SPANQA_API_KEY", "from-env")
    assert main(["serve", "--port", "9001", "--batch-wait-ms", "0"]) == 0
    s = seen["s"]
    assert (s.host, s.port, s.run.engine, s.serve.api_key, s.serve.batch_wait_ms) == ("127.0.0.1", 9001, "auto",
                                                                                   "from-env", 0)
    seen.clear()
    assert main(["serve", "--api-key", "from-flag"]) == 0
    assert seen["s"].serve.api_key == "from-flag"


def test_serve_passes_the_engine_to_reader_load(monkeypatch):
    import spanqa.serving as serving
    from spanqa.config import RunConfig, ServerSettings
    from spanqa.errors import SpanqaError
    from spanqa.reader import Reader

    calls = []

    def load(path=None, device=None, engine="torch"):
        calls.append((path, device, engine))
        raise SpanqaError("stop here")

    monkeypatch.setattr(Reader, "load", staticmethod(load))
    with pytest.raises(SpanqaError, match="stop here"):
        serving.serve(ServerSettings(RunConfig(model="m", device="cpu", engine="onnx-int8")))
    assert calls == [("m", "cpu", "onnx-int8")]


def test_explain_default_model_peaks_on_the_answer(tmp_path):
    """The shipped model: the chart's highest P_begin and P_end sit on the answer's first and last tokens."""
    from spanqa.explain import explain, token_probabilities
    from spanqa.reader import Reader

    reader = Reader.load(device="cpu")
    answer, path = explain(reader, Q, CONTEXT, tmp_path / "c.svg")
    assert answer["answers"][0]["text"] == "Jane Austen" and path.exists()
    tp = token_probabilities(reader, [Q], [CONTEXT])[0]
    assert tp.text[max(range(len(tp)), key=tp.p_begin.__getitem__)] == "Jane"
    assert tp.text[max(range(len(tp)), key=tp.p_end.__getitem__)] == "Austen"

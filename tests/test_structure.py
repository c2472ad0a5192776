"""The code's structure, proved: one scoring pass, old models load the same, no import cycles, config in one place."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest

from spanqa.cli import build_parser
from spanqa.config import AnswerConfig, RunConfig, ServeConfig, ServerSettings, SettingError, TrainConfig

SRC = Path(__file__).resolve().parents[1] / "src" / "spanqa"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
CONTEXT = ("Pride and Prejudice is an 1813 novel of manners written by Jane Austen. The novel follows the character "
           "development of Elizabeth Bennet, the protagonist of the book.")
Q = "Who wrote Pride and Prejudice?"


# ---- one scoring pass --------------------------------------------------------------------------------------------
def test_span_score_is_the_product_of_the_same_pass_token_probabilities(tiny_reader):
    pred = tiny_reader.answer(Q, CONTEXT, top_k=10, probabilities=True)
    tp = pred.probabilities
    assert len(tp.null) == 1  # one window: every token is listed from it
    begin = {s: p for s, p in zip(tp.start, tp.p_begin, strict=True)}
    end = {e: p for e, p in zip(tp.end, tp.p_end, strict=True)}
    assert len(pred.answers) == 10
    for a in pred.answers:
        assert a.score == pytest.approx(begin[a.start] * end[a.end], rel=1e-5)
    # and the probabilities are the decoder's softmax: with [CLS] they sum to one in the window
    assert sum(tp.p_begin) + tp.null[0][0] == pytest.approx(1.0, abs=1e-5)
    assert sum(tp.p_end) + tp.null[0][1] == pytest.approx(1.0, abs=1e-5)
    assert pred.null_log_score == pytest.approx(math.log(tp.null[0][0]) + math.log(tp.null[0][1]), abs=1e-5)


def test_long_context_spans_and_probabilities_come_from_one_pass(tiny_reader, monkeypatch):
    context = " ".join([CONTEXT] * 40)  # several windows
    calls = []
    logits = tiny_reader.logits
    monkeypatch.setattr(tiny_reader, "logits", lambda batch: calls.append(len(batch["input_ids"])) or logits(batch))
    pred = tiny_reader.answer(Q, context, top_k=3, probabilities=True)
    n_windows = len(pred.probabilities.null)
    assert n_windows > 1 and sum(calls) == n_windows  # each window through the network exactly once
    starts = pred.probabilities.start
    assert starts == sorted(starts) and len(set(starts)) == len(starts)  # each token once, in context order


def test_api_return_probabilities_runs_the_network_once(tiny_reader, monkeypatch):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from spanqa.api import create_app

    calls = []
    logits = tiny_reader.logits
    monkeypatch.setattr(tiny_reader, "logits", lambda batch: calls.append(1) or logits(batch))
    with TestClient(create_app(tiny_reader, ServeConfig())) as client:
        r = client.post("/v1/answer", json={"question": Q, "context": CONTEXT, "return_probabilities": True})
    assert r.status_code == 200 and r.json()["probabilities"]["tokens"]
    assert len(calls) == 1  # one window, one forward pass: the answer and the chart read the same logits


# ---- a model saved before the refactoring ------------------------------------------------------------------------
def test_a_model_saved_by_the_old_code_loads_and_answers_identically():
    from spanqa.reader import Reader

    reader = Reader.load(FIXTURES / "legacy_tiny_reader", device="cpu", engine="torch")
    expected = json.loads((FIXTURES / "legacy_tiny_reader.expected.json").read_text())
    preds = reader.predict([e["question"] for e in expected], [e["context"] for e in expected], top_k=5)
    assert reader.config.head.kind == "mlp" and reader.config.decode.null_threshold == 0.5
    for want, got in zip(expected, preds, strict=True):
        assert [(a["start"], a["end"], a["text"]) for a in want["answers"]] == \
            [(a.start, a.end, a.text) for a in got.answers]
        assert [a["score"] for a in want["answers"]] == pytest.approx([a.score for a in got.answers], rel=1e-5)
        assert want["no_answer"] == got.no_answer
        assert want["null_log_score"] == pytest.approx(got.null_log_score, abs=1e-5)


# ---- modules without cycles -------------------------------------------------------------------------------------
def import_graph() -> dict[str, set[str]]:
    """spanqa module -> the spanqa modules it imports anywhere (top level or inside functions)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(SRC.glob("*.py")):
        name = path.stem
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                mods = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            else:
                continue
            for m in mods:
                parts = m.split(".")
                if parts[0] == "spanqa" and len(parts) > 1 and (SRC / f"{parts[1]}.py").exists():
                    deps.add(parts[1])
        deps.discard(name)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (cycle := visit(d)):
                return cycle
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (cycle := visit(n)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycles_inside_spanqa():
    graph = import_graph()
    assert {"reader", "formatting", "scoring", "config", "checkpoint"} <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    assert graph["config"] <= {"errors"} and graph["validation"] <= {"errors"}  # the stdlib-only foundations


# ---- config in one place -----------------------------------------------------------------------------------------
def test_cli_defaults_and_help_come_from_the_dataclasses():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    train = {a.dest: a for a in sub["train"]._actions}
    flat = TrainConfig().flat()
    for name in ("lr", "batch_size", "max_seq_len", "doc_stride", "epochs", "eval_limit", "save_every", "head"):
        assert train[name].default == flat[name], name
    assert train["lr"].help.startswith("peak learning rate")
    for command in ("answer", "evaluate", "explain", "serve"):  # one --device default everywhere
        acts = {a.dest: a for a in sub[command]._actions}
        assert acts["device"].default == RunConfig().device == "auto"
        assert acts["engine"].default == RunConfig().engine
    answer = {a.dest: a for a in sub["answer"]._actions}
    assert answer["top_k"].default == AnswerConfig().top_k


def test_cli_flags_build_the_same_config_as_the_api():
    args = build_parser().parse_args(["train", "--train", "t.json", "--out", "o", "--lr", "3e-4", "--head", "mlp",
                                      "--max-seq-len", "128", "--train-embeddings", "--no-progress"])
    from spanqa.cli import TRAIN_SKIP, build

    cfg = build(TrainConfig, args, skip=TRAIN_SKIP)
    assert cfg == TrainConfig.from_flat(train="t.json", out="o", lr=3e-4, head="mlp", max_seq_len=128,
                                        freeze_word_embeddings=False, progress=False)
    assert cfg.optim.lr == 3e-4 and cfg.reader.head.kind == "mlp" and cfg.reader.format.max_seq_len == 128


@pytest.mark.parametrize("make, field", [
    (lambda: TrainConfig.from_flat(batch_size=0), "batch_size"),
    (lambda: TrainConfig.from_flat(max_steps=0), "max_steps"),
    (lambda: TrainConfig.from_flat(lr=-1.0), "lr"),
    (lambda: ServeConfig(max_batch=0), "max_batch"),
    (lambda: ServeConfig(max_batch=100, max_queue_items=50), "max_queue_items"),  # was a 503 "busy" for ever
    (lambda: ServerSettings(port=65536), "port"),
    (lambda: AnswerConfig(top_k=0), "top_k"),
])
def test_value_checks_live_in_the_dataclasses(make, field):
    with pytest.raises(SettingError) as e:
        make()
    assert e.value.name == field


def test_flat_recipe_round_trips():
    cfg = TrainConfig.from_flat(train="a", out="b", lr=2e-4, head="mlp", max_answer_len=12, grad_accum=3)
    assert TrainConfig.from_flat(**cfg.flat()) == cfg
    with pytest.raises(Exception, match="unknown setting"):
        TrainConfig.from_flat(learning_rate=1.0)


# ---- short units -------------------------------------------------------------------------------------------------
def test_no_function_in_src_is_over_80_lines():
    long = []
    for path in sorted(SRC.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > 80:
                    long.append(f"{path.name}:{node.name} {n} lines")
    assert not long, long

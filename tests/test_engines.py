"""ONNX Runtime engines: parity with torch, fused graphs, the build-once cache, CLI flags."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")

from spanqa.batching import collate  # noqa: E402
from spanqa.engines import OnnxEngine, TorchEngine  # noqa: E402
from spanqa.errors import ConfigError  # noqa: E402
from spanqa.formatting import iter_windows  # noqa: E402

QUESTIONS = ["Who gave their name to Normandy?", "When did the Normans live?", "Who was their leader?",
             "Where is Normandy?"]
CONTEXT = ("The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in "
           "France. They were descended from Norse raiders and pirates from Denmark, Iceland and Norway who, under "
           "their leader Rollo, agreed to swear fealty to King Charles III of West Francia.")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("engine_cache")


def a_batch(reader):
    contexts = [CONTEXT, CONTEXT * 3, CONTEXT[:80], CONTEXT]
    windows = list(iter_windows(reader.tokenizer, QUESTIONS, contexts, reader.config.format))
    return collate(windows, reader.tokenizer.pad_token_id)  # uneven lengths: padding is exercised


def test_onnx_logits_match_torch(tiny_reader, cache):
    batch = a_batch(tiny_reader)
    ref_b, ref_e = tiny_reader.logits(batch)
    tiny_reader.set_engine("onnx", cache_dir=cache)
    got_b, got_e = tiny_reader.logits(batch)
    keep = batch["span_mask"]
    assert got_b.shape == ref_b.shape
    assert isinstance(got_b, np.ndarray) and got_b.dtype == ref_b.dtype == np.float32
    np.testing.assert_allclose(got_b[keep], ref_b[keep], atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(got_e[keep], ref_e[keep], atol=1e-4, rtol=1e-4)
    assert (got_b[~keep] == ref_b[~keep]).all() and (ref_b[~keep] == np.finfo(np.float32).min).all()  # masked alike


def test_engines_give_the_same_answers(tiny_reader, cache):
    contexts = [CONTEXT] * len(QUESTIONS)
    ref = tiny_reader.predict(QUESTIONS, contexts, top_k=3)
    for engine in ("onnx", "onnx-int8"):
        tiny_reader.set_engine(engine, cache_dir=cache)
        got = tiny_reader.predict(QUESTIONS, contexts, top_k=3)
        for a, b in zip(ref, got, strict=True):
            assert all(c.text == CONTEXT[c.start : c.end] for c in b.answers)
            if engine == "onnx":
                assert [(c.start, c.end) for c in a.answers] == [(c.start, c.end) for c in b.answers]
                assert [c.score for c in a.answers] == pytest.approx([c.score for c in b.answers], abs=1e-4)
                assert a.null_log_score == pytest.approx(b.null_log_score, abs=1e-4)
    tiny_reader.set_engine("torch")
    assert isinstance(tiny_reader.engine, TorchEngine)


def test_graph_is_fused_and_cached(tiny_reader, cache, monkeypatch):
    import spanqa.engines as engines

    path = engines.cached_graph(tiny_reader.model, int8=True, cache_dir=cache)
    meta = json.loads((path / engines.EXPORT_JSON).read_text())
    n_layers = tiny_reader.model.encoder.config.num_hidden_layers
    assert meta["fused_operators"]["Attention"] == n_layers  # eager export: ORT fused every attention block
    assert meta["fused_operators"]["LayerNormalization"] == 2 * n_layers  # Add + LayerNorm: faster than ORT's Skip-
    assert "SkipLayerNormalization" not in meta["fused_operators"]      # LayerNormalization kernel (engines.UNFUSED)
    assert meta["int8"] and meta["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]

    def no_rebuild(*a, **k):
        raise AssertionError("the cached graph was rebuilt")

    monkeypatch.setattr(engines, "export_onnx", no_rebuild)
    assert engines.cached_graph(tiny_reader.model, int8=True, cache_dir=cache) == path
    with torch.no_grad():
        tiny_reader.model.begin_head.net.bias += 1.0  # new weights: a new graph
    with pytest.raises(AssertionError, match="rebuilt"):
        engines.cached_graph(tiny_reader.model, int8=True, cache_dir=cache)


def test_the_session_keeps_the_layer_norms_unfused(tiny_reader, cache, tmp_path):
    """ORT's own level-2 optimiser would fuse Add + LayerNormalization back into SkipLayerNormalization; the engine's
    sessions disable that fusion (the optimised graph ORT writes out has none), and the answers are unchanged."""
    import onnx
    import onnxruntime as ort

    import spanqa.engines as engines

    graph = engines.cached_graph(tiny_reader.model, int8=True, cache_dir=cache) / engines.GRAPH_FILE
    ops = {}
    for disabled in ([], engines.UNFUSED):
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.optimized_model_filepath = str(tmp_path / f"opt{len(disabled)}.onnx")
        ort.InferenceSession(str(graph), so, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
        ops[len(disabled)] = {n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node}
    assert "SkipLayerNormalization" in ops[0]  # the fusion is real, so disabling it is what keeps it out
    assert "SkipLayerNormalization" not in ops[1] and "LayerNormalization" in ops[1]


def test_engine_errors(tiny_reader):
    with pytest.raises(ConfigError, match="unknown engine"):
        tiny_reader.set_engine("tensorrt")
    tiny_reader.device = torch.device("cuda")  # pretend: the check happens before any graph is built
    with pytest.raises(ConfigError, match="runs on the CPU"):
        tiny_reader.set_engine("onnx")


def test_cli_engine_and_onnx_export(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from spanqa.cli import main

    monkeypatch.setenv("SPANQA_CACHE", str(tmp_path / "cache"))
    args = ["answer", "--model", str(tiny_model_dir), "--question", QUESTIONS[0], "--context", CONTEXT, "--json"]
    assert main([*args, "--engine", "torch"]) == 0
    ref = json.loads(capsys.readouterr().out)
    assert main([*args, "--engine", "onnx"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert [a["text"] for a in got["answers"]] == [a["text"] for a in ref["answers"]]
    assert len(list((tmp_path / "cache" / "engines").iterdir())) == 1

    out = tmp_path / "int8"
    assert main(["export", "--model", str(tiny_model_dir), "--format", "onnx", "--int8", "--out", str(out)]) == 0
    assert "Attention" in capsys.readouterr().out
    meta = json.loads((out / "export.json").read_text())
    assert meta["int8"] and meta["reader"]["format"]["max_seq_len"] == 384
    assert (out / "model.onnx").stat().st_size > 0 and (out / "tokenizer.json").exists()
    assert main(["export", "--model", str(tiny_model_dir), "--format", "hf", "--int8", "--out", str(out)]) == 2
    assert "--int8" in capsys.readouterr().err


def test_missing_onnxruntime_is_a_clear_error(monkeypatch):
    import importlib.util

    from spanqa.engines import check_engine

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install onnxruntime \(or --engine torch\)"):
        check_engine("onnx-int8")
    assert check_engine("torch") == "torch"


def test_the_default_engine_is_onnx_int8_on_a_cpu_and_torch_on_a_gpu(tiny_model_dir, tmp_path, monkeypatch):
    from spanqa.config import RunConfig
    from spanqa.engines import CPU_ENGINE, resolve_engine
    from spanqa.reader import Reader

    cpu, gpu = "cpu", "cuda"
    assert RunConfig().engine == "auto" and CPU_ENGINE == "onnx-int8"
    assert resolve_engine("auto", cpu) == "onnx-int8" and resolve_engine("auto", gpu) == "torch"
    assert [resolve_engine(e, cpu) for e in ("torch", "onnx", "onnx-int8")] == ["torch", "onnx", "onnx-int8"]
    with pytest.raises(ConfigError, match="unknown engine"):
        resolve_engine("fastest", cpu)

    monkeypatch.setenv("SPANQA_CACHE", str(tmp_path / "cache"))
    reader = Reader.load(tiny_model_dir, device="cpu")  # no engine given
    assert reader.engine_name == "onnx-int8" and isinstance(reader.engine, OnnxEngine)
    assert len(list((tmp_path / "cache" / "engines").glob("*-int8"))) == 1
    pred = reader.answer(QUESTIONS[0], CONTEXT, top_k=3)
    assert pred.answers and all(CONTEXT[a.start : a.end] == a.text for a in pred.answers)
    assert isinstance(Reader.load(tiny_model_dir, device="cpu", engine="torch").engine, TorchEngine)
    if torch.cuda.is_available():  # device auto finds the GPU, and auto keeps torch there
        assert Reader.load(tiny_model_dir).engine_name == "torch"


def test_the_cli_defaults_to_auto(monkeypatch, capsys):
    from spanqa.cli import main
    from spanqa.errors import SpanqaError
    from spanqa.reader import Reader

    calls = []

    def load(path=None, device=None, engine="auto"):
        calls.append(engine)
        raise SpanqaError("stop here")

    monkeypatch.setattr(Reader, "load", staticmethod(load))
    assert main(["answer", "--question", "q", "--context", "c"]) == 2
    assert main(["explain", "--question", "q", "--context", "c", "--out", "c.png"]) == 2
    assert main(["answer", "--engine", "torch", "--question", "q", "--context", "c"]) == 2
    assert calls == ["auto", "auto", "torch"]
    assert capsys.readouterr().err.count("stop here") == 3


def test_serve_reports_the_engine_auto_resolved_to(tiny_reader, monkeypatch):
    pytest.importorskip("fastapi")
    import uvicorn
    from fastapi.testclient import TestClient

    import spanqa.serving as serving
    from spanqa.config import RunConfig, ServerSettings
    from spanqa.reader import Reader

    tiny_reader.engine_name = "onnx-int8"  # what auto resolves to on a CPU, without building a graph here
    seen = {}
    monkeypatch.setattr(Reader, "load", staticmethod(lambda path=None, device=None, engine="auto": tiny_reader))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.setdefault("app", app))
    serving.serve(ServerSettings(RunConfig(device="cpu")))
    with TestClient(seen["app"]) as client:
        assert client.get("/healthz").json()["engine"] == "onnx-int8"


def test_a_second_load_starts_from_the_cached_graph_alone(tiny_model_dir, tiny_reader, tmp_path, monkeypatch):
    """The first load indexes the graph under the model files' sizes and times; the next one reads spanqa.json,
    tokenizer.json and the graph (no torch model, no transformers tokenizer) and answers exactly as the first;
    a changed file sends the next load down the full path again."""
    import shutil

    from spanqa.checkpoint import HEADS_FILE, TokenizerJson
    from spanqa.reader import Reader

    monkeypatch.setenv("SPANQA_CACHE", str(tmp_path / "cache"))
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    contexts = [CONTEXT, CONTEXT * 3, CONTEXT[:80], CONTEXT]
    full = Reader.load(model, device="cpu")
    fast = Reader.load(model, device="cpu")
    assert not isinstance(full.tokenizer, TokenizerJson) and full._model is not None
    assert isinstance(fast.tokenizer, TokenizerJson) and fast._model is None and fast.engine_name == "onnx-int8"
    assert len(list((tmp_path / "cache" / "index").iterdir())) == 1
    want, got = full.predict(QUESTIONS, contexts, top_k=3), fast.predict(QUESTIONS, contexts, top_k=3)
    assert [p.to_dict() for p in got] == [p.to_dict() for p in want] and fast._model is None
    # the torch model comes on first use: saving a fast-started reader gives a reader that answers the same
    fast.save(tmp_path / "saved")
    assert fast._model is not None
    again = Reader.load(tmp_path / "saved", device="cpu", engine="torch")
    assert [p.to_dict() for p in again.predict(QUESTIONS, contexts, top_k=3)] == \
        [p.to_dict() for p in Reader.load(model, device="cpu", engine="torch").predict(QUESTIONS, contexts, top_k=3)]

    stat = (model / HEADS_FILE).stat()
    os.utime(model / HEADS_FILE, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # "retrained"
    assert not isinstance(Reader.load(model, device="cpu").tokenizer, TokenizerJson)  # full path, re-indexed
    assert isinstance(Reader.load(model, device="cpu").tokenizer, TokenizerJson)
    assert not isinstance(Reader.load(model, device="cpu", engine="torch").tokenizer, TokenizerJson)


def test_a_model_loaded_by_a_relative_path_starts_fast_from_any_directory(tiny_model_dir, tmp_path, monkeypatch):
    """The index names the tokenizer's directory absolutely: a model first loaded as `model` (relative) and then as
    /abs/model from another directory starts from the cached graph, where the index's relative name pointed at a
    directory without tokenizer.json and failed (`No such file or directory (os error 2)`)."""
    import shutil

    from spanqa.checkpoint import TokenizerJson
    from spanqa.reader import Reader

    monkeypatch.setenv("SPANQA_CACHE", str(tmp_path / "cache"))
    shutil.copytree(tiny_model_dir, tmp_path / "here" / "model")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    want = Reader.load("model", device="cpu").answer(QUESTIONS[0], CONTEXT, top_k=3).to_dict()
    monkeypatch.chdir(tmp_path / "elsewhere")
    fast = Reader.load(tmp_path / "here" / "model", device="cpu")
    assert isinstance(fast.tokenizer, TokenizerJson)
    assert fast.answer(QUESTIONS[0], CONTEXT, top_k=3).to_dict() == want
    # an index entry written with a relative tokenizer directory (before this fix) is a miss, not an error
    for entry in (tmp_path / "cache" / "index").iterdir():
        entry.write_text(json.dumps({**json.loads(entry.read_text()), "tokenizer": "model"}))
    again = Reader.load(tmp_path / "here" / "model", device="cpu")
    assert not isinstance(again.tokenizer, TokenizerJson)
    assert again.answer(QUESTIONS[0], CONTEXT, top_k=3).to_dict() == want


def test_the_cached_answer_path_imports_neither_torch_nor_transformers(tiny_model_dir, tmp_path):
    import subprocess
    import sys

    code = ("import json, sys\nfrom spanqa.cli import main\n"
            f"rc = main(['answer', '--model', {str(tiny_model_dir)!r}, '--device', 'cpu', '--question', "
            f"{QUESTIONS[0]!r}, '--context', {CONTEXT!r}, '--json'])\n"
            "print(json.dumps({'rc': rc, 'torch': 'torch' in sys.modules, "
            "'transformers': 'transformers' in sys.modules}))\n")
    env = {**os.environ, "SPANQA_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    runs = []
    for _ in range(2):  # the first builds the graph (with torch), the second starts from it
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        lines = out.stdout.strip().splitlines()
        runs.append((json.loads(lines[-2]), json.loads(lines[-1])))
    (answer1, first), (answer2, second) = runs
    assert first == {"rc": 0, "torch": True, "transformers": True}
    assert second == {"rc": 0, "torch": False, "transformers": False}
    assert answer2 == answer1


def test_torch_bf16_is_torch_in_bf16_on_the_cpu(tiny_reader, monkeypatch):
    """`torch-bf16` runs the same network with its encoder in bf16: logits within bf16 rounding of fp32 (not equal:
    bf16 is really on); a CPU without AMX or AVX-512 BF16 gets a warning; `torch` is fp32 again after."""
    import warnings

    import spanqa.engines as engines

    batch = a_batch(tiny_reader)
    ref_b, ref_e = tiny_reader.logits(batch)
    monkeypatch.setattr(engines, "cpu_has_fast_bf16", lambda: True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            tiny_reader.set_engine("torch-bf16")
        assert isinstance(tiny_reader.engine, TorchEngine) and tiny_reader.engine_name == "torch-bf16"
        b, e = tiny_reader.logits(batch)
        live = batch["span_mask"].astype(bool)
        assert not np.array_equal(b[live], ref_b[live])
        scale = np.abs(ref_b[live]).max() + np.abs(ref_e[live]).max()
        assert np.abs(b[live] - ref_b[live]).max() < 0.05 * scale
        assert np.abs(e[live] - ref_e[live]).max() < 0.05 * scale
        monkeypatch.setattr(engines, "cpu_has_fast_bf16", lambda: False)
        with pytest.warns(UserWarning, match="no AMX"):
            tiny_reader.set_engine("torch-bf16")
    finally:
        tiny_reader.set_engine("torch")
    assert np.array_equal(tiny_reader.logits(batch)[0], ref_b)


def test_torch_bf16_follows_weights_changed_in_place(tiny_reader):
    """The CPU bf16 engine holds a bf16 copy of the encoder: a weight changed afterwards, in place (an optimiser step
    between evaluations) or by swapping its storage, is in the next answer, as a fresh engine has it, and the reader's
    own model stays fp32."""
    import torch

    batch = a_batch(tiny_reader)
    engine = TorchEngine(tiny_reader.model, bf16=True)
    before = engine(batch)[0]
    param = tiny_reader.model.encoder.embeddings.word_embeddings.weight
    saved = param.detach().clone()
    try:
        with torch.no_grad():
            param.mul_(3.0)
        after = engine(batch)[0]
        fresh = TorchEngine(tiny_reader.model, bf16=True)(batch)[0]
        assert not np.array_equal(after, before)
        assert np.array_equal(after, fresh)
        assert all(p.dtype == torch.float32 for p in tiny_reader.model.parameters())
        param.data = saved * 0.5  # other storage, same version counter
        assert np.array_equal(engine(batch)[0], TorchEngine(tiny_reader.model, bf16=True)(batch)[0])
        assert not np.array_equal(engine(batch)[0], after)
    finally:
        param.data = saved
    assert np.array_equal(engine(batch)[0], before)


def test_cpu_has_fast_bf16_reads_the_flags(monkeypatch, tmp_path):
    import builtins

    import spanqa.engines as engines
    import spanqa.perf as perf

    def no_lscpu(*a, **k):
        raise OSError("no lscpu here")

    monkeypatch.setattr(perf.subprocess, "run", no_lscpu)  # the /proc/cpuinfo path, fed the flags below
    real_open = builtins.open
    for flags, want in (("fpu avx2 avx512f amx_bf16 amx_tile", True), ("fpu avx512_bf16", True),
                        ("fpu avx2 avx512f", False)):
        (tmp_path / "cpuinfo").write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr(builtins, "open",
                            lambda p, *a, **k: real_open(tmp_path / "cpuinfo" if p == "/proc/cpuinfo" else p, *a, **k))
        perf.cpu_flags.cache_clear()  # read once per process
        assert engines.cpu_has_fast_bf16() is want
        monkeypatch.setattr(builtins, "open", real_open)
    perf.cpu_flags.cache_clear()

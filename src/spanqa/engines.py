"""Inference engines: what runs the network inside `Reader.logits(batch)`.

    torch       the SpanModel in PyTorch, on any device
    onnx        ONNX Runtime on the CPU, fp32, on a graph rewritten to ORT's fused BERT operators
                (Attention, EmbedLayerNormalization, SkipLayerNormalization, BiasGelu)
    onnx-int8   the same graph with dynamic int8 quantisation of its MatMuls and Attention

Every engine takes a collated batch of numpy arrays and returns the same thing, masked begin and end logits as numpy
arrays, so batching and decoding are shared. An ONNX graph is built on first use and cached under `$SPANQA_CACHE`
(default `~/.cache/spanqa`), in a directory named by a hash of the weights and the tool versions, so retrained weights
never meet a stale graph. The full load that finds or builds it also indexes it under the model files' paths, sizes
and modification times (`remember`); the next start finds it with a stat of those files (`recall`) and runs without
torch or transformers (spanqa.reader's `Reader.load`): the weights are hashed again only when a file changes.

Two details decide whether ORT's optimizer can fuse attention: the graph is exported from the encoder's *eager*
attention (SDPA exports as a pattern the fuser does not know), and quantising the fused graph needs
`DefaultTensorType`, since ORT's shape inference cannot type the outputs of the fused contrib operators.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from spanqa.config import ENGINES, TORCH_ENGINES
from spanqa.errors import ConfigError, ModelError
from spanqa.validation import umask_mode

if TYPE_CHECKING:  # torch loads with the torch engine or an export, never for a cached graph (see recall)
    import torch

    from spanqa.model import SpanModel

GRAPH_FILE = "model.onnx"
EXPORT_JSON = "export.json"
OPSET = 17
EXPORT_FORMAT = 3  # bump when the graph's layout changes, to invalidate cached graphs
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


# What `auto` runs on a CPU: the fastest engine whose dev-v1.1 F1 stays within 0.5 of torch fp32 (measured on the first
# 2,000 dev-v1.1 questions with the shipped model; see the README). GPUs keep torch.
CPU_ENGINE = "onnx-int8"


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine not in (*TORCH_ENGINES, "auto"):
        need_onnx()
    return engine


def resolve_engine(engine: str, device_type: str) -> str:
    """The engine `engine` names on a device of `device_type` ("cpu", "cuda"): `auto` is CPU_ENGINE on a CPU, torch
    elsewhere."""
    if check_engine(engine) != "auto":
        return engine
    return CPU_ENGINE if device_type == "cpu" else "torch"


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AMX, or AVX-512 BF16), from its flags (spanqa.perf)."""
    from spanqa.perf import cpu_flags

    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


def need_onnx() -> None:
    import importlib.util

    missing = [m for m in ("onnxruntime", "onnx") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"the ONNX engines (the default on a CPU) and export need {' and '.join(missing)}, "
                          f"dependencies of spanqa: pip install {' '.join(missing)} (or --engine torch)")


# ---- the runtime ---------------------------------------------------------------------------------------------------
class TorchEngine:
    """The SpanModel in PyTorch on the model's device, numpy in, numpy out. bf16: autocast on a GPU (and on mps with
    `bf16`); on a CPU with `bf16`, a copy of the encoder held in bf16, which answered 1.21x faster than autocast on the
    2-core Xeon (AMX), since autocast casts every weight again on every forward pass (500 dev questions, 4 alternating
    rounds: 88.5 q/s against 72.9; F1 -0.09). The heads stay fp32."""

    batch_tokens = 4096  # padded tokens per forward pass (Reader.max_batch_tokens)

    def __init__(self, model: SpanModel, bf16: bool = False):
        self.model, self.bf16 = model, bf16
        self._held: SpanModel | None = None
        self._held_of: tuple[tuple[int, int], ...] = ()
        dev = next(model.parameters()).device
        if bf16 and dev.type == "cpu" and not cpu_has_fast_bf16():
            warnings.warn("torch-bf16: this CPU has no AMX or AVX-512 BF16 instructions, so bf16 runs slower than "
                          "fp32 here; --engine onnx-int8 or torch is faster", stacklevel=2)

    def __call__(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        import torch

        dev = next(self.model.parameters()).device
        args = (torch.from_numpy(batch[k]).to(dev) for k in ("input_ids", "attention_mask", "span_mask",
                                                              "token_type_ids"))
        held = self.bf16 and dev.type == "cpu"
        autocast = (self.bf16 or dev.type == "cuda") and not held  # as before the held copy, off the CPU (mps too)
        model = self.held_bf16() if held else self.model
        with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=autocast):
            begin, end = model(*args)
        return begin.float().cpu().numpy(), end.float().cpu().numpy()

    def held_bf16(self) -> SpanModel:
        """The model with its encoder in bf16, made again whenever a weight changed since: in place (training between
        evaluations, a load_state_dict), which bumps the tensor's version counter, or swapped for other storage
        (`p.data = ...`, which does not); both are read without reading the weights."""
        import torch

        versions = tuple((p.data_ptr(), p._version) for p in self.model.parameters())
        if self._held is None or versions != self._held_of:
            with torch.no_grad():
                self._held = copy.deepcopy(self.model).eval()
                self._held.encoder.to(torch.bfloat16)
            self._held_of = versions
        return self._held


class OnnxEngine:
    """An ONNX Runtime session on the CPU, fed the collated batch's numpy arrays."""

    # Small batches: on a 2-core Xeon (AMX) onnx-int8 answered 1,000 dev questions at 81 q/s with 512 padded tokens
    # per batch against 65 with 4,096, and a question over 10 passages in 155-180 ms against 280 (the activations of
    # a small batch stay in the cache).
    batch_tokens = 512

    def __init__(self, graph: str | Path, threads: int | None = None):
        import onnxruntime as ort

        if threads is None and "torch" in sys.modules:  # the same threads as the torch engine (set_num_threads)
            threads = sys.modules["torch"].get_num_threads()
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads or 0  # 0: ORT's default, one per physical core (as torch's default)
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(graph), so, providers=["CPUExecutionProvider"],
                                                disabled_optimizers=UNFUSED)
        except Exception as e:  # ORT raises its own exception types for unreadable or invalid graphs
            raise ModelError(f"{graph}: cannot open ONNX graph: {str(e).splitlines()[0]}") from None
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.graph = Path(graph)

    def __call__(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        begin, end = self.session.run(None, {name: batch[name] for name in self.inputs})
        masked = np.finfo(np.float32).min  # as SpanModel masks: non-span positions (but [CLS]) get ~0 mass
        return np.where(batch["span_mask"], begin, masked), np.where(batch["span_mask"], end, masked)


Engine = TorchEngine | OnnxEngine  # a collated batch -> masked (begin, end) logits, numpy (B, T)


def load_engine(kind: str, model: SpanModel, cache_dir: str | Path | None = None,
                threads: int | None = None) -> Engine:
    """The engine for `kind` (not auto: see resolve_engine); an ONNX one opens the cached graph, built on first use."""
    if check_engine(kind) in TORCH_ENGINES:
        return TorchEngine(model, bf16=kind == "torch-bf16")
    return OnnxEngine(cached_graph(model, int8=kind == "onnx-int8", cache_dir=cache_dir) / GRAPH_FILE, threads)


# ---- the cache -----------------------------------------------------------------------------------------------------
def cache_root(cache_dir: str | Path | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("SPANQA_CACHE"):
        return Path(os.environ["SPANQA_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "spanqa"


def weights_hash(model: SpanModel) -> str:
    """sha256 of the encoder config, the head config and every weight: the identity of a graph's source."""
    import torch

    h = hashlib.sha256()
    h.update(model.encoder.config.to_json_string(use_diff=False).encode())
    h.update(json.dumps(model.head_config_dict(), sort_keys=True).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _versions() -> dict:
    from importlib.metadata import version  # not `import onnx`: a cache hit should not pay for it

    return {"onnxruntime": version("onnxruntime"), "onnx": version("onnx"), "torch": version("torch"),
            "transformers": version("transformers"), "export_format": EXPORT_FORMAT}


def cached_graph(model: SpanModel, int8: bool, cache_dir: str | Path | None = None) -> Path:
    """The directory holding this model's graph; exported, optimised (and quantised) on first use."""
    versions = _versions()
    key = hashlib.sha256((weights_hash(model) + json.dumps(versions, sort_keys=True)).encode()).hexdigest()[:20]
    final = cache_root(cache_dir) / "engines" / f"{key}-{'int8' if int8 else 'fp32'}"
    if (final / EXPORT_JSON).exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=final.parent))
    try:
        export_onnx(model, tmp, int8=int8)
        umask_mode([tmp])  # mkdtemp's 0700 would hide a shared cache from other users
        try:
            tmp.rename(final)  # atomic: a half-built graph is never seen under the final name
        except OSError:
            if not (final / EXPORT_JSON).exists():  # not a concurrent build that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# ---- the index: model files -> graph, without hashing the weights ---------------------------------------------------
def _files_key(files: list[Path], int8: bool) -> str:
    """The identity of a model's files as the file system tells it (path, size, modification time), with the tool
    versions: a stat per file, where hashing the weights reads them all."""
    stats = [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    blob = json.dumps([stats, _versions(), int8], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def recall(files: list[Path], int8: bool, cache_dir: str | Path | None = None) -> dict | None:
    """What a full load of these model files left in the index (see remember): the graph directory, the tokenizer
    directory and its pad id and length limit; None when the files changed since, or were never loaded."""
    try:
        entry = cache_root(cache_dir) / "index" / f"{_files_key(files, int8)}.json"
        meta = json.loads(entry.read_text())
    except (OSError, ValueError):
        return None
    graph = cache_root(cache_dir) / "engines" / str(meta.get("graph"))
    return {**meta, "graph": graph} if (graph / EXPORT_JSON).exists() else None


def remember(files: list[Path], int8: bool, graph: Path, extra: dict, cache_dir: str | Path | None = None) -> None:
    """Index `graph` (a directory of cached_graph) under these model files, so the next start finds it with a stat."""
    try:
        index = cache_root(cache_dir) / "index"
        index.mkdir(parents=True, exist_ok=True)
        entry = index / f"{_files_key(files, int8)}.json"
        tmp = entry.with_name(f".{entry.name}.{os.getpid()}")
        tmp.write_text(json.dumps({"graph": Path(graph).name, **extra}))
        os.replace(tmp, entry)  # atomic: a reader sees the old entry or the new one
    except OSError:  # a missing file, a read-only cache: the next start takes the full path again, nothing worse
        pass


# ---- export ---------------------------------------------------------------------------------------------------------
def _logits_module(model: SpanModel, encoder: torch.nn.Module) -> torch.nn.Module:
    """The exported function: token ids -> unmasked (begin, end) logits. Masking stays in Python, for all engines."""
    from torch import nn

    class Logits(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = encoder
            self.begin_head = copy.deepcopy(model.begin_head).cpu().float()  # the reader may live on a GPU
            self.end_head = copy.deepcopy(model.end_head).cpu().float()
            self.uses_token_types = model._uses_token_types

        def forward(self, input_ids, attention_mask, token_type_ids):
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if self.uses_token_types:
                kwargs["token_type_ids"] = token_type_ids
            hidden = self.encoder(**kwargs).last_hidden_state
            return self.begin_head(hidden).float(), self.end_head(hidden).float()

    return Logits()


def eager_copy(encoder: torch.nn.Module) -> torch.nn.Module:
    """The same encoder with eager attention: ORT fuses its MatMul-Softmax-MatMul pattern, not SDPA's."""
    from transformers import AutoModel

    from spanqa.model import without_pooler

    eager = without_pooler(AutoModel.from_config, encoder.config, attn_implementation="eager")
    result = eager.load_state_dict(encoder.state_dict(), strict=False)
    missing = [k for k in result.missing_keys + result.unexpected_keys if not k.startswith("pooler.")]
    if missing:
        raise ModelError(f"cannot rebuild the encoder with eager attention: weights {missing[:3]} do not match")
    return eager.float().eval()


def export_onnx(model: SpanModel, out: str | Path, int8: bool = False, opset: int = OPSET,
                extra: dict | None = None) -> dict:
    """Write `out/model.onnx` (fused for ORT, optionally int8) and `out/export.json` (with `extra`); return the
    latter."""
    need_onnx()
    import onnx
    import torch
    from onnxruntime.transformers.optimizer import optimize_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.encoder.config
    module = _logits_module(model, eager_copy(model.encoder)).eval()
    ids = torch.full((2, 16), 1000, dtype=torch.long)
    args = (ids, torch.ones_like(ids), torch.zeros_like(ids))
    axes = {name: {0: "batch", 1: "tokens"} for name in (*INPUTS, "begin_logits", "end_logits")}
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore")  # tracer warnings about Python bools in HF code: shapes stay dynamic
            torch.onnx.export(module, args, str(raw), input_names=list(INPUTS),
                              output_names=["begin_logits", "end_logits"], dynamic_axes=axes, opset_version=opset,
                              do_constant_folding=True, dynamo=False)
        fused = optimize_model(str(raw), model_type="bert", num_heads=cfg.num_attention_heads,
                               hidden_size=cfg.hidden_size, opt_level=0, optimization_options=fusion_options())
        stats = {k: v for k, v in fused.get_fused_operator_statistics().items() if v}
        target = out / GRAPH_FILE
        if int8:
            opt = Path(tmp) / "fused.onnx"
            fused.save_model_to_file(str(opt))
            quantize_int8(opt, target)
        else:
            fused.save_model_to_file(str(target))
    graph_inputs = [i.name for i in onnx.load(str(target), load_external_data=False).graph.input]
    meta = {"graph": GRAPH_FILE, "int8": int8, "opset": opset, "inputs": graph_inputs,
            "outputs": ["begin_logits", "end_logits"], "fused_operators": stats, "model_type": cfg.model_type,
            "source_sha256": weights_hash(model), "versions": _versions(),
            "note": "outputs are unmasked logits (B, T); mask non-context positions except [CLS] before decoding",
            **(extra or {})}
    (out / EXPORT_JSON).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


# ORT's SkipLayerNormalization kernel took 1.4 ms per [6, 170, 384] input on the 2-core Xeon (12 of them: 22 % of an
# int8 forward pass); Add + LayerNormalization in its place answered 1.09-1.24x faster. So neither the exporter nor the
# session fuses them.
UNFUSED = ["SkipLayerNormFusion"]


def fusion_options():
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions("bert")
    options.enable_skip_layer_norm = False
    options.enable_bias_skip_layer_norm = False
    return options


def quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8: weights int8 per output channel, activations uint8 per tensor, quantised on the fly at each
    MatMul; embeddings, LayerNorms and softmax stay fp32. Per-tensor weights cost the default model 3.5 F1 on 1,000
    dev questions; per-channel weights 0.8."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs a "consider pre-processing" hint at WARNING on the root logger
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Attention"],
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    finally:
        root.setLevel(level)

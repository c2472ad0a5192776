"""The pipeline: `Reader.load(path).answer(question, context, top_k=1)`.

A Reader is a SpanModel (the network), its tokenizer and its ReaderConfig. `predict` makes windows
(spanqa.formatting), scores them in one pass (spanqa.scoring) and merges each question's windows into ranked answers
(spanqa.decoding). Directory formats are spanqa.checkpoint's.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from spanqa import calibration, checkpoint
from spanqa.calibration import Calibration
from spanqa.config import DEVICES_HELP, ENGINES, TORCH_ENGINES, ReaderConfig
from spanqa.decoding import SpanCandidate, is_no_answer, merge_spans
from spanqa.default_model import default_model_dir, resolve_base
from spanqa.errors import ConfigError, ModelError
from spanqa.formatting import Window, check_settings, iter_windows, pair_template
from spanqa.scoring import PassSettings, ScoredWindow, TokenProbs, score_windows
from spanqa.validation import Invalid, check_counts, check_text

if TYPE_CHECKING:  # a reader started from a cached ONNX graph never imports torch (see Reader.load)
    import torch

    from spanqa.model import SpanModel

__all__ = ["Prediction", "Reader", "ReaderConfig", "resolve_device"]


@dataclass
class Prediction:
    """What the reader says about one question."""

    answers: list[SpanCandidate]  # best first
    no_answer: bool
    null_log_score: float  # log P_begin(CLS) + log P_end(CLS), smallest over windows
    windows: list[Window] = field(default_factory=list, repr=False)  # kept only on request
    probabilities: TokenProbs | None = field(default=None, repr=False)  # kept only on request
    p_unanswerable: float | None = None  # calibrated models only

    @property
    def best(self) -> SpanCandidate | None:
        return self.answers[0] if self.answers else None

    @property
    def na_score(self) -> float:
        """log(null) - log(best span): higher means more likely unanswerable."""
        return self.null_log_score - (self.best.log_score if self.best else float("-inf"))

    def to_dict(self, top_k: int | None = None) -> dict:
        answers = self.answers if top_k is None else self.answers[:top_k]
        out = {"answers": [a.as_dict() for a in answers], "no_answer": self.no_answer}
        if self.p_unanswerable is not None:
            out["p_no_answer"] = self.p_unanswerable
        return out


PROGRESS_DELAY_S = 1.0  # a progress bar shows only for work that takes longer than this


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The torch device `--device` names, or a ConfigError: unknown names, and devices this machine lacks (a CUDA
    device with a CPU-only torch, a GPU index past the last), are refused here, once, before any model loads."""
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"--device {device!r}: unknown device; use {DEVICES_HELP}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: no CUDA GPU is usable here (torch {torch.__version__}); use "
                              "--device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: there are only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {device}: MPS is not available here; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device {device}: spanqa runs on {DEVICES_HELP}")
    return dev


def _count_windows(windows: Iterable[Window], bar) -> Iterator[Window]:
    """The windows, adding each example's window count to the bar's total as its first window is made."""
    last = None
    for w in windows:
        if w.example_index != last:
            last = w.example_index
            bar.total += w.siblings
        yield w


def _ticks(scored: Iterable[ScoredWindow], bar) -> Iterator[ScoredWindow]:
    for sw in scored:
        bar.update()
        yield sw


def gpu_possible() -> bool:
    """Whether device `auto` could find a GPU; answered without importing torch (over a second) where it is plainly
    no: a CPU-only torch build, or a machine without an NVIDIA, AMD or WSL GPU driver."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        if version("torch").endswith("+cpu"):
            return False
    except PackageNotFoundError:
        return False
    return any(Path(p).exists() for p in ("/dev/nvidiactl", "/proc/driver/nvidia", "/dev/kfd", "/dev/dxg"))


def check_inputs(questions: Sequence[str], contexts: Sequence[str], **counts: int) -> tuple[int, ...]:
    """Refuse what the reader cannot answer, with one line that names it; return the counts as plain ints."""
    for name, values in (("question", questions), ("context", contexts)):
        if isinstance(values, str | bytes) or not isinstance(values, Sequence | np.ndarray):
            raise ConfigError(f"{name}s must be a list of strings, got {type(values).__name__}")
        for v in values:
            try:
                check_text(v, name, record=False)
            except Invalid as e:
                raise ConfigError(str(e)) from None
    if len(questions) != len(contexts):
        raise ConfigError(f"{len(questions)} questions but {len(contexts)} contexts")
    return check_counts(ConfigError, **counts)


def check_flags(value: bool | Sequence[bool], n: int, name: str = "probabilities") -> list[bool]:
    """One flag per question from one flag for all or a list of `n`; refused otherwise, since a wrong length would
    fail deep in the decoding and a string ("no" is truthy) would silently turn the flag on."""
    if isinstance(value, bool | np.bool_):
        return [bool(value)] * n
    if isinstance(value, str | bytes) or not isinstance(value, Sequence | np.ndarray):
        raise ConfigError(f"{name} must be true, false or a list of {n} of them, got {type(value).__name__}")
    flags = list(value)
    if len(flags) != n:
        raise ConfigError(f"{name}: {len(flags)} flags for {n} questions")
    bad = next((f for f in flags if not isinstance(f, bool | np.bool_)), None)
    if bad is not None:
        raise ConfigError(f"{name} must hold true or false, got {bad!r}")
    return [bool(f) for f in flags]


class Reader:
    """A SpanModel with its tokenizer and settings, run by an engine (torch, onnx, onnx-int8)."""

    chunk_windows = 1024  # windows formatted and scored at a time: memory stays bounded for any context length
    _max_batch_tokens: int | None = None  # set to override the engine's own (Engine.batch_tokens)

    _path: str | os.PathLike | None = None  # where a reader started from a cached graph loads its torch model from

    def __init__(self, model: SpanModel, tokenizer, config: ReaderConfig, device: str | None = None,
                 engine: str = "torch", threads: int | None = None):
        from spanqa.model import encoder_max_positions

        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.device = resolve_device("cpu" if engine not in (*TORCH_ENGINES, "auto") and device in (None, "auto")
                                     else device)
        self.model.to(self.device).eval()
        check_settings(config.format, tokenizer, encoder_max_positions(model.encoder.config))
        self._template = pair_template(tokenizer)
        self.set_engine(engine, threads=threads)

    @property
    def model(self) -> SpanModel:
        """The network in torch; a reader started from a cached ONNX graph loads it on first use (to save, export,
        train or switch engines), never to answer."""
        if self._model is None:
            self._model = checkpoint.load(self._path)[0].to(self.device).eval()
        return self._model

    @model.setter
    def model(self, model: SpanModel) -> None:
        self._model = model

    @property
    def device(self) -> torch.device:
        if self._device is None:  # a reader started from a cached ONNX graph runs on the CPU
            self._device = resolve_device("cpu")
        return self._device

    @device.setter
    def device(self, device: torch.device) -> None:
        self._device = device

    @property
    def max_batch_tokens(self) -> int:
        """Padded tokens per inference batch, whatever batch_size says: the engine's best unless set."""
        return self._max_batch_tokens or self.engine.batch_tokens

    @max_batch_tokens.setter
    def max_batch_tokens(self, value: int | None) -> None:
        self._max_batch_tokens = value

    def set_engine(self, engine: str = "torch", cache_dir: str | None = None, threads: int | None = None) -> Reader:
        """Run the network with `engine` (one of config.ENGINES; `auto` is resolved for this reader's device); ONNX
        graphs are built once and cached. `threads`: ONNX Runtime's intra-op threads (default: torch's setting, else
        one per core)."""
        from spanqa.engines import load_engine, resolve_engine

        engine = resolve_engine(engine, self.device.type)
        if engine not in TORCH_ENGINES and self.device.type != "cpu":
            raise ConfigError(f"engine {engine} runs on the CPU; use device cpu (or the torch engine on {self.device})")
        self.engine_name = engine
        self.engine = load_engine(engine, self.model, cache_dir, threads)
        return self

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_base(cls, base: str, config: ReaderConfig = ReaderConfig(), device: str | None = None) -> Reader:
        """A new reader with fresh heads on a pretrained encoder (local directory, hub id, or `package:NAME`, a
        packaged base: spanqa.default_model.resolve_base)."""
        from spanqa.model import SpanModel, load_encoder, load_tokenizer

        resolve_device(device)
        path = resolve_base(base)
        try:
            encoder = load_encoder(path)
            tokenizer = load_tokenizer(path)
        except (OSError, ValueError) as e:
            raise ModelError(f"cannot load base encoder {base!r}: {str(e).splitlines()[0]}") from None
        return cls(SpanModel(encoder, config.head), tokenizer, replace(config, base=base), device)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, device: str | None = None, engine: str = "auto",
             threads: int | None = None) -> Reader:
        """Load a saved reader directory, or a Hugging Face question-answering checkpoint with linear `qa_outputs`;
        with no path, the default model shipped in the package. `engine`: one of config.ENGINES (`auto`: the fastest
        on this device, see spanqa.engines.CPU_ENGINE); `threads`: the ONNX engines' intra-op threads (the torch
        engine's are the process's, torch.set_num_threads)."""
        if engine not in ENGINES:
            raise ConfigError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
        if device not in (None, "auto", "cpu"):  # the fast start never needs torch for these
            resolve_device(device)  # before the model loads: a device this machine lacks is refused at once
        reader = cls._from_cache(path, device, engine, threads)
        if reader is None:
            model, tokenizer, config = checkpoint.load(path)
            reader = cls(model, tokenizer, config, device, engine, threads)
            reader._remember(path)
        return reader

    @classmethod
    def _from_cache(cls, path: str | os.PathLike | None, device: str | None, engine: str,
                    threads: int | None = None) -> Reader | None:
        """The fast start: on a CPU, with an ONNX engine, a saved reader whose files are unchanged since a full load
        indexed their graph (spanqa.engines.recall) starts from the graph, spanqa.json and tokenizer.json alone,
        without torch or transformers. None where that does not hold: the caller loads in full."""
        from spanqa.engines import GRAPH_FILE, OnnxEngine, recall, resolve_engine

        if not (device == "cpu" or (device in (None, "auto") and not gpu_possible())):
            return None
        kind = resolve_engine(engine, "cpu")
        files = checkpoint.inference_files(path) if kind not in TORCH_ENGINES else None
        hit = recall(files, int8=kind == "onnx-int8") if files else None
        if hit is None or not (Path(hit["tokenizer"]) / "tokenizer.json").is_file():  # old entries: relative
            return None
        reader = cls.__new__(cls)  # a Reader whose torch model and device come on first use (the properties above)
        reader._model, reader._device, reader._path = None, None, path
        reader.tokenizer = checkpoint.TokenizerJson(hit["tokenizer"], hit["pad_token_id"], hit["model_max_length"])
        reader.config = checkpoint.read_meta(Path(path) if path is not None else default_model_dir())[1]
        reader._template = pair_template(reader.tokenizer)
        reader.engine_name, reader.engine = kind, OnnxEngine(hit["graph"] / GRAPH_FILE, threads)
        return reader

    def _remember(self, path: str | os.PathLike | None) -> None:
        """After a full load with an ONNX engine: index its graph under the model's files, for _from_cache."""
        from spanqa.engines import OnnxEngine, remember

        files = checkpoint.inference_files(path)
        if not isinstance(self.engine, OnnxEngine) or not files:
            return
        tokenizer_dir = files[-1].parent
        if checkpoint.same_backend(self.tokenizer, tokenizer_dir):
            remember(files, self.engine_name == "onnx-int8", self.engine.graph.parent,
                     {"tokenizer": str(tokenizer_dir.resolve()), "pad_token_id": self.tokenizer.pad_token_id,
                      "model_max_length": getattr(self.tokenizer, "model_max_length", None)})

    def save(self, path: str | os.PathLike) -> None:
        checkpoint.save(self.model, self.tokenizer, self.config, path)

    # ---- inference ----------------------------------------------------------------------------------------
    def answer(self, question: str, context: str, top_k: int = 1, probabilities: bool = False,
               progress: bool = False) -> Prediction:
        """Answer one question from one context. `answers[0].text == context[start:end]`. `progress`: a bar of
        windows scored, for a long context."""
        return self.predict([question], [context], top_k=top_k, probabilities=probabilities, progress=progress)[0]

    def predict(
        self,
        questions: Sequence[str],
        contexts: Sequence[str],
        top_k: int = 1,
        batch_size: int = 32,
        keep_windows: bool = False,
        progress: bool = False,
        probabilities: bool | Sequence[bool] = False,
    ) -> list[Prediction]:
        """Answer many questions; windows of all questions are batched together, sorted by length.

        `probabilities` (for all questions, or one flag per question) also returns each context token's P_begin and
        P_end, read from the same forward pass as the answers. `progress` shows a bar (questions; windows for one
        question) on stderr once the work takes over PROGRESS_DELAY_S.
        """
        top_k, batch_size = check_inputs(questions, contexts, top_k=top_k, batch_size=batch_size)
        want = check_flags(probabilities, len(questions))
        settings = PassSettings(top_k=top_k, max_answer_len=self.config.decode.max_answer_len, batch_size=batch_size,
                                max_batch_tokens=self.max_batch_tokens, chunk_windows=self.chunk_windows,
                                pad_id=self.tokenizer.pad_token_id or 0, probabilities=any(want),
                                keep_windows=keep_windows)
        windows = iter_windows(self.tokenizer, questions, contexts, self.config.format, self._template)
        from tqdm.auto import tqdm

        one = len(questions) == 1  # one question: count its windows, the only progress there is
        out = []
        with tqdm(total=0 if one else len(questions), desc="answer", unit="window" if one else "q", file=sys.stderr,
                  dynamic_ncols=True, disable=not progress, delay=PROGRESS_DELAY_S) as bar:
            if one and progress:
                windows = _count_windows(windows, bar)
            scored = score_windows(self.logits, windows, settings)
            if one and progress:
                scored = _ticks(scored, bar)
            for ex, parts in itertools.groupby(scored, key=lambda sw: sw.example_index):
                out.append(self._merge(questions[ex], contexts[ex], list(parts), top_k, want[ex]))
                bar.update(0 if one else 1)
        return out

    def _merge(self, question: str, context: str, parts: list[ScoredWindow], k: int, probabilities: bool
               ) -> Prediction:
        """One question's windows -> its ranked answers (each character span once) and its null score."""
        cands = merge_spans(context, list(range(len(parts))), *(np.stack([getattr(p, f) for p in parts]) for f in
                            ("scores", "begins", "ends", "char_starts", "char_ends")), k)
        null_score = min(p.null for p in parts)
        tokens = None
        if probabilities:
            tokens = TokenProbs()
            for n, p in enumerate(parts):
                tokens.extend(p.tokens, n, context)
        p_null, cal = None, self._calibration
        if cal is not None:
            cands, p_null = calibration.apply(cal, question, context, cands, null_score)
        # no span at all (a context whose characters the tokenizer drops) is "no answer", whatever the settings
        no_ans = is_no_answer(null_score, cands[0] if cands else None, self.config.decode, p_null)
        return Prediction(cands, no_ans, null_score, [p.window for p in parts if p.window is not None], tokens,
                          p_null)

    @property
    def _calibration(self) -> Calibration | None:
        """The stored calibration, parsed once for each config the reader is given (config may be replaced)."""
        cached = getattr(self, "_calibration_cache", None)
        if cached is None or cached[0] is not self.config:
            cal = Calibration.from_dict(self.config.calibration) if self.config.calibration else None
            self._calibration_cache = cached = (self.config, cal)
        return cached[1]

    def logits(self, batch: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The one place the network runs: masked begin and end logits (numpy, (B, T)) of a collated batch."""
        return self.engine(batch)

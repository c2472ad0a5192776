"""The public API: `Reader.load(path).answer(question, context, top_k=1)`.

A saved reader is a directory:
    config.json, model.safetensors   the encoder, in Hugging Face format
    heads.safetensors                begin_head.* and end_head.*
    tokenizer files                  the encoder's tokenizer
    spanqa.json                      formatting, decoding and head settings, the no-answer threshold
Loading reads safetensors only, never pickle.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from spanqa.batching import collate, token_budget_batches
from spanqa.data import is_unicode
from spanqa.decoding import DecodeConfig, SpanCandidate, best_spans, is_no_answer, log_probs, merge_spans
from spanqa.errors import ConfigError, ModelError
from spanqa.formatting import FormatConfig, Window, check_settings
from spanqa.model import HeadConfig, SpanReader, load_encoder
from spanqa.streaming import iter_windows

SPANQA_JSON = "spanqa.json"
HEADS_FILE = "heads.safetensors"


@dataclass(frozen=True)
class ReaderConfig:
    format: FormatConfig = FormatConfig()
    decode: DecodeConfig = DecodeConfig()
    head: HeadConfig = HeadConfig()
    base: str = ""  # the encoder this reader was fine-tuned from
    training: dict = field(default_factory=dict)  # recipe and scores, for the record

    def to_dict(self) -> dict:
        return {"spanqa_format_version": 1, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict, where: str = "spanqa.json") -> ReaderConfig:
        try:
            return cls(
                format=FormatConfig(**d.get("format", {})),
                decode=DecodeConfig(**d.get("decode", {})),
                head=HeadConfig(**d.get("head", {})),
                base=d.get("base", ""),
                training=d.get("training", {}),
            )
        except TypeError as e:
            raise ModelError(f"{where}: unexpected setting ({e})") from None


@dataclass
class Prediction:
    """What the reader says about one question."""

    answers: list[SpanCandidate]  # best first
    no_answer: bool
    null_log_score: float  # log P_begin(CLS) + log P_end(CLS), smallest over windows
    windows: list[Window] = field(default_factory=list, repr=False)  # kept only on request

    @property
    def best(self) -> SpanCandidate | None:
        return self.answers[0] if self.answers else None

    @property
    def na_score(self) -> float:
        """log(null) - log(best span): higher means more likely unanswerable."""
        return self.null_log_score - (self.best.log_score if self.best else float("-inf"))

    def to_dict(self, top_k: int | None = None) -> dict:
        answers = self.answers if top_k is None else self.answers[:top_k]
        return {"answers": [a.as_dict() for a in answers], "no_answer": self.no_answer}


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def encoder_max_positions(config) -> int | None:
    mp = getattr(config, "max_position_embeddings", None)
    if mp is None:
        return None
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert", "longformer"):
        mp -= 2  # RoBERTa's positions start after its padding index
    return mp


class Reader:
    chunk_windows = 1024  # windows formatted and scored at a time: memory stays bounded for any context length
    max_batch_tokens = 4096  # padded tokens per inference batch, whatever batch_size says

    def __init__(self, model: SpanReader, tokenizer, config: ReaderConfig, device: str | None = None,
                 engine: str = "torch"):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.device = resolve_device("cpu" if engine != "torch" and device in (None, "auto") else device)
        self.model.to(self.device).eval()
        check_settings(config.format, tokenizer, encoder_max_positions(model.encoder.config))
        self._template = None
        self.set_engine(engine)

    def set_engine(self, engine: str = "torch", cache_dir: str | None = None) -> Reader:
        """Run the network with `engine` (torch, onnx, onnx-int8); ONNX graphs are built once and cached."""
        from spanqa.engines import check_engine, load_engine

        check_engine(engine)
        if engine != "torch" and self.device.type != "cpu":
            raise ConfigError(f"engine {engine} runs on the CPU; use device cpu (or the torch engine on {self.device})")
        self.engine_name = engine
        self.engine = load_engine(engine, self.model, cache_dir)
        return self

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_base(cls, base: str, config: ReaderConfig = ReaderConfig(), device: str | None = None) -> Reader:
        """A new reader with fresh heads on a pretrained encoder (local directory or hub id)."""
        from transformers import AutoTokenizer

        try:
            encoder = load_encoder(base)
            tokenizer = AutoTokenizer.from_pretrained(base)
        except (OSError, ValueError) as e:
            raise ModelError(f"cannot load base encoder {base!r}: {str(e).splitlines()[0]}") from None
        return cls(SpanReader(encoder, config.head), tokenizer, replace(config, base=base), device)

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, device: str | None = None, engine: str = "torch") -> Reader:
        """Load a saved reader directory, or a Hugging Face question-answering checkpoint with linear `qa_outputs`;
        with no path, the default model shipped in the package. `engine`: torch, onnx or onnx-int8."""
        from safetensors.torch import load_file
        from transformers import AutoTokenizer

        if path is None:
            from spanqa.default_model import default_model_path

            path = default_model_path()
        path = Path(path)
        meta = path / SPANQA_JSON
        if not path.is_dir():
            raise ModelError(f"{path}: model directory not found")
        if not meta.exists():
            from spanqa.hf import is_hf_qa_dir, load_hf_qa

            if is_hf_qa_dir(path):
                model, tokenizer, config = load_hf_qa(path)
                return cls(model, tokenizer, config, device, engine)
            raise ModelError(f"{path}: not a spanqa model ({SPANQA_JSON} is missing)")
        try:
            raw = json.loads(meta.read_text())
        except json.JSONDecodeError as e:
            raise ModelError(f"{meta}: malformed JSON ({e.msg} at line {e.lineno})") from None
        config = ReaderConfig.from_dict(raw, str(meta))
        try:
            if raw.get("encoder_delta"):
                from spanqa.default_model import load_delta_encoder

                encoder = load_delta_encoder(path, raw)
            else:
                encoder = load_encoder(str(path))
            from spanqa.default_model import tokenizer_source

            tokenizer = AutoTokenizer.from_pretrained(tokenizer_source(path, raw))
            heads = load_file(str(path / HEADS_FILE))
        except (OSError, ValueError) as e:
            raise ModelError(f"{path}: cannot load model: {str(e).splitlines()[0]}") from None
        model = SpanReader(encoder, config.head)
        missing = model.load_state_dict(heads, strict=False)
        bad = [k for k in missing.missing_keys if not k.startswith("encoder.")] + missing.unexpected_keys
        if bad:
            raise ModelError(f"{path / HEADS_FILE}: head weights do not match the head config: {bad[:4]}")
        return cls(model, tokenizer, config, device, engine)

    def save(self, path: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.model.encoder.save_pretrained(str(path), safe_serialization=True)
        hf_logging.enable_progress_bar()
        self.tokenizer.save_pretrained(str(path))
        heads = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()
                 if not k.startswith("encoder.")}
        save_file(heads, str(path / HEADS_FILE))
        (path / SPANQA_JSON).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")

    def with_decode(self, **changes) -> Reader:
        self.config = replace(self.config, decode=replace(self.config.decode, **changes))
        return self

    # ---- inference ----------------------------------------------------------------------------------------
    def answer(self, question: str, context: str, top_k: int = 1) -> Prediction:
        """Answer one question from one context. `answers[0].text == context[start:end]`."""
        return self.predict([question], [context], top_k=top_k)[0]

    def predict(
        self,
        questions: Sequence[str],
        contexts: Sequence[str],
        top_k: int = 1,
        batch_size: int = 32,
        keep_windows: bool = False,
        progress: bool = False,
    ) -> list[Prediction]:
        """Answer many questions; windows of all questions are batched together, sorted by length."""
        for name, values in (("question", questions), ("context", contexts)):
            if isinstance(values, str | bytes) or not isinstance(values, Sequence | np.ndarray):
                raise ConfigError(f"{name}s must be a list of strings, got {type(values).__name__}")
            for v in values:
                if not isinstance(v, str):
                    raise ConfigError(f"{name} must be a string, got {type(v).__name__}")
                if not v.strip():
                    raise ConfigError(f"{name} is empty")
                if not is_unicode(v):
                    raise ConfigError(f"{name} is not valid Unicode (it holds a lone surrogate)")
        if len(questions) != len(contexts):
            raise ConfigError(f"{len(questions)} questions but {len(contexts)} contexts")
        for name, v in (("top_k", top_k), ("batch_size", batch_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be an integer of at least 1, got {v!r}")
        return self._predict_stream(questions, contexts, top_k, batch_size, keep_windows, progress)

    def _predict_stream(self, questions, contexts, top_k, batch_size, keep_windows, progress) -> list[Prediction]:
        """Windows come lazily, `chunk_windows` at a time, each chunk sorted by length into batches; a window
        leaves only its top-k spans (as character offsets), so a 1 MB context never sits in memory as windows."""
        import sys

        from tqdm.auto import tqdm

        if self._template is None:
            from spanqa.streaming import pair_template

            self._template = pair_template(self.tokenizer)
        stream = iter_windows(self.tokenizer, questions, contexts, self.config.format, self._template)
        parts: dict[int, list[tuple]] = {}
        out: list[Prediction] = []
        bar = tqdm(total=len(questions), desc="answer", unit="q", file=sys.stderr, dynamic_ncols=True,
                   disable=not progress)
        while chunk := list(itertools.islice(stream, self.chunk_windows)):
            for w, (s, b, e, null) in zip(chunk, self._score_windows(chunk, top_k, batch_size), strict=True):
                kept = w if keep_windows else None
                last = len(w) - 1  # slots with score -inf (fewer valid spans than k) may point into the padding
                cs, ce = w.offsets[np.minimum(b, last), 0], w.offsets[np.minimum(e, last), 1]
                parts.setdefault(w.example_index, []).append((s, b, e, cs, ce, null, kept))
            # windows come in question order: every question before the chunk's last one is complete
            while len(out) < chunk[-1].example_index:
                out.append(self._merge(contexts[len(out)], parts.pop(len(out)), top_k))
                bar.update()
        while len(out) < len(questions):
            out.append(self._merge(contexts[len(out)], parts.pop(len(out)), top_k))
            bar.update()
        bar.close()
        return out

    def _merge(self, context: str, parts: list[tuple], k: int) -> Prediction:
        s, b, e, cs, ce, null, wins = zip(*parts, strict=True)
        cands = merge_spans(context, list(range(len(parts))), np.stack(s), np.stack(b), np.stack(e), np.stack(cs),
                            np.stack(ce), k)
        null_score = min(null)
        no_ans = is_no_answer(null_score, cands[0] if cands else None, self.config.decode)
        return Prediction(cands, no_ans, null_score, [w for w in wins if w is not None])

    @torch.inference_mode()
    def _score_windows(self, windows: list[Window], k: int, batch_size: int) -> Iterator[tuple]:
        """(scores, begins, ends, null_log_score) per window, in the windows' order."""
        results: list[tuple | None] = [None] * len(windows)
        pad = self.tokenizer.pad_token_id or 0
        for batch_idx in token_budget_batches([len(w) for w in windows], batch_size, self.max_batch_tokens):
            batch = collate([windows[i] for i in batch_idx], pad)
            lb, le = self.logits(batch)
            blp, elp = log_probs(lb), log_probs(le)
            can_end = batch["span_mask"].to(blp.device).clone()
            can_end[:, 0] = False
            s, b, e = best_spans(blp, elp, batch["can_begin"].to(blp.device), can_end,
                                 self.config.decode.max_answer_len, k)
            null = (blp[:, 0] + elp[:, 0]).cpu().numpy()
            s, b, e = s.cpu().numpy(), b.cpu().numpy(), e.cpu().numpy()
            for r, i in enumerate(batch_idx):
                results[i] = (s[r], b[r], e[r], float(null[r]))
        yield from results

    def logits(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        if self.engine is not None:
            return self.engine(batch)
        dev = self.device
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            return self.model(
                batch["input_ids"].to(dev),
                batch["attention_mask"].to(dev),
                batch["span_mask"].to(dev),
                batch["token_type_ids"].to(dev),
            )

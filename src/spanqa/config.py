"""Every setting of spanqa, defined once: formatting, decoding, heads, the reader, training and serving.

Standard library only, so any module (and the CLI's parser) can import it without paying for torch. A reader's
`ReaderConfig` is saved next to its weights as `spanqa.json`; the CLI builds its flags, defaults and help from
these dataclasses (`spanqa.cli.add_flags`), and value checks live in `__post_init__`, so the Python API and the
CLI refuse the same settings with the same words.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass, replace

from spanqa.errors import ConfigError, ModelError

ENGINES = ("auto", "torch", "torch-bf16", "onnx", "onnx-int8")  # what runs the network: see spanqa.engines
TORCH_ENGINES = ("torch", "torch-bf16")  # on any device; the ONNX ones on the CPU
DEVICES_HELP = "cpu, cuda, cuda:N or auto (a GPU when there is one)"
API_KEY_ENV = "SPANQA_API_KEY"
MAX_CONTEXT_BYTES = 16 * 2**20  # ~4M tokens, minutes of CPU time; an endless input stops here, not out of memory


class SettingError(ConfigError):
    """A setting with a bad value; the CLI names the flag (`--max-steps`), the API the field (`max_steps`)."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name} {reason}")
        self.name, self.reason = name, reason


def opt(default, help: str = "", **meta):
    """A dataclass field with the help text (and CLI hints: flag, choices, invert, metavar) the CLI shows."""
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **meta})
    if is_dataclass(default):
        return field(default_factory=lambda: default, metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


def at_least(obj, names: str, low: float, strict: bool = False) -> None:
    """Raise SettingError for the first of `names` (space separated) that is below `low` (or not above it)."""
    for name in names.split():
        v = getattr(obj, name)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int | float) or (v <= low if strict else v < low):
            raise SettingError(name, f"must be {'positive' if strict and low == 0 else f'at least {low}'}, got {v!r}")
        if isinstance(v, float) and not math.isfinite(v):  # nan passes every comparison above; inf overflows
            raise SettingError(name, f"must be a finite number, got {v!r}")


@dataclass(frozen=True)
class FormatConfig:
    """How a (question, context) pair becomes encoder windows (checked against the tokenizer by check_settings)."""

    max_seq_len: int = opt(384, "tokens per window, special tokens included")
    doc_stride: int = opt(128, "context tokens shared by consecutive windows of a long context")
    max_question_len: int = opt(64, "longer questions are truncated to this many tokens, with a warning")


@dataclass(frozen=True)
class DecodeConfig:
    """How windows' probabilities become answers."""

    max_answer_len: int = opt(30, "longest answer, in tokens")
    allow_no_answer: bool = opt(False, "answer 'no answer' when [CLS] beats the best span by null_threshold")
    null_threshold: float = opt(0.0, "say 'no answer' above this: P(unanswerable) with a calibrated model, else the "
                                     "log-odds margin of null over the best span")
    n_best: int = opt(20, "candidates kept per question for nbest.json")

    def __post_init__(self) -> None:
        at_least(self, "max_answer_len n_best", 1)


@dataclass(frozen=True)
class HeadConfig:
    kind: str = opt("linear", "begin/end head: linear, or mlp (Linear-GELU-Linear)", leaf="head",
                    choices=("linear", "mlp"))
    mlp_hidden: int = opt(0, "width of the MLP head's hidden layer (0: the encoder's hidden size)")

    def __post_init__(self) -> None:
        if self.kind not in ("linear", "mlp"):
            raise ConfigError(f"head kind must be 'linear' or 'mlp', got {self.kind!r}")


def _typed(cls, values, section: str) -> dict:
    """`values` (a saved section of spanqa.json) if each is of its setting's type; counts may not be negative."""
    if not isinstance(values, dict):
        raise ConfigError(f"{section} must be an object, got {type(values).__name__}")
    kinds = {f.name: type(f.default) for f in fields(cls)}
    for k, v in values.items():
        kind = kinds.get(k)
        ok = kind is None or (type(v) is kind) or (kind is float and type(v) is int)  # unknown keys: TypeError later
        if not ok or (kind is int and v < 0):
            raise ConfigError(f"{section}.{k} must be {'a non-negative ' if kind is int else 'a '}{kind.__name__}, "
                              f"got {v!r}")
    return values


@dataclass(frozen=True)
class ReaderConfig:
    """Everything a saved reader needs besides its weights; written to spanqa.json."""

    format: FormatConfig = opt(FormatConfig())
    decode: DecodeConfig = opt(DecodeConfig())
    head: HeadConfig = opt(HeadConfig())
    base: str = opt("", "the encoder this reader was fine-tuned from", leaf=None)
    training: dict = opt({}, "recipe and scores, for the record", leaf=None)
    calibration: dict = opt({}, "fitted by `spanqa calibrate` (spanqa.calibration.Calibration)", leaf=None)

    def to_dict(self) -> dict:
        return {"spanqa_format_version": 1, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict, where: str = "spanqa.json") -> ReaderConfig:
        if not isinstance(d, dict):
            raise ModelError(f"{where}: must be a JSON object, got {type(d).__name__}")
        try:
            return cls(
                format=FormatConfig(**_typed(FormatConfig, d.get("format", {}), "format")),
                decode=DecodeConfig(**_typed(DecodeConfig, d.get("decode", {}), "decode")),
                head=HeadConfig(**_typed(HeadConfig, d.get("head", {}), "head")),
                base=d.get("base", ""),
                training=d.get("training", {}),
                calibration=d.get("calibration", {}),
            )
        except (TypeError, ConfigError) as e:
            raise ModelError(f"{where}: unexpected setting ({e})") from None

    def with_decode(self, **changes) -> ReaderConfig:
        return replace(self, decode=replace(self.decode, **changes))


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup and decay; `batch_size` is the global micro-batch in windows."""

    lr: float = opt(1e-4, "peak learning rate")
    batch_size: int = opt(32, "windows per micro-batch (global, over all processes)")
    grad_accum: int = opt(1, "micro-batches per optimiser step")
    max_batch_tokens: int = opt(0, "padded tokens per forward pass, at most (0: 2048 on a CPU, the whole micro-batch "
                                   "on a GPU): a larger micro-batch runs in pieces whose gradients add up (the same "
                                   "step, in bounded memory)")
    weight_decay: float = opt(0.01, "AdamW weight decay (not on biases and norms)")
    warmup: float = opt(0.1, "fraction of the schedule spent warming up")
    max_grad_norm: float = opt(1.0, "gradient clipping norm")

    def __post_init__(self) -> None:
        at_least(self, "lr max_grad_norm", 0, strict=True)  # a negative clipping norm turns the gradients around
        at_least(self, "batch_size grad_accum", 1)
        at_least(self, "max_batch_tokens weight_decay warmup", 0)
        if self.warmup > 1:
            raise SettingError("warmup", f"must be a fraction of the schedule, between 0 and 1, got {self.warmup!r}")


@dataclass(frozen=True)
class DistillConfig:
    """Knowledge distillation: the student learns the teacher's begin/end distributions as well as the gold span
    (see spanqa.distill). Loss = kd_weight * T^2 * KL(teacher || student) + (1 - kd_weight) * span loss."""

    teacher: str = opt("", "teacher (default: none, no distillation): a saved reader directory ('default': the "
                           "shipped model), run on the training questions before the first step, or a file written "
                           "by `spanqa teach`")
    kd_weight: float = opt(0.5, "weight of the distillation loss; the span loss on the gold answer gets the rest")
    kd_temperature: float = opt(2.0, "softmax temperature of both distributions in the distillation loss")

    def __post_init__(self) -> None:
        if isinstance(self.kd_weight, bool) or not isinstance(self.kd_weight, int | float) \
                or not 0 <= self.kd_weight <= 1:
            raise SettingError("kd_weight", f"must be between 0 and 1, got {self.kd_weight!r}")
        at_least(self, "kd_temperature", 0, strict=True)


@dataclass(frozen=True)
class TrainConfig:
    """A training run: the data, the reader to build, the optimiser, and how long and how often."""

    train: str = opt("", "training data: SQuAD JSON or HF-layout JSONL (.gz ok)", required=True)
    out: str = opt("", "output directory: the model, train_log.jsonl, checkpoint/", required=True)
    base: str = opt("", "HF encoder directory or hub id, or a packaged base: package:all-mpnet-base-v2 (MPNet, see "
                        "the README) (default: the packaged all-MiniLM-L6-v2); a saved spanqa reader directory, or "
                        "'default' for the shipped model, continues its training")
    dev: str | None = opt(None, "dev data, evaluated at the end (and every --eval-every steps)")
    reader: ReaderConfig = opt(ReaderConfig())
    optim: OptimConfig = opt(OptimConfig())
    distill: DistillConfig = opt(DistillConfig())
    epochs: float = opt(2.0, "passes over the training windows")
    max_steps: int | None = opt(None, "stop after this many optimiser steps")
    time_budget: float | None = opt(None, "minutes of training (tokenising and evaluation excluded)",
                                    metavar="MINUTES")
    max_examples: int | None = opt(None, "train on a seeded random sample of N questions")
    seed: int = opt(0, "seed of the data order, the sample and the heads")
    eval_every: int = opt(0, "optimiser steps between dev evaluations (0: only at the end)")
    eval_limit: int | None = opt(2000, "dev questions per evaluation (0: all)")
    save_every: int = opt(200, "optimiser steps between checkpoints (0: only at the end)")
    log_every: int = opt(10, "optimiser steps between train_log.jsonl lines")
    train_layers: int | None = opt(None, "train only the top N encoder layers and the heads (0: the heads only)")
    freeze_word_embeddings: bool = opt(True, "also train the word embeddings", flag="train-embeddings",
                                       invert=True)
    attention_dropout: float | None = opt(None, "dropout on the attention probabilities while training (default: 0 "
                                                "on a CPU, where it lets torch use its fused attention kernel; the "
                                                "base's elsewhere, 0.1 for MiniLM and MPNet)")
    skip_invalid: bool = opt(False, "count and skip invalid records instead of stopping")
    device: str = opt("auto", DEVICES_HELP)
    precision: str = opt("auto", "matmul precision: bf16 autocast, or fp32 (auto: bf16 on a GPU and on a CPU with "
                                 "AMX, fp32 on other CPUs)", choices=("auto", "bf16", "fp32"))
    threads: int | None = opt(None, "torch intra-op threads")
    compile: bool = opt(False, "torch.compile the model")
    resume: bool = opt(False, "continue from the checkpoint in --out")
    progress: bool = opt(True, "no progress bar", flag="no-progress", invert=True)

    def __post_init__(self) -> None:
        at_least(self, "epochs max_steps time_budget", 0, strict=True)
        at_least(self, "max_examples threads", 1)
        at_least(self, "eval_every save_every eval_limit train_layers", 0)
        at_least(self, "log_every", 1)
        if self.attention_dropout is not None and not 0 <= self.attention_dropout < 1:
            raise SettingError("attention_dropout", f"must be in [0, 1), got {self.attention_dropout}")

    def flat(self) -> dict:
        """The recipe as one flat dict of leaf settings (as saved in checkpoints and spanqa.json's training)."""
        return flatten(self)

    @classmethod
    def from_flat(cls, **flat) -> TrainConfig:
        """Build from leaf names (`lr=`, `max_seq_len=`, `head=`...), as the CLI's flags give them."""
        return unflatten(cls, flat)


@dataclass(frozen=True)
class RunConfig:
    """Where a reader runs: `answer`, `evaluate`, `explain`, `serve` and the Python API share these."""

    model: str | None = opt(None, "saved reader directory or HF QA checkpoint (default: the model shipped with spanqa)")
    engine: str = opt("auto", "auto (onnx-int8 on a CPU: the fastest within 0.5 F1 of torch; torch on a GPU), torch, "
                              "torch-bf16 (the encoder held in bf16 on the CPU: for CPUs with AMX), or ONNX Runtime "
                              "fp32/int8 on the CPU (the graph is built on first use and cached)",
                      choices=ENGINES)
    device: str = opt("auto", DEVICES_HELP)


@dataclass(frozen=True)
class AnswerConfig:
    """`spanqa answer`: one question, or a JSONL file of them (streaming, resumable)."""

    top_k: int = opt(1, "answers per question (the n-best list)")
    batch_size: int = opt(32, "with --input: windows per forward pass")
    chunk: int = opt(512, "with --input: questions read and written at a time (with --ray: the questions of one "
                                  "shard)")
    skip_invalid: bool = opt(False, "with --input: count and skip bad lines")
    progress: bool = opt(True, "no progress bar", flag="no-progress", invert=True)

    def __post_init__(self) -> None:
        at_least(self, "top_k batch_size chunk", 1)


@dataclass(frozen=True)
class RayConfig:
    """`--ray`: answer or evaluate on a Ray cluster (spanqa.ray_answer): a pool of actors, each a reader loaded once,
    answering shards of questions."""

    actors: int = opt(2, "with --ray: readers (Ray actors) answering at once, each loading the model once")
    threads_per_actor: int = opt(1, "with --ray: intra-op threads of each actor (and the CPUs it asks Ray for)")
    gpus_per_actor: float = opt(0.0, "with --ray: GPUs each actor asks Ray for (a fraction shares one)")
    max_retries: int = opt(3, "with --ray: times a shard is tried again after its actor died while answering it")

    def __post_init__(self) -> None:
        at_least(self, "actors threads_per_actor", 1)
        at_least(self, "gpus_per_actor max_retries", 0)


@dataclass(frozen=True)
class ContextLimits:
    """How much of a context file `answer` and `explain` read (with --input: of one line)."""

    max_context_bytes: int = opt(MAX_CONTEXT_BYTES, "largest --context-file (or `answer --input` line) read, in "
                                                    "bytes")

    def __post_init__(self) -> None:
        at_least(self, "max_context_bytes", 1)


@dataclass(frozen=True)
class EvaluateConfig:
    """`spanqa evaluate`: official EM/F1 and the per-head diagnostics on a labelled set."""

    limit: int | None = opt(None, "evaluate the first N questions only")
    batch_size: int = opt(64, "windows per forward pass")
    skip_invalid: bool = opt(False, "count and skip invalid records")
    progress: bool = opt(True, "no progress bar", flag="no-progress", invert=True)

    def __post_init__(self) -> None:
        at_least(self, "limit batch_size", 1)


@dataclass(frozen=True)
class TeachConfig:
    """`spanqa teach`: a teacher's begin/end distributions over the characters of each question's context, for
    `spanqa train --teacher FILE` (see spanqa.distill)."""

    data: str = opt("", "SQuAD JSON or HF-layout JSONL (.gz ok): the questions the student will train on",
                    required=True)
    out: str = opt("", "the file to write (.safetensors)", required=True)
    limit: int | None = opt(None, "the first N questions only")
    batch_size: int = opt(64, "windows per forward pass")
    chunk: int = opt(512, "questions scored at a time")
    skip_invalid: bool = opt(False, "count and skip invalid records")
    progress: bool = opt(True, "no progress bar", flag="no-progress", invert=True)

    def __post_init__(self) -> None:
        at_least(self, "limit batch_size chunk", 1)


@dataclass(frozen=True)
class NegativesConfig:
    """`spanqa negatives`: mine unanswerable questions from a v1.1-style set (see spanqa.negatives)."""

    data: str = opt("", "SQuAD v1.1-style JSON (.gz ok) to mine from", required=True)
    out: str = opt("", "the SQuAD v2.0 JSON to write (.gz: gzip)", required=True)
    ratio: float = opt(0.5, "chance that an answerable question gets a negative (0.5: about a third of the "
                            "questions unanswerable, as in SQuAD 2.0)")
    seed: int = opt(0, "seed of the choices (the same seed writes the same file)")
    holdout: float = opt(0.05, "with --holdout-out: share of the articles held out, with their negatives, for tuning "
                               "the threshold")
    holdout_out: str | None = opt(None, "write the held-out articles here (they are left out of --out)")

    def __post_init__(self) -> None:
        if not 0 <= self.ratio <= 1:
            raise SettingError("ratio", f"must be between 0 and 1, got {self.ratio}")
        if not 0 <= self.holdout < 1:
            raise SettingError("holdout", f"must be at least 0 and below 1, got {self.holdout}")


@dataclass(frozen=True)
class IndexConfig:
    """`spanqa index`: how documents are cut into passages (the units BM25 ranks and the reader reads)."""

    passage_words: int = opt(200, "words per passage, at most (about 1.3 reader tokens a word: one window)")
    overlap_words: int = opt(40, "words a passage cut inside a paragraph repeats from the one before it")
    stemmer: str = opt("english", "BM25 matches words by their Snowball stem in this language (PyStemmer's names: "
                                  "english, german, ...), or 'none' for exact words")
    title_words: bool = opt(True, "BM25 does not count a document's title as words of its passages",
                            flag="no-title-words", invert=True)

    def __post_init__(self) -> None:
        at_least(self, "passage_words", 1)
        at_least(self, "overlap_words", 0)
        if self.stemmer != "none":
            import Stemmer

            if self.stemmer not in Stemmer.algorithms():
                raise SettingError("stemmer", f"must be 'none' or one of {', '.join(sorted(Stemmer.algorithms()))}, "
                                              f"got {self.stemmer!r}")
        if self.overlap_words >= self.passage_words:
            raise SettingError("overlap_words", f"must be below passage_words ({self.passage_words}), "
                                                f"got {self.overlap_words}")


@dataclass(frozen=True)
class AskConfig:
    """`spanqa ask`: retrieve passages from an index, read them, rank the answers across passages."""

    passages: int = opt(10, "passages retrieved (BM25) and read per question")
    top_k: int = opt(1, "answers per question, best first, each text once")
    bm25_weight: float = opt(1.0, "weight of the passage's BM25 score in an answer's score (see spanqa.ask)")
    batch_size: int = opt(32, "windows per forward pass")
    chunk: int = opt(64, "with --input: questions read and written at a time")
    skip_invalid: bool = opt(False, "with --input: count and skip bad lines")
    progress: bool = opt(True, "no progress bar", flag="no-progress", invert=True)

    def __post_init__(self) -> None:
        at_least(self, "passages top_k batch_size chunk", 1)
        at_least(self, "bm25_weight", 0)


@dataclass(frozen=True)
class ServeConfig:
    """The HTTP API's limits and batching."""

    api_key: str | None = opt(None, f"require this key in the X-API-Key header (default: ${API_KEY_ENV}, if set)",
                              cli=False)
    max_body_bytes: int = opt(1 << 20, "largest request body")
    max_question_chars: int = opt(1_000, "longest question")
    max_context_chars: int = opt(20_000, "longest context (~5k tokens, ~15 windows)")
    max_batch: int = opt(64, "items in one request")
    max_top_k: int = opt(20, "largest top_k a request may ask for")
    batch_wait_ms: float = opt(5.0, "how long to gather concurrent requests into one forward pass")
    max_batch_items: int = opt(64, "items gathered into one batch")
    max_queue_items: int = opt(1024, "beyond this many waiting items, 503 'busy' rather than unbounded memory")
    predict_batch_size: int = opt(32, "windows per forward pass")
    max_passages: int = opt(50, "largest number of passages a /v1/ask question may read")

    def __post_init__(self) -> None:
        at_least(self, "max_passages", 1)
        at_least(self, "max_body_bytes max_question_chars max_context_chars max_batch max_top_k max_batch_items "
                       "max_queue_items predict_batch_size", 1)
        at_least(self, "batch_wait_ms", 0)
        if self.max_queue_items < self.max_batch:  # the server would answer every full request "busy" forever
            raise SettingError("max_queue_items", f"must be at least max_batch ({self.max_batch}), the items one "
                                                  f"request may hold, got {self.max_queue_items}")


@dataclass(frozen=True)
class ServerSettings:
    """`spanqa serve`: the model, where to listen, and the API's limits."""

    run: RunConfig = opt(RunConfig())
    host: str = opt("127.0.0.1", "address to bind (127.0.0.1: loopback, this machine only)")
    port: int = opt(8000, "port to listen on")
    threads: int | None = opt(None, "torch intra-op threads")
    log_level: str = opt("info", "uvicorn's log level", choices=("critical", "error", "warning", "info", "debug"))
    index: str | None = opt(None, "a collection built by `spanqa index`: adds POST /v1/ask and the page's collection "
                                  "search")
    serve: ServeConfig = opt(ServeConfig())

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise SettingError("port", f"must be between 0 and 65535, got {self.port}")
        at_least(self, "threads", 1)


# ---- flat views: CLI flags and saved recipes name the leaves ---------------------------------------------------
def leaf_fields(cls) -> dict[str, tuple[tuple[str, ...], object]]:
    """{leaf name: (path of attribute names, Field)} of a dataclass and the dataclasses it nests."""
    out: dict[str, tuple[tuple[str, ...], object]] = {}
    for f in fields(cls):
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        if is_dataclass(default):
            for name, (path, leaf) in leaf_fields(type(default)).items():
                out[name] = ((f.name, *path), leaf)
        elif f.metadata.get("leaf", f.name) is not None:  # leaf=None: set by the code, never from outside
            out[f.metadata.get("leaf", f.name)] = ((f.name,), f)
    return out


def flatten(obj) -> dict:
    out = {}
    for name, (path, _) in leaf_fields(type(obj)).items():
        v = obj
        for p in path:
            v = getattr(v, p)
        out[name] = v
    return out


def unflatten(cls, flat: dict):
    """`cls` with the leaves named in `flat` set, the rest at their defaults."""
    leaves = leaf_fields(cls)
    unknown = sorted(set(flat) - set(leaves))
    if unknown:
        raise ConfigError(f"unknown setting(s) for {cls.__name__}: {', '.join(unknown)}")
    nested: dict = {}
    for name, value in flat.items():
        path = leaves[name][0]
        d = nested
        for p in path[:-1]:
            d = d.setdefault(p, {})
        d[path[-1]] = value
    return _build(cls, nested)


def _build(cls, values: dict):
    kwargs = {}
    for f in fields(cls):
        if f.name not in values:
            continue
        v = values[f.name]
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        if isinstance(v, dict) and is_dataclass(default):
            v = _build(type(default), v)
        kwargs[f.name] = v
    return cls(**kwargs)

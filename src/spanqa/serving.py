"""`spanqa serve`: load a reader and run the HTTP API (spanqa.api) under uvicorn.

This module imports only the standard library, so the CLI can describe `serve` without the serve extra installed.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

from spanqa.errors import SpanqaError

ENGINES = ("torch", "onnx", "onnx-int8")
API_KEY_ENV = "SPANQA_API_KEY"


@dataclass(frozen=True)
class ServeConfig:
    api_key: str | None = None  # when set, required as the X-API-Key header (or Authorization: Bearer)
    max_body_bytes: int = 1 << 20
    max_question_chars: int = 1_000
    max_context_chars: int = 20_000  # ~5k tokens, ~15 windows
    max_batch: int = 64  # items in one request
    max_top_k: int = 20
    batch_wait_ms: float = 5.0  # how long the worker waits for more requests before running a batch
    max_batch_items: int = 64  # items gathered into one Reader.predict call (one forward pass per predict_batch_size)
    max_queue_items: int = 1024  # beyond this, 503 "busy" rather than unbounded memory
    predict_batch_size: int = 32  # windows per forward pass inside Reader.predict


# ---- loading and running -----------------------------------------------------------------------------------------
def load_reader(model: str | None, device: str | None, engine: str = "torch"):
    """Reader.load with the engine passed through where Reader.load takes one.

    This is the single place `--engine` is wired: engines (torch, onnx, onnx-int8) are added to Reader.load in a
    separate change; until then only "torch" is accepted.
    """
    from spanqa.reader import Reader

    if engine not in ENGINES:
        raise SpanqaError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if "engine" in inspect.signature(Reader.load).parameters:
        return Reader.load(model, device=device, engine=engine)
    if engine != "torch":
        raise SpanqaError(f"engine {engine!r} is not available in this version of spanqa; use --engine torch")
    return Reader.load(model, device=device)


@dataclass
class ServerSettings:
    model: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    engine: str = "torch"
    device: str = "auto"
    threads: int | None = None
    log_level: str = "info"
    serve: ServeConfig = field(default_factory=ServeConfig)


def limit_heap_growth(threshold: int = 128 * 1024) -> bool:
    """Pin glibc's mmap threshold so that freed tensor buffers go back to the OS; False where that is not glibc.

    glibc raises its mmap threshold each time a large mmapped block is freed; from then on the buffers of batches of
    varying shapes come from the heap, whose holes keep the RSS of a long-running server growing. Measured with the
    shipped model on 60 batches of 1-32 SQuAD questions: 490 MiB -> 1.1 GiB by default, flat at 490 MiB pinned.
    """
    import ctypes

    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, threshold))  # -3 = M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def serve(s: ServerSettings) -> None:
    """Load the model, warm it up, and run uvicorn until interrupted."""
    import torch

    try:
        import uvicorn

        from spanqa.api import check_api_key, create_app
    except ImportError as e:
        raise SpanqaError(f"spanqa serve needs the serve extra ({e.name} is missing): "
                          "pip install 'spanqa[serve]'") from None

    if not 0 <= s.port <= 65535:
        raise SpanqaError(f"--port must be between 0 and 65535, got {s.port}")
    if s.threads is not None:
        if s.threads < 1:
            raise SpanqaError(f"--threads must be at least 1, got {s.threads}")
        torch.set_num_threads(s.threads)
    if s.serve.api_key is not None:
        check_api_key(s.serve.api_key)
    limit_heap_growth()
    reader = load_reader(s.model, s.device, s.engine)
    reader.answer("Who wrote it?", "It was written by Jane Austen.")  # warm-up: the first request is not slow
    app = create_app(reader, s.serve, model_name=s.model or "default", engine=s.engine)
    uvicorn.run(app, host=s.host, port=s.port, log_level=s.log_level, timeout_graceful_shutdown=5)

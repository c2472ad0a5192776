"""`spanqa serve`: load a reader and run the HTTP API (spanqa.api) under uvicorn.

The settings (ServerSettings, ServeConfig) are spanqa.config's, so the CLI describes `serve` without the serve extra
installed; this module needs it only when `serve` runs.
"""

from __future__ import annotations

from spanqa.config import ServerSettings
from spanqa.errors import SpanqaError


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


def check_listen(host: str, port: int) -> None:
    """Bind and release the address uvicorn will listen on (with its SO_REUSEADDR), so that a port in use or a host
    this machine does not have is one line before the model loads, not uvicorn's log line after it."""
    import errno
    import socket

    try:
        bound, skipped = 0, None
        for family, kind, proto, _, addr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                               flags=socket.AI_PASSIVE):  # every one, as asyncio
            with socket.socket(family, kind, proto) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind(addr)
                    bound += 1
                except OSError as e:  # an address family this machine has turned off is skipped, as asyncio does
                    if e.errno != errno.EADDRNOTAVAIL:
                        raise
                    skipped = e
        if not bound:
            raise skipped or OSError(errno.EADDRNOTAVAIL, "no address to listen on")
    except OSError as e:  # socket.gaierror too
        raise SpanqaError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e}); "
                          "choose another --port (or --host)") from None


def serve(s: ServerSettings) -> None:
    """Load the model, warm it up, and run uvicorn until interrupted."""
    check_listen(s.host, s.port)
    import torch

    try:
        import uvicorn

        from spanqa.api import check_api_key, create_app
    except ImportError as e:
        raise SpanqaError(f"spanqa serve needs the serve extra ({e.name} is missing): "
                          "pip install 'spanqa[serve]'") from None

    from spanqa.reader import Reader

    if s.threads is not None:
        torch.set_num_threads(s.threads)
    if s.serve.api_key is not None:
        check_api_key(s.serve.api_key)
    limit_heap_growth()
    index = None
    if s.index is not None:  # a bad index folder fails before the model loads
        from spanqa.ask import Index

        index = Index.load(s.index)
    reader = Reader.load(s.run.model, device=s.run.device, engine=s.run.engine)
    reader.answer("Who wrote it?", "It was written by Jane Austen.")  # warm-up: the first request is not slow
    if index is not None:
        index.reader = reader
    app = create_app(reader, s.serve, model_name=s.run.model or "default", engine=reader.engine_name, index=index)
    uvicorn.run(app, host=s.host, port=s.port, log_level=s.log_level, timeout_graceful_shutdown=5)

"""The HTTP API and the web page over one Reader (run by `spanqa serve`, see spanqa.serving).

    POST /v1/answer   {"question", "context", "top_k"?, "return_probabilities"?}, or a list of them
    POST /v1/ask      {"question", "passages"?, "top_k"?, "return_probabilities"?}, or a list of them: answers from
                      the collection of `spanqa serve --index DIR` (spanqa.ask), with their sources
    GET  /healthz     status, model, queue and batching counters (HEAD too, as for /)
    GET  /            the web page (question, context, answer, n-best, the begin/end chart)
    GET  /docs        OpenAPI docs (served offline), /openapi.json the schema

Concurrent requests are micro-batched: each request goes on an asyncio queue; one worker takes the first, waits
a few milliseconds for more, and answers them all with one `Reader.predict` call in a thread, so the event loop
keeps accepting requests while the network runs. Every input is checked before it reaches the queue, and every
error is a 4xx/5xx JSON body `{"error": {"code", "message"}}`: no request can take the server down.
"""

from __future__ import annotations

import asyncio
import hmac
import importlib.resources
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from spanqa.config import AskConfig, ServeConfig
from spanqa.errors import SpanqaError
from spanqa.validation import Invalid, check_text, json_error

log = logging.getLogger("spanqa.serve")

WEB_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
# Static shells that hold no model output: served without the API key, so a browser can load the page and the docs
# (the page then sends the key with each API call). Every other request needs the key when one is set.
PUBLIC_PATHS = {"/", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json",
                *(f"/static/{name}" for name in WEB_FILES)}
PUBLIC_PREFIXES = ("/static-offline-docs/",)


class AnswerRequest(BaseModel):
    """One question about one context."""

    model_config = ConfigDict(extra="forbid", strict=True)
    question: str = Field(description="the question", examples=["Who wrote Pride and Prejudice?"])
    context: str = Field(description="the text to take the answer from",
                         examples=["Pride and Prejudice is an 1813 novel of manners written by Jane Austen."])
    top_k: int = Field(1, description="how many answers to return (the n-best list)")
    return_probabilities: bool = Field(False, description="also return P_begin and P_end for every context token")


class AskRequest(BaseModel):
    """One question to the server's collection."""

    model_config = ConfigDict(extra="forbid", strict=True)
    question: str = Field(description="the question", examples=["Who wrote Pride and Prejudice?"])
    passages: int | None = Field(None, description="how many passages to retrieve (BM25) and read (default: 10, or "
                                                   "the server's max_passages if lower)")
    top_k: int = Field(1, description="how many answers to return, best first, each text once")
    return_probabilities: bool = Field(False, description="with each answer, P_begin and P_end for every token of "
                                                          "its passage")


class Answer(BaseModel):
    text: str
    start: int = Field(description="character offset: text == context[start:end]")
    end: int
    score: float = Field(description="a calibrated model: the probability that this answer is right (exact match); "
                                     "otherwise P_begin(start token) * P_end(end token)")


class AnswerResponse(BaseModel):
    answers: list[Answer]
    no_answer: bool = Field(description="the reader abstains: the answers are what it would have said")
    p_no_answer: float | None = Field(None, description="a calibrated model: the probability of no answer")
    probabilities: dict | None = Field(None, description="only with return_probabilities: see spanqa.explain")


class ApiError(Exception):
    """A request the server refuses: becomes `{"error": {"code", "message"}}` with `status`."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


# ---- validation: raw bytes -> checked items ----------------------------------------------------------------------
# An oversized body is still read, and thrown away, up to this many bytes before the 413 goes out: a client that sends
# its whole body before it reads the answer (urllib, requests, http.client) gets the 413 rather than a connection reset
# by a server that closed on unread bytes. Beyond it the server answers at once and closes the connection.
DRAIN_BYTES = 64 << 20


async def read_body(request, limit: int, drain: int = DRAIN_BYTES) -> bytes:
    """The request body; 413 when it exceeds `limit` (declared or streamed), after reading the rest of it (up to
    `drain` bytes, kept no longer than needed) so that the client can read the answer."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > drain:
        raise _too_large(f"{declared} bytes", limit, close=True)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > drain:
                raise _too_large(f"over {drain} bytes", limit, close=True)
            if size <= limit:
                chunks.append(chunk)
    except ClientDisconnect:  # nobody is left to read the answer: one debug line, not a traceback in the log
        log.debug("client disconnected after %d of %s body bytes", size, declared)
        raise ApiError(400, "client_disconnected", "the client disconnected before sending the whole body") from None
    if size > limit:
        raise _too_large(f"{size} bytes", limit)
    return b"".join(chunks)


def _too_large(size: str, limit: int, close: bool = False) -> ApiError:
    return ApiError(413, "body_too_large", f"request body is {size}, above the limit of {limit} bytes",
                    {"Connection": "close"} if close else None)


def check_media_type(request) -> None:
    """415 unless the body is plain JSON: a compressed body (Content-Encoding) would otherwise be refused as "not
    UTF-8 text", which tells the client nothing about what to change."""
    ctype = request.headers.get("content-type", "")
    if ctype.split(";")[0].strip().lower() != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the body as Content-Type: application/json")
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise ApiError(415, "unsupported_media_type",
                       f"Content-Encoding {encoding[:40]} is not supported; send the JSON body uncompressed")


def parse_json(raw: bytes):
    if not raw.strip():
        raise ApiError(400, "malformed_json", "request body is empty; send a JSON object or a list of them")
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise ApiError(400, "malformed_json", f"malformed JSON: {json_error(e)}") from None
    except UnicodeDecodeError:
        raise ApiError(400, "malformed_json", "request body is not UTF-8 text") from None
    except (ValueError, RecursionError) as e:  # e.g. an integer with too many digits, nesting too deep
        raise ApiError(400, "malformed_json", f"malformed JSON: {str(e).splitlines()[0][:200]}") from None


def _check_text(where: str, name: str, value: str, limit: int) -> None:
    try:
        check_text(value, name, limit=limit)
    except Invalid as e:
        code = {"empty": "empty_field", "too_long": f"{name}_too_long"}.get(e.kind, "invalid_field")
        raise ApiError(422, code, f"{where}{e}") from None


def _shown(name: str, limit: int = 60) -> str:
    """A field name as an error message shows it: an unknown key is the client's text, which may hold line breaks
    or run to the body limit; such a key is shown JSON-escaped and cut, so the message stays one short line."""
    if name.isprintable() and len(name) <= limit:
        return name
    return json.dumps(name[:limit]) + ("..." if len(name) > limit else "")


def validate_payload(payload, cfg: ServeConfig, model: type[BaseModel] = AnswerRequest) -> tuple[list, bool]:
    """Checked items and whether the body was a single object (answered with an object, not a list)."""
    single = isinstance(payload, dict)
    if single:
        raw_items = [payload]
    elif isinstance(payload, list):
        if not payload:
            raise ApiError(422, "empty_batch", "the list of questions is empty")
        if len(payload) > cfg.max_batch:
            raise ApiError(422, "batch_too_large",
                           f"{len(payload)} items in one request, above the limit of {cfg.max_batch}")
        raw_items = payload
    else:
        raise ApiError(422, "invalid_body",
                       f"body must be a JSON object or a list of objects, got {type(payload).__name__}")
    items = []
    for i, raw in enumerate(raw_items):
        where = "" if single else f"[{i}]."
        if not isinstance(raw, dict):
            raise ApiError(422, "invalid_body", f"item {i} must be a JSON object, got {type(raw).__name__}")
        try:
            item = model.model_validate(raw)
        except ValidationError as e:
            err = e.errors()[0]
            field_name = _shown(".".join(str(p) for p in err["loc"]) or "body")
            raise ApiError(422, "invalid_field", f"{where}{field_name}: {err['msg']}") from None
        _check_text(where, "question", item.question, cfg.max_question_chars)
        if isinstance(item, AskRequest) and item.passages is None:
            item.passages = min(AskConfig().passages, cfg.max_passages)
        if isinstance(item, AskRequest) and not 1 <= item.passages <= cfg.max_passages:
            raise ApiError(422, "invalid_field",
                           f"{where}passages must be between 1 and {cfg.max_passages}, got {item.passages}")
        if isinstance(item, AnswerRequest):
            _check_text(where, "context", item.context, cfg.max_context_chars)
        if not 1 <= item.top_k <= cfg.max_top_k:
            raise ApiError(422, "invalid_field",
                           f"{where}top_k must be between 1 and {cfg.max_top_k}, got {item.top_k}")
        items.append(item)
    return items, single


# ---- micro-batching ----------------------------------------------------------------------------------------------
@dataclass
class _Job:
    items: list[AnswerRequest]
    future: asyncio.Future


@dataclass
class ServeStats:
    requests: int = 0
    items: int = 0
    batches: int = 0  # Reader.predict calls
    largest_batch: int = 0
    errors: int = 0


class MicroBatcher:
    """Collect concurrent requests for up to `wait_ms`, answer them with one Reader.predict call in a thread."""

    def __init__(self, reader, cfg: ServeConfig):
        self.reader, self.cfg = reader, cfg
        self.queue: asyncio.Queue[_Job] = asyncio.Queue()
        self.pending = 0  # items submitted and not yet answered
        self.stats = ServeStats()
        self._task: asyncio.Task | None = None
        # One dedicated thread runs the network: batches never overlap and never wait on each other's threads.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spanqa-reader")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="spanqa-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, items: list[AnswerRequest]) -> list[dict]:
        if self.pending + len(items) > self.cfg.max_queue_items:
            raise ApiError(503, "busy", f"the server has {self.pending} questions waiting; retry shortly")
        if self._task is None or self._task.done():  # not started by a lifespan (or stopped): start it now
            self.start()
        job = _Job(items, asyncio.get_running_loop().create_future())
        self.pending += len(items)
        self.stats.requests += 1
        self.queue.put_nowait(job)
        try:
            return await job.future
        finally:
            self.pending -= len(items)

    async def _run(self) -> None:
        while True:
            jobs = [await self.queue.get()]
            n = len(jobs[0].items)
            if n + self.queue.qsize() < self.cfg.max_batch_items:  # (qsize counts requests: a lower bound on items)
                # Let concurrent requests join, also right after a batch: the clients it answered send their next
                # requests within milliseconds, and would otherwise form a batch of their own every time.
                await asyncio.sleep(self.cfg.batch_wait_ms / 1000)
            while n < self.cfg.max_batch_items and not self.queue.empty():
                job = self.queue.get_nowait()
                jobs.append(job)
                n += len(job.items)
            jobs = [j for j in jobs if not j.future.done()]  # drop requests whose client went away
            if not jobs:
                continue
            try:
                results = await asyncio.get_running_loop().run_in_executor(self._executor, self._answer_jobs, jobs)
            except Exception as e:  # the executor itself failed: fail these requests, keep the worker alive
                log.error("the batch worker failed", exc_info=e)
                results = [ApiError(500, "internal", f"the batch worker failed ({type(e).__name__})")] * len(jobs)
            for job, res in zip(jobs, results, strict=True):
                if job.future.done():
                    continue
                if isinstance(res, Exception):
                    job.future.set_exception(res)
                else:
                    job.future.set_result(res)

    def _answer_jobs(self, jobs: list[_Job]) -> list[list[dict] | Exception]:
        """Runs in a worker thread. One call for all jobs; if it fails, job by job, so one bad job fails alone."""
        items = [it for j in jobs for it in j.items]
        self.stats.batches += 1
        self.stats.items += len(items)
        self.stats.largest_batch = max(self.stats.largest_batch, len(items))
        try:
            flat = self._answer(items)
        except Exception as e:
            if len(jobs) == 1:
                return [self._failure(e, jobs[0])]
            out: list[list[dict] | Exception] = []
            for job in jobs:
                try:
                    out.append(self._answer(job.items))
                except Exception as e_job:
                    out.append(self._failure(e_job, job))
            return out
        out, lo = [], 0
        for job in jobs:
            out.append(flat[lo : lo + len(job.items)])
            lo += len(job.items)
        return out

    def _failure(self, e: Exception, job: _Job) -> ApiError:
        self.stats.errors += 1
        if isinstance(e, SpanqaError):
            return ApiError(422, "invalid_input", str(e))
        log.error("the reader failed on a request of %d item(s)", len(job.items), exc_info=e)
        return ApiError(500, "internal", f"the reader failed on this request ({type(e).__name__})")

    def _answer(self, items: list[AnswerRequest]) -> list[dict]:
        """One Reader.predict call: the answers and, for the items that ask, the per-token probabilities of the
        same forward pass."""
        preds = self.reader.predict([it.question for it in items], [it.context for it in items],
                                    top_k=max(it.top_k for it in items), batch_size=self.cfg.predict_batch_size,
                                    probabilities=[it.return_probabilities for it in items])
        out = []
        for p, it in zip(preds, items, strict=True):
            out.append(p.to_dict(it.top_k))
            if it.return_probabilities:
                out[-1]["probabilities"] = p.probabilities.to_dict()
        return out


class AskBatcher(MicroBatcher):
    """Micro-batches /v1/ask requests into one `Index.ask_many` call, on the answer batcher's thread (so the two
    never run the network at the same time)."""

    def __init__(self, index, reader, cfg: ServeConfig, executor: ThreadPoolExecutor):
        super().__init__(reader, cfg)
        self._executor.shutdown()
        self.index, self._executor = index, executor

    def _answer(self, items: list[AskRequest]) -> list[dict]:
        results = self.index.ask_many([it.question for it in items], [it.passages for it in items],
                                      [it.top_k for it in items], [it.return_probabilities for it in items],
                                      batch_size=self.cfg.predict_batch_size)
        return [r.to_dict(it.top_k) for r, it in zip(results, items, strict=True)]


# ---- API key -----------------------------------------------------------------------------------------------------
class ApiKeyMiddleware:
    """Refuse (401) every HTTP request without the key, except the static shells in PUBLIC_PATHS.

    The key is compared in constant time (hmac.compare_digest), so response timing does not leak it.
    """

    def __init__(self, app, api_key: str):
        self.app = app
        self.key = api_key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            path = scope["path"]
            if path not in PUBLIC_PATHS and not path.startswith(PUBLIC_PREFIXES):
                given = b""
                for name, value in scope["headers"]:
                    if name == b"x-api-key":
                        given = value
                    elif name == b"authorization" and value[:7].lower() == b"bearer ":
                        given = value[7:]
                if not hmac.compare_digest(given, self.key):
                    msg = "missing API key" if not given else "wrong API key"
                    resp = JSONResponse(error_body("unauthorized", f"{msg}: send it as the X-API-Key header"),
                                        status_code=401, headers={"WWW-Authenticate": "Bearer"})
                    await resp(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def check_api_key(key: str) -> str:
    if not key or not key.isascii() or not key.isprintable() or key != key.strip():
        raise SpanqaError("the API key must be non-empty printable ASCII without surrounding spaces")
    return key


# ---- the app -----------------------------------------------------------------------------------------------------
def _web_file(name: str) -> str:
    return (importlib.resources.files("spanqa") / "web" / name).read_text(encoding="utf-8")


def _add_error_handlers(app) -> None:
    """Every error leaves as `{"error": {"code", "message"}}`, never as a traceback."""

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return JSONResponse(error_body(exc.code, exc.message), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc: RequestValidationError):
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        return JSONResponse(error_body("invalid_field", f"{'.'.join(map(str, err['loc']))}: {err['msg']}"), 422)

    @app.exception_handler(Exception)
    async def _unexpected(request, exc: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse(error_body("internal", f"internal error ({type(exc).__name__})"), status_code=500)


def create_app(reader, cfg: ServeConfig | None = None, model_name: str = "", engine: str = "torch", index=None):
    """The FastAPI app over `reader` (already loaded), and over `index` (a spanqa.ask.Index) for /v1/ask. Run it
    with uvicorn, or test it with TestClient."""
    cfg = cfg or ServeConfig()
    from spanqa import __version__

    batcher = MicroBatcher(reader, cfg)
    asker = AskBatcher(index, reader, cfg, batcher._executor) if index is not None else None
    started = time.time()
    page = _web_file("index.html")
    assets = {name: _web_file(name) for name in WEB_FILES}

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        yield
        await batcher.stop()
        if asker is not None:
            await asker.stop()

    app = FastAPIOffline(title="spanqa", version=__version__, lifespan=lifespan,
                         description="Extractive question answering: a BERT-style encoder with begin and end heads.")
    app.state.batcher = batcher

    _add_error_handlers(app)
    item_schema = AnswerRequest.model_json_schema()
    body_schema = {"oneOf": [item_schema, {"type": "array", "items": item_schema, "minItems": 1,
                                           "maxItems": cfg.max_batch}]}

    request_body = {"required": True, "content": {"application/json": {"schema": body_schema}}}

    @app.post("/v1/answer", response_model=AnswerResponse | list[AnswerResponse],
              openapi_extra={"requestBody": request_body},
              responses={400: {"description": "malformed JSON"}, 401: {"description": "missing or wrong API key"},
                         413: {"description": "body too large"}, 415: {"description": "not application/json"},
                         422: {"description": "invalid field, over a limit"}, 503: {"description": "busy"}})
    async def answer(request: Request):
        """Answer one question (object in, object out) or several (list in, list out), in the CLI's JSON form."""
        raw = await read_body(request, cfg.max_body_bytes)  # first: every answer goes out after the body is read
        check_media_type(request)
        items, single = validate_payload(parse_json(raw), cfg)
        results = await batcher.submit(items)
        return JSONResponse(results[0] if single else results)

    _add_ask_route(app, asker, cfg)

    @app.get("/healthz")
    async def healthz():
        """Liveness and counters: requests, items, forward batches (items/batches = how well batching works)."""
        return {"status": "ok", "version": __version__, "model": model_name, "engine": engine,
                "device": str(reader.device), "uptime_s": round(time.time() - started, 1),
                "queue_items": batcher.pending, "stats": asdict(batcher.stats),
                "limits": {k: v for k, v in asdict(cfg).items() if k != "api_key"},
                "api_key_required": cfg.api_key is not None,
                "index": None if asker is None else {"path": str(asker.index.path), "passages": len(asker.index),
                                                     "documents": len(asker.index.documents)}}

    @app.get("/", include_in_schema=False)
    async def index():
        return HTMLResponse(page, headers=_PAGE_HEADERS)

    for path, route in (("/healthz", healthz), ("/", index)):  # HEAD for health checkers that probe with `curl -I`
        app.add_api_route(path, route, methods=["HEAD"], include_in_schema=False)

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str):
        if name not in assets:
            raise ApiError(404, "not_found", f"no static file {name!r}")
        return Response(assets[name], media_type=WEB_FILES[name], headers=_PAGE_HEADERS)

    if cfg.api_key is not None:
        app.add_middleware(ApiKeyMiddleware, api_key=check_api_key(cfg.api_key))
    return app


class AskAnswer(BaseModel):
    text: str
    score: float = Field(description="what answers are ranked by: the span's log-odds against its window's [CLS] "
                                     "plus the weighted BM25 score of its passage (spanqa.ask)")
    reader_score: float = Field(description="P_begin * P_end in the passage's window")
    document: str = Field(description="the document's id")
    source: str = Field(description="the file the document came from")
    start: int = Field(description="character offset into the document's text: text == document[start:end]")
    end: int
    title: str
    page: int | None = Field(description="the PDF page")
    passage: dict = Field(description="the passage read: index, start, end (offsets into the document), text, bm25")
    also_in: list[dict] = Field(description="other places where the same answer was found")
    probabilities: dict | None = Field(None, description="only with return_probabilities: the passage's tokens")


class AskResponse(BaseModel):
    answers: list[AskAnswer]
    no_answer: bool
    passages_read: int


def _add_ask_route(app, asker: AskBatcher | None, cfg: ServeConfig) -> None:
    item_schema = AskRequest.model_json_schema()
    body_schema = {"oneOf": [item_schema, {"type": "array", "items": item_schema, "minItems": 1,
                                           "maxItems": cfg.max_batch}]}
    request_body = {"required": True, "content": {"application/json": {"schema": body_schema}}}

    @app.post("/v1/ask", response_model=AskResponse | list[AskResponse], openapi_extra={"requestBody": request_body},
              responses={400: {"description": "malformed JSON"}, 401: {"description": "missing or wrong API key"},
                         404: {"description": "the server has no collection (start it with --index)"},
                         413: {"description": "body too large"}, 415: {"description": "not application/json"},
                         422: {"description": "invalid field, over a limit"}, 503: {"description": "busy"}})
    async def ask(request: Request):
        """Answer from the server's collection: one question (object in, object out) or several (list in, list
        out), in `spanqa ask --json`'s form."""
        raw = await read_body(request, cfg.max_body_bytes)  # first, as on /v1/answer: no answer before the body
        if asker is None:
            raise ApiError(404, "no_index", "this server has no collection; start it with `spanqa serve --index DIR`")
        check_media_type(request)
        items, single = validate_payload(parse_json(raw), cfg, AskRequest)
        results = await asker.submit(items)
        return JSONResponse(results[0] if single else results)


_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}



"""The OpenAI-compatible HTTP front end: routes, request checks, OpenAI-shaped answers and errors.

    GET  /health                 liveness, the served model, queue depth
    GET  /v1/models              the one served model
    POST /v1/chat/completions    chat template; `stream: true` as server-sent events (OpenAI chunks)
    POST /v1/completions         plain text continuation
    POST /v1/classify            classify / preference runs: labels with probabilities, top-k

Generation goes through the API's request batching (`tunelab.api.generation_scheduler`): each request is
queued, gathered with the concurrent ones into one batch, and its tokens come back to it as they are made.
Every mistake is an OpenAI error object (`{"error": {"message", "type", "param", "code"}}`) with its status,
and the server goes on serving. A front end only: parse, call the API, present.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import socket
import threading
import time
import uuid
from typing import Any, Literal, Union

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunelab.api import LoadedRun, classify_records, generation_scheduler
from tunelab.errors import UserError
from tunelab.inference.batching import BatchScheduler, Finished, GenerationRequest, QueueFull, chat_prompt
from tunelab.tasks.base import GenerativeTask, ProbabilisticTask

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_CLASSIFY_INPUTS = 256


class APIError(Exception):
    """An answer in OpenAI's error shape."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


# -- request bodies (unknown fields are ignored, as OpenAI's clients send several we do not use) -------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")


class _TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[_TextPart], None] = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    stop: Union[str, list[str], None] = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="one choice per request")

    @field_validator("stop")
    @classmethod
    def _at_most_four(cls, value):
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value

    def stops(self) -> tuple[str, ...]:
        values = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        return tuple(s for s in values if s)


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str]]
    echo: bool = False
    logprobs: int | None = None


class ClassifyRequest(_Body):
    model: str | None = None
    input: Union[str, list[str], list[dict[str, Any]]]
    top_k: int | None = Field(None, ge=1)


def _parse(model: type[BaseModel], body: Any) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "missing":
            message = f"missing required parameter `{param}`"
        elif first["type"] == "literal_error" and param and param.endswith(".role"):
            message = f"unknown role: {message.lower()}"
        else:
            message = f"invalid `{param}`: {message}" if param else message
        raise APIError(400, message, param=param, code="invalid_value" if first["type"] != "missing" else "missing")


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class Server:
    """The served model and the request handling around it (one per app)."""

    def __init__(self, run: LoadedRun, served_name: str, api_key: str | None = None,
                 scheduler: BatchScheduler | None = None, **batching):
        self.run = run
        self.served_name = served_name
        self.api_key = api_key
        self.generative = isinstance(run.task, GenerativeTask)
        self.scheduler = scheduler or (generation_scheduler(run, **batching) if self.generative else None)
        config = getattr(run.model, "config", None)
        self.context = getattr(config, "max_position_embeddings", None) or min(run.tokenizer.model_max_length, 1 << 20)
        self.default_max_tokens = run.config.generation.max_new_tokens
        self.classify_lock = threading.Lock()  # one classification forward pass at a time: no oversubscribed CPU
        self.created = int(time.time())

    # -- checks shared by every route ------------------------------------------------------------------------
    def authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(token.encode(), self.api_key.encode()):
            raise APIError(401, "Incorrect API key provided" if token else "Missing API key: send `Authorization: "
                           "Bearer KEY` (the server was started with --api-key)", code="invalid_api_key")

    async def body(self, request: Request) -> Any:
        self.authorize(request)
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > MAX_BODY_BYTES:
            raise APIError(413, f"request body of {int(length)} bytes is over the {MAX_BODY_BYTES} byte limit",
                           code="request_too_large")
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise APIError(413, f"request body is over the {MAX_BODY_BYTES} byte limit", code="request_too_large")
        try:
            body = json.loads(raw)
        except ValueError:
            raise APIError(400, "the request body is not valid JSON", code="invalid_json") from None
        if not isinstance(body, dict):
            raise APIError(400, "the request body must be a JSON object", code="invalid_json")
        return body

    def check_model(self, name: str | None) -> None:
        if name is not None and name != self.served_name:
            raise APIError(404, f"The model `{name}` does not exist; this server serves `{self.served_name}`",
                           param="model", code="model_not_found")

    def require_generation(self) -> None:
        if not self.generative:
            raise APIError(400, f"`{self.served_name}` is a {self.run.task.name} run: it does not generate text; "
                           "send its inputs to POST /v1/classify", param="model", code="unsupported_task")

    # -- generation --------------------------------------------------------------------------------------------
    def encode_prompt(self, text: str) -> list[int]:
        ids = self.run.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise APIError(400, "the prompt is empty", param="prompt", code="invalid_value")
        if len(ids) >= self.context:
            raise APIError(400, f"This model's maximum context length is {self.context} tokens; the prompt has "
                           f"{len(ids)}. Shorten the prompt.", param="messages", code="context_length_exceeded")
        return ids

    def start(self, params: _Sampling, prompt_ids: list[int], max_tokens: int | None) -> tuple[GenerationRequest, asyncio.Queue]:
        """Queue one generation; its text pieces and its `Finished` arrive on the returned asyncio queue."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def sink(item):  # called from the generation thread
            with contextlib.suppress(RuntimeError):  # the event loop closed: the server is stopping
                loop.call_soon_threadsafe(events.put_nowait, item)

        generation = self.run.config.generation
        temperature = params.temperature if params.temperature is not None else \
            (generation.temperature if generation.do_sample else 0.0)
        top_p = params.top_p if params.top_p is not None else (generation.top_p if generation.do_sample else 1.0)
        room = self.context - len(prompt_ids)  # the reply may fill the rest of the context, not more
        request = GenerationRequest(prompt_ids, min(max_tokens or self.default_max_tokens, room), sink,
                                    temperature=temperature, top_p=top_p, seed=params.seed, stop=params.stops())
        try:
            self.scheduler.submit(request)
        except QueueFull as exc:
            raise APIError(503, f"The server is busy ({exc}); retry shortly", code="server_overloaded",
                           type="server_error", headers={"Retry-After": "1"}) from None
        return request, events

    async def complete(self, request: GenerationRequest, events: asyncio.Queue) -> tuple[str, Finished]:
        pieces = []
        try:
            while True:
                item = await events.get()
                if isinstance(item, Finished):
                    if item.finish_reason == "error":
                        raise APIError(500, item.error or "generation failed", code="generation_failed")
                    return "".join(pieces), item
                pieces.append(item)
        finally:
            request.cancel()  # a no-op once finished; stops the row if the client went away

    def usage(self, finished: Finished) -> dict:
        return {"prompt_tokens": finished.prompt_tokens, "completion_tokens": finished.completion_tokens,
                "total_tokens": finished.prompt_tokens + finished.completion_tokens}

    def stream(self, request: GenerationRequest, events: asyncio.Queue, chunk, include_usage: bool) -> StreamingResponse:
        """Server-sent events: one chunk per text piece, a last chunk with the finish reason, usage, [DONE]."""

        async def lines():
            try:
                yield _sse(chunk(None, None, first=True))
                while True:
                    item = await events.get()
                    if isinstance(item, Finished):
                        break
                    yield _sse(chunk(item, None))
                if item.finish_reason == "error":  # headers are sent: the error goes in the stream
                    yield _sse({"error": {"message": item.error or "generation failed", "type": "server_error",
                                          "param": None, "code": "generation_failed"}})
                else:
                    yield _sse(chunk(None, item.finish_reason))
                    if include_usage:
                        yield _sse(dict(chunk(None, None), choices=[], usage=self.usage(item)))
                yield "data: [DONE]\n\n"
            finally:
                request.cancel()

        return StreamingResponse(lines(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def chat(self, http: Request):
        body = await self.body(http)
        params = _parse(ChatRequest, body)
        self.check_model(params.model)
        self.require_generation()
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in params.messages]
        prompt_ids = self.encode_prompt(chat_prompt(self.run.tokenizer, messages))
        request, events = self.start(params, prompt_ids, params.max_completion_tokens or params.max_tokens)
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if params.stream:
            def chunk(text, finish_reason, first=False):
                delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
                return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": self.served_name,
                        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}

            include_usage = bool(params.stream_options and params.stream_options.include_usage)
            return self.stream(request, events, chunk, include_usage)
        text, finished = await self.complete(request, events)
        return {"id": ident, "object": "chat.completion", "created": created, "model": self.served_name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                             "finish_reason": finished.finish_reason}],
                "usage": self.usage(finished)}

    async def completion(self, http: Request):
        body = await self.body(http)
        params = _parse(CompletionRequest, body)
        self.check_model(params.model)
        self.require_generation()
        if params.echo or params.logprobs:
            raise APIError(400, "echo and logprobs are not supported", param="echo" if params.echo else "logprobs",
                           code="unsupported_parameter")
        prompts = [params.prompt] if isinstance(params.prompt, str) else params.prompt
        if not prompts:
            raise APIError(400, "the prompt is empty", param="prompt", code="invalid_value")
        if params.stream and len(prompts) > 1:
            raise APIError(400, "streaming takes one prompt per request", param="prompt", code="unsupported_parameter")
        encoded = [self.encode_prompt(p) for p in prompts]
        ident, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        if params.stream:
            request, events = self.start(params, encoded[0], params.max_tokens)

            def chunk(text, finish_reason, first=False):
                return {"id": ident, "object": "text_completion", "created": created, "model": self.served_name,
                        "choices": [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}]}

            include_usage = bool(params.stream_options and params.stream_options.include_usage)
            return self.stream(request, events, chunk, include_usage)
        started = [self.start(params, ids, params.max_tokens) for ids in encoded]  # one batch when they fit
        results = await asyncio.gather(*(self.complete(r, e) for r, e in started))
        usage = {"prompt_tokens": sum(f.prompt_tokens for _, f in results),
                 "completion_tokens": sum(f.completion_tokens for _, f in results)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        return {"id": ident, "object": "text_completion", "created": created, "model": self.served_name,
                "choices": [{"index": i, "text": text, "logprobs": None, "finish_reason": f.finish_reason}
                            for i, (text, f) in enumerate(results)],
                "usage": usage}

    # -- classification ----------------------------------------------------------------------------------------
    async def classify(self, http: Request):
        body = await self.body(http)
        params = _parse(ClassifyRequest, body)
        self.check_model(params.model)
        if not isinstance(self.run.task, ProbabilisticTask):
            raise APIError(400, f"`{self.served_name}` generates text ({self.run.task.name}); /v1/classify is for "
                           "classify and preference runs: use /v1/chat/completions", code="unsupported_task")
        inputs = [params.input] if isinstance(params.input, str) else params.input
        if not inputs:
            raise APIError(400, "`input` is empty", param="input", code="invalid_value")
        if len(inputs) > MAX_CLASSIFY_INPUTS:
            raise APIError(400, f"at most {MAX_CLASSIFY_INPUTS} inputs per request, got {len(inputs)}", param="input",
                           code="invalid_value")
        text_fields = getattr(self.run.task, "text_fields", None) or []
        records = []
        for item in inputs:
            if isinstance(item, str):
                if len(text_fields) != 1:
                    raise APIError(400, f"this {self.run.task.name} run reads several fields per input; send objects "
                                   "with them (e.g. prompt, response_a, response_b)", param="input", code="invalid_value")
                records.append({text_fields[0]: item})
            else:
                records.append(item)

        def predict():
            with self.classify_lock:
                return classify_records(self.run, records)

        try:
            classes, probs = await run_in_threadpool(predict)
        except UserError as exc:
            raise APIError(400, str(exc), param="input", code="invalid_value") from None
        k = min(params.top_k or getattr(self.run.task.options, "top_k", len(classes)), len(classes))
        data = []
        for i, row in enumerate(probs):
            order = sorted(range(len(classes)), key=lambda j: -row[j])
            data.append({"index": i, "label": classes[order[0]],
                         "probabilities": {c: float(p) for c, p in zip(classes, row)},
                         "top_k": [{"label": classes[j], "probability": float(row[j])} for j in order[:k]]})
        return {"object": "list", "model": self.served_name, "data": data}


def create_app(run: LoadedRun, served_name: str, api_key: str | None = None, scheduler: BatchScheduler | None = None,
               **batching) -> FastAPI:
    """The FastAPI app serving `run` as `served_name`; generation batching options: max_batch, gather_ms, max_queue."""
    server = Server(run, served_name, api_key, scheduler, **batching)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if server.scheduler is not None:
            server.scheduler.start()
        try:
            yield
        finally:
            if server.scheduler is not None:
                await run_in_threadpool(server.scheduler.stop)

    app = FastAPI(title="tunelab", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        message = {404: f"no route {request.method} {request.url.path}", 405: f"{request.method} is not allowed on "
                   f"{request.url.path}"}.get(exc.status_code, str(exc.detail))
        return APIError(exc.status_code, message, code="not_found" if exc.status_code == 404 else None).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("error answering %s %s", request.method, request.url.path)
        return APIError(500, f"internal error: {type(exc).__name__}: {exc}", code="internal_error").response()

    @app.get("/health")
    async def health():
        scheduler = server.scheduler
        return {"status": "ok", "model": served_name, "task": run.task.name,
                "waiting": scheduler.waiting if scheduler else 0, "running": scheduler.running if scheduler else 0}

    @app.get("/v1/models")
    async def models(request: Request):
        server.authorize(request)
        return {"object": "list", "data": [_model_card(server)]}

    @app.get("/v1/models/{name:path}")
    async def model(name: str, request: Request):
        server.authorize(request)
        server.check_model(name)
        return _model_card(server)

    app.post("/v1/chat/completions")(server.chat)
    app.post("/v1/completions")(server.completion)
    app.post("/v1/classify")(server.classify)
    return app


def _model_card(server: Server) -> dict:
    return {"id": server.served_name, "object": "model", "created": server.created, "owned_by": "tunelab",
            "task": server.run.task.name}


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one); UserError when it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (another server there? pass --port)") from None
    sock.listen(2048)
    return sock


def run_server(app: FastAPI, sock: socket.socket) -> None:
    """Serve `app` on `sock` until Ctrl-C / SIGTERM."""
    import uvicorn

    uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)).run(sockets=[sock])


class BackgroundServer:
    """`app` served from a thread on a free loopback port (tests, benchmarks); `stop()` shuts it down."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self.sock = bind_socket(host, port)
        self.host, self.port = self.sock.getsockname()[:2]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                       name="tunelab-serve")

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 60.0) -> "BackgroundServer":
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()

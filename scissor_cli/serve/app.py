"""The HTTP side: the FastAPI app (health, models, chat completions with streaming) and ``run``, which binds the
socket, loads the model in the background and stops cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hmac
import json
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from scissor_cli.errors import (
    Interrupted,
    OptionError,
    ScissorError,
)

if TYPE_CHECKING:
    from scissor_cli.config import UserConfig
    from scissor_cli.model import VisionLanguageModel
    from scissor_cli.options import Profile
    from scissor_cli.pipeline import CompressedVideo, VideoRun
    from scissor_cli.settings import Overrides
from scissor_cli.serve.engine import Engine, _chunk, _Generate, _usage, completion_body, scissor_stats
from scissor_cli.serve.protocol import (
    INSTALL_HINT,
    ChatRequest,
    NotFound,
    ServeOptions,
    TooLarge,
    Unauthorized,
    Unavailable,
    _bad,
    _with_param,
    error_body,
    parse_request,
    validate_serve,
)


# ---------------------------------------------------------------------------------------------------- HTTP
@dataclass
class ServerState:
    options: ServeOptions
    model_id: str
    created: int = field(default_factory=lambda: int(time.time()))
    engine: Engine | None = None
    closing: bool = False

    def ready(self) -> Engine:
        if self.closing:
            raise Unavailable("the server is shutting down", hint="retry against a running server")
        if self.engine is None:
            raise _with_param(
                Unavailable("the model is still loading", hint="retry when GET /health answers 200"), None, "loading"
            )
        return self.engine


async def _read_json(request: Any, limit: int) -> Any:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise TooLarge(f"the request body ({int(length):,} bytes) is larger than the server's limit ({limit:,})",
                       hint="send the video as a URL or a file, or raise --max-video-mb")  # fmt: skip
    data = bytearray()
    async for chunk in request.stream():
        data += chunk
        if len(data) > limit:
            raise TooLarge(f"the request body is larger than the server's limit ({limit:,} bytes)",
                           hint="send the video as a URL or a file, or raise --max-video-mb")  # fmt: skip
    try:
        return json.loads(data)
    except ValueError as e:
        raise _bad(f"the request body is not valid JSON: {e}", hint="send OpenAI's chat.completions JSON") from e


def create_app(state: ServerState) -> Any:
    """The FastAPI application: /health, /v1/models, /v1/chat/completions; every error as OpenAI's error object."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException

    from scissor_cli import render

    app = FastAPI(title="scissor", docs_url=None, redoc_url=None, openapi_url=None)
    options = state.options
    body_limit = options.max_video_bytes * 4 // 3 + (1 << 20)  # a base64 video plus the rest of the request

    def fail(e: BaseException) -> JSONResponse:
        status, body = error_body(e)
        if not isinstance(e, ScissorError):
            render.internal_error(e)  # the server's log; the client gets no traceback
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        if exc.status_code == 404:
            e: ScissorError = _with_param(
                NotFound(f"no such endpoint: {request.url.path}",
                         hint="the API is GET /health, GET /v1/models, POST /v1/chat/completions"),
                None,
                "not_found",
            )  # fmt: skip
            return fail(e)
        body = {"error": {"message": str(exc.detail), "type": "invalid_request_error", "param": None,
                          "code": str(exc.status_code)}}  # fmt: skip
        return JSONResponse(body, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _any_error(request: Request, exc: Exception) -> JSONResponse:
        return fail(exc)

    def check_key(request: Request) -> None:
        key = options.api_key
        if not key:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if not (scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())):
            raise _with_param(
                Unauthorized("missing or wrong API key", hint="send the header Authorization: Bearer KEY"),
                None,
                "invalid_api_key",
            )

    async def health() -> JSONResponse:
        if state.engine is None or state.closing:
            return JSONResponse({"status": "closing" if state.closing else "loading"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def models(request: Request) -> Any:
        try:
            check_key(request)
        except ScissorError as e:
            return fail(e)
        entry = {"id": state.model_id, "object": "model", "created": state.created, "owned_by": "scissor"}
        return {"object": "list", "data": [entry]}

    async def completions(request: Request) -> Any:
        try:
            check_key(request)
            engine = state.ready()
            req = parse_request(await _read_json(request, body_limit), state.model_id)
            profile = engine.request_profile(req)
            with engine.admitted():
                t0 = time.perf_counter()
                run, compressed = await engine.prepare(req.video, req, profile)
                cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
                if req.stream:
                    return StreamingResponse(
                        _stream(engine, req, profile, run, compressed, cid, created, state.model_id, t0),
                        media_type="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                    )
                item = engine.submit_generate(compressed, req, profile)
                try:
                    row, n_rows = await asyncio.wrap_future(item.future)
                finally:
                    item.cancelled.set()  # a no-op once answered; stops the row if this task is cancelled
                result = engine.result(run, req, profile, row, n_rows, t0)
                return JSONResponse(completion_body(result, cid, created, state.model_id))
        except Exception as e:  # noqa: BLE001 - every error becomes a response; the server goes on
            return fail(e)

    # the annotations are strings (``from __future__``) naming a class imported here: FastAPI gets the class itself
    for route in (models, completions):
        route.__annotations__["request"] = Request
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/v1/models", models, methods=["GET"])
    app.add_api_route("/v1/chat/completions", completions, methods=["POST"])
    return app


async def _stream(engine: Engine, req: ChatRequest, profile: Profile, run: VideoRun, compressed: CompressedVideo,
                  cid: str, created: int, model: str, t0: float):  # fmt: skip
    """SSE chunks: the role, the text as it is generated (pieces add up to the non-streamed answer), the finish
    reason, usage (with ``stream_options.include_usage``), ``[DONE]``. Counted in flight until it ends."""
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[str | None] = asyncio.Queue()

    def on_text(piece: str) -> None:  # the model thread
        with contextlib.suppress(RuntimeError):  # the loop is gone (shutdown): the other rows must not fail
            loop.call_soon_threadsafe(pieces.put_nowait, piece)

    engine.in_flight += 1  # the admitted() block ended when the response object was returned
    item: _Generate | None = None
    try:
        item = engine.submit_generate(compressed, req, profile, on_text=on_text)
        done = asyncio.wrap_future(item.future)
        done.add_done_callback(lambda _: pieces.put_nowait(None))
        yield _chunk(cid, created, model, {"role": "assistant", "content": ""})
        text, sent = "", 0
        while (piece := await pieces.get()) is not None:
            text += piece
            kept = text.rstrip()  # trailing whitespace waits: the answer is stripped
            if len(kept) > sent:
                yield _chunk(cid, created, model, {"content": kept[sent:]})
                sent = len(kept)
        try:
            row, n_rows = done.result()
        except Exception as e:  # noqa: BLE001 - the status line is sent: the error goes in the stream
            yield f"data: {json.dumps(error_body(e)[1])}\n\n".encode()
            yield b"data: [DONE]\n\n"
            return
        result = engine.result(run, req, profile, row, n_rows, t0)
        final = result.answer.answer
        if len(final) > sent:
            yield _chunk(cid, created, model, {"content": final[sent:]})
        yield _chunk(cid, created, model, {}, result.finish_reason, scissor=scissor_stats(result))
        if req.include_usage:
            body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [], "usage": _usage(result)}  # fmt: skip
            yield f"data: {json.dumps(body)}\n\n".encode()
        yield b"data: [DONE]\n\n"
    finally:
        engine.in_flight -= 1
        if item is not None:
            item.cancelled.set()  # the client went away (or it ended): a waiting row is dropped, a lone one stops


# ---------------------------------------------------------------------------------------------------- running
def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(2048)
    except OSError as e:
        sock.close()
        raise OptionError(
            f"cannot listen on {host}:{port}: {e.strerror or e}",
            hint="pick another --port (0: any free port), or another --host",
        ) from e
    sock.set_inheritable(True)
    return sock


def run(profile: Profile, options: ServeOptions, overrides: Overrides, config: UserConfig | None = None,
        load: Callable[[], VisionLanguageModel] | None = None, stop: threading.Event | None = None) -> int:  # fmt: skip
    """Serve until SIGINT (Interrupted, exit 130) or SIGTERM (returns 0). The model loads while the server already
    answers /health (503 until loaded); one line on stderr when it is ready. ``profile``: ``overrides`` (the
    server's flags) resolved with ``config`` (default: the user config, read once); each request's profile is
    ``settings.resolve`` of ``overrides`` with the request's fields on top.

    ``load``: the model (default: ``load_model(profile.model)``); ``stop``: set it to stop the server (a server in
    a thread, as the benchmark runs it, gets no signals)."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise ScissorError(f"scissor serve needs fastapi and uvicorn ({e.name} is not installed)",
                           hint=INSTALL_HINT) from e  # fmt: skip
    from scissor_cli import render

    validate_serve(options)
    sock = _bind(options.host, options.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    state = ServerState(options, options.served_model_name or profile.model.model)
    http_config = uvicorn.Config(create_app(state), log_level="error", access_log=False, lifespan="off",
                                 log_config=None, timeout_graceful_shutdown=options.shutdown_s)  # fmt: skip
    caught: list[int] = []

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):  # uvicorn's re-raises the signal on the way out (exit 143 on SIGTERM)
            if threading.current_thread() is not threading.main_thread():
                yield
                return

            def on_signal(signum: int, frame: object) -> None:
                if caught:  # a second signal: stop waiting for in-flight requests
                    self.force_exit = True
                caught.append(signum)
                state.closing = True
                self.should_exit = True

            previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)

    server = Server(http_config)
    load_error: list[BaseException] = []

    async def main() -> None:
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        if stop is not None:

            def watch() -> None:
                stop.wait()
                server.should_exit = True

            threading.Thread(target=watch, daemon=True).start()
        loaded: concurrent.futures.Future = concurrent.futures.Future()

        def load_in_thread() -> None:
            try:
                from scissor_cli.model import load_model

                loaded.set_result(load() if load is not None else load_model(profile.model))
            except BaseException as e:  # noqa: BLE001 - reported below, the server stops
                loaded.set_exception(e)

        # daemon: a signal must not wait for the load to end
        threading.Thread(target=load_in_thread, name="scissor-load", daemon=True).start()
        waiting = asyncio.wrap_future(loaded)
        await asyncio.wait([serving, waiting], return_when=asyncio.FIRST_COMPLETED)
        if waiting.done() and not serving.done():
            try:
                vlm = waiting.result()
                engine = Engine(vlm, options, profile, overrides, config)
                engine.start(profile.model.cache)
                state.engine = engine
                notes = [f"{options.max_batch} rows per batch", f"{options.max_queue} requests in flight"]
                notes.append("API key required" if options.api_key else "no API key")
                render.serve_ready(f"http://{shown}:{port}/v1", state.model_id, "; ".join(notes))
            except BaseException as e:  # noqa: BLE001
                load_error.append(e)
                server.should_exit = True
        await serving

    try:
        asyncio.run(main())
    finally:
        sock.close()
        if state.engine is not None:
            state.engine.close(options.shutdown_s)
    if load_error:
        raise load_error[0]
    if caught and caught[0] == signal.SIGINT:
        raise Interrupted("the server stopped")
    render.serve_stopped("stopped (SIGTERM)" if caught else "stopped")
    return 0

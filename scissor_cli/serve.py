"""``scissor serve``: an OpenAI-compatible HTTP server that answers questions about videos, the model loaded once.

``POST /v1/chat/completions`` takes OpenAI's request with vLLM's ``video_url`` content parts and answers exactly what
``scissor ask --json`` answers for the same video, question and settings (greedy): the same pipeline functions run
(``resolve_profile``, ``encode_video``, ``compress_video``, ``generate``, ``make_answers``), and a conversation is
prompted the way ``scissor chat`` prompts it (the video once, in the first user turn; ``model.prompt_ids``).

Where the work runs:

* the event loop (uvicorn's thread) parses requests, checks them and streams answers; it never waits on a video
  or the model;
* a thread pool fetches (URLs, ``data:`` URLs), probes and decodes videos; a video whose features are in the
  feature cache is not decoded;
* one model thread (torch is not re-entrant) runs, in arrival order, a video's vision tower + SCC or one batched
  ``generate`` for every waiting request that can share it (same history and generation settings, greedy, at most
  ``max_batch`` rows, at most one streamed row: ``generate`` streams its first row only).

Backpressure: at most ``max_queue`` requests are in flight (being prepared, waiting or generating); one more gets
503 at once. A streamed request whose client goes away is cancelled: dropped while it waits, and its generation
stopped when it is the only row left (a batched ``generate`` cannot drop one row; the others finish normally).

fastapi and uvicorn are imported in ``run`` only (the ``serve`` extra).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import hmac
import ipaddress
import json
import os
import signal
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from scissor_cli.errors import (
    Interrupted,
    ManifestError,
    ModelError,
    OptionError,
    ProfileError,
    ScissorError,
    VideoError,
)

if TYPE_CHECKING:
    from scissor_cli.model import GenerationOutput, VisionLanguageModel
    from scissor_cli.options import Profile
    from scissor_cli.pipeline import CompressedVideo, EncodedVideo

INSTALL_HINT = "pip install 'scissor-cli[serve]'"
REQUEST_FIELDS = ("retention", "tokens", "tau", "tau_temporal", "epsilon", "frames", "fps", "start", "end",
                  "no_compress", "profile")  # fmt: skip
# the compression flags: a request that sets any of them replaces the server's (the flags' tau-vs-budget rule)
_COMPRESSION = ("retention", "tokens", "tau", "tau_temporal", "epsilon", "no_compress")
# what the server's model flags fix for every request
_MODEL_FLAGS = ("model", "revision", "device", "dtype", "offline", "no_cache", "newline")
# build_profile's errors name flags; a request's error names the request's field (longest first: --tau-temporal)
_FIELD_NAMES = {
    "--max-new-tokens": "max_tokens",
    "--tau-temporal": "tau_temporal",
    "--no-compress": "no_compress",
    "--retention": "retention",
    "--temperature": "temperature",
    "--epsilon": "epsilon",
    "--tokens": "tokens",
    "--frames": "frames",
    "--start": "start",
    "--seed": "seed",
    "--fps": "fps",
    "--end": "end",
    "--tau": "tau",
}
# request fields scissor cannot honour: refused when set, so a client never silently gets something else
_UNSUPPORTED = ("tools", "functions", "logprobs", "top_logprobs", "logit_bias", "audio", "prediction")


# ---------------------------------------------------------------------------------------------------- errors
class Unauthorized(ScissorError):
    """A missing or wrong API key."""


class Forbidden(ScissorError):
    """A file outside the allowed directories, or a source the server refuses (files or URLs off)."""


class NotFound(ScissorError):
    """A model or route this server does not serve."""


class TooLarge(ScissorError):
    """A request body or video beyond the size limit."""


class Unavailable(ScissorError):
    """The queue is full, the model is still loading, or the server is shutting down."""


# The one table from error class to HTTP status and OpenAI error type (first match wins: subclasses first).
STATUS: tuple[tuple[type[ScissorError], int, str], ...] = (
    (Unauthorized, 401, "authentication_error"),
    (Forbidden, 403, "permission_error"),
    (NotFound, 404, "not_found_error"),
    (TooLarge, 413, "invalid_request_error"),
    (Unavailable, 503, "server_error"),
    (Interrupted, 503, "server_error"),
    (OptionError, 400, "invalid_request_error"),
    (ProfileError, 400, "invalid_request_error"),
    (VideoError, 400, "invalid_request_error"),
    (ManifestError, 400, "invalid_request_error"),
    (ModelError, 500, "server_error"),
    (ScissorError, 500, "server_error"),
)


def error_body(e: BaseException) -> tuple[int, dict[str, Any]]:
    """(status, OpenAI error object) for any exception; never a traceback. The message is the CLI's error line
    and its hint on one line."""
    if not isinstance(e, ScissorError):
        message = f"internal error ({type(e).__name__}); the server logged it"
        return 500, {"error": {"message": message, "type": "server_error", "param": None, "code": "internal_error"}}
    status, kind = next((s, k) for cls, s, k in STATUS if isinstance(e, cls))
    message = e.message + (f" (hint: {e.hint})" if e.hint else "")
    code = getattr(e, "code", None) or type(e).__name__.removesuffix("Error").lower()
    return status, {"error": {"message": message, "type": kind, "param": getattr(e, "param", None), "code": code}}


def _with_param(e: ScissorError, param: str | None, code: str | None = None) -> ScissorError:
    e.param = param  # type: ignore[attr-defined]
    if code:
        e.code = code  # type: ignore[attr-defined]
    return e


def _bad(message: str, hint: str | None = None, param: str | None = None) -> OptionError:
    return _with_param(OptionError(message, hint=hint), param)  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------- options
@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000  # 0: any free port (the line on stderr says which)
    api_key: str | None = None  # every endpoint but /health needs "Authorization: Bearer KEY"
    allow_files: tuple[str, ...] = ()  # directories local videos may be read from (none: no local files)
    allow_urls: bool = True  # fetch http(s) videos
    url_timeout_s: float = 30.0  # a whole URL download
    max_video_mb: float = 512.0  # a fetched or uploaded (data: URL) video
    max_batch: int = 8  # rows of one batched generate
    max_queue: int = 64  # requests in flight; one more gets 503
    served_model_name: str | None = None  # the id clients name; default: the profile's model
    decode_workers: int = 4  # threads fetching, probing and decoding videos (mostly waiting on ffmpeg or sockets)
    shutdown_s: float = 5.0  # in-flight requests get this long after SIGINT/SIGTERM

    @property
    def max_video_bytes(self) -> int:
        return int(self.max_video_mb * 1024 * 1024)


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def validate_serve(o: ServeOptions) -> ServeOptions:
    """Check every server option; raise OptionError naming the flag."""
    if not (isinstance(o.port, int) and 0 <= o.port <= 65535):
        raise OptionError(f"--port {o.port} is out of range", hint="give a port from 1 to 65535, or 0 for any free one")
    for flag, value, low in (("--max-batch", o.max_batch, 1), ("--max-queue", o.max_queue, 1),
                             ("--decode-workers", o.decode_workers, 1)):  # fmt: skip
        if not (isinstance(value, int) and value >= low):
            raise OptionError(f"{flag} {value} is out of range", hint=f"{flag} must be an integer >= {low}")
    for flag, value in (("--url-timeout", o.url_timeout_s), ("--max-video-mb", o.max_video_mb)):
        if not (isinstance(value, (int, float)) and value > 0 and value == value and value != float("inf")):
            raise OptionError(f"{flag} {value} is out of range", hint=f"{flag} must be a number > 0")
    if o.api_key is not None and not o.api_key.strip():
        raise OptionError("--api-key is empty", hint="give a key, or leave --api-key and SCISSOR_API_KEY unset")
    if not is_loopback(o.host) and not o.api_key:
        raise OptionError(
            f"--host {o.host} is reachable from other machines, and no API key is set: anyone could use the model",
            hint="pass --api-key KEY (or set SCISSOR_API_KEY), or serve on --host 127.0.0.1",
        )
    for d in o.allow_files:
        if not os.path.isdir(d):
            raise OptionError(f"--allow-files {d} is not a directory", hint="give an existing directory of videos")
    return o


# ---------------------------------------------------------------------------------------------------- requests
@dataclass(frozen=True)
class ChatRequest:
    """A parsed ``/v1/chat/completions`` body."""

    video: str  # the video_url's url
    question: str
    history: tuple[tuple[str, str], ...]  # earlier (question, answer) turns
    flags: dict[str, Any]  # scissor fields and standard sampling fields, as build_profile's keyword arguments
    profile: str | None
    top_p: float | None
    stream: bool
    include_usage: bool


def _text_of(content: Any, role: str, i: int) -> tuple[str, list[str]]:
    """A message's text and its video urls (content: a string, or a list of parts)."""
    param = f"messages[{i}].content"
    if isinstance(content, str):
        return content, []
    if not isinstance(content, list):
        raise _bad(f"{param} must be a string or a list of content parts", param=param)
    texts, videos = [], []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "video_url" and role == "user":
            url = part.get("video_url")
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str) or not url:
                raise _bad(f"{param}[{j}].video_url.url is missing", hint='give {"url": "file:///..."}', param=param)
            videos.append(url)
        else:
            raise _bad(
                f"{param}[{j}]: content part {kind!r} is not supported here",
                hint="send text parts and one video_url part (in a user message)",
                param=param,
            )
    return "\n".join(texts), videos


def _number(body: dict, key: str, kind: type) -> Any:
    value = body.get(key)
    if value is None:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        ok = ok and float(value).is_integer()
        value = int(value) if ok else value
    if not ok:
        what = "an integer" if kind is int else "a number"
        raise _bad(f"{key} must be {what}, got {value!r}", param=key)
    return value


def parse_request(body: Any, served_model: str) -> ChatRequest:
    """Check a request body's shape and pick out the conversation, the video and the settings; OptionError (400)
    or NotFound (404, another model) naming the field."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object", hint="send OpenAI's chat.completions request")
    model = body.get("model")
    if model is not None and model != served_model:
        raise _with_param(
            NotFound(
                f"model {model!r} is not served here", hint=f"this server serves {served_model!r} (GET /v1/models)"
            ),
            "model",
            "model_not_found",
        )
    for key in _UNSUPPORTED:
        if body.get(key) not in (None, False, [], {}):
            raise _bad(f"{key} is not supported by scissor serve", hint=f"drop {key} from the request", param=key)
    if body.get("n") not in (None, 1):
        raise _bad("n must be 1: one answer per request", hint="send n requests instead", param="n")
    if body.get("stop") not in (None, [], ""):
        raise _bad("stop sequences are not supported", hint="drop stop from the request", param="stop")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages must be a non-empty list", hint="send at least one user message", param="messages")
    turns: list[tuple[str, str]] = []
    videos: list[str] = []
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        if role in ("system", "developer"):
            continue  # the checkpoint's own system turn stays (as in ask and chat)
        if role not in ("user", "assistant"):
            raise _bad(
                f"messages[{i}].role {role!r} is not supported",
                hint="use user and assistant messages",
                param="messages",
            )
        text, found = _text_of(m.get("content"), role, i)
        videos.extend(found)
        turns.append((role, text))
    roles = [r for r, _ in turns]
    if not roles or roles[-1] != "user" or any(r == roles[k + 1] for k, r in enumerate(roles[:-1])):
        raise _bad(
            "messages must alternate user and assistant turns and end with a user turn",
            hint="put the video and the first question in the first user message",
            param="messages",
        )
    if len(videos) != 1:
        raise _bad(
            f"the conversation carries {len(videos)} videos; scissor answers about exactly one",
            hint='add one {"type": "video_url", "video_url": {"url": ...}} part to a user message',
            param="messages",
        )
    question = turns[-1][1].strip()
    if not question:
        raise _bad("a question is empty", hint='ask something, e.g. "What is happening?"', param="messages")
    texts = [t.strip() for _, t in turns[:-1]]
    history = tuple(zip(texts[0::2], texts[1::2], strict=True))

    limit = body.get("max_completion_tokens")
    limit = _number(body, "max_completion_tokens" if limit is not None else "max_tokens", int)
    flags: dict[str, Any] = {"max_new_tokens": limit}
    flags["temperature"] = _number(body, "temperature", float)
    flags["seed"] = _number(body, "seed", int)
    for key in ("retention", "tau", "tau_temporal", "epsilon", "fps", "start", "end"):
        flags[key] = _number(body, key, float)
    for key in ("tokens", "frames"):
        flags[key] = _number(body, key, int)
    no_compress = body.get("no_compress")
    if no_compress not in (None, True, False):
        raise _bad(f"no_compress must be true or false, got {no_compress!r}", param="no_compress")
    flags["no_compress"] = bool(no_compress)
    profile = body.get("profile")
    if profile is not None and not isinstance(profile, str):
        raise _bad(f"profile must be a profile name, got {profile!r}", param="profile")
    stream = body.get("stream")
    if stream not in (None, True, False):
        raise _bad(f"stream must be true or false, got {stream!r}", param="stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _bad("stream_options must be an object", param="stream_options")
    return ChatRequest(
        video=videos[0],
        question=question,
        history=history,
        flags=flags,
        profile=profile,
        top_p=_number(body, "top_p", float),
        stream=bool(stream),
        include_usage=bool(options.get("include_usage")),
    )


def merge_flags(server: dict[str, Any], request: dict[str, Any], request_profile: str | None) -> dict[str, Any]:
    """The flags one request runs with: the server's, then the request's on top, by the flags' rule. A request that
    sets any compression field replaces all of the server's compression flags (so ``tau`` over a server
    ``--retention`` is a threshold, not a contradiction); a request ``profile`` replaces every server flag but the
    model's."""
    if request_profile is not None:
        merged = {k: v for k, v in server.items() if k in _MODEL_FLAGS}
    else:
        merged = dict(server)
        if any(request.get(k) not in (None, False) for k in _COMPRESSION):
            merged.update({k: None for k in _COMPRESSION}, no_compress=False)
    merged.update({k: v for k, v in request.items() if v is not None and not (k == "no_compress" and not v)})
    return merged


def _named_for_requests(e: OptionError) -> OptionError:
    """The flags' error with the request's field names; ``param``: the field named first."""
    message, hint = e.message, e.hint or ""
    named = sorted((message.find(flag), name) for flag, name in _FIELD_NAMES.items() if flag in message)
    for flag, name in _FIELD_NAMES.items():
        message, hint = message.replace(flag, name), hint.replace(flag, name)
    if not named and "top_p" in message:
        named = [(0, "top_p")]
    return _bad(message, hint or None, param=named[0][1] if named else None)


# ---------------------------------------------------------------------------------------------------- videos
class _NoSchemeChange(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http(s) only (urllib would also follow one to ftp)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 - urllib's signature
        if urllib.parse.urlparse(newurl).scheme not in ("http", "https"):
            raise urllib.error.HTTPError(newurl, code, "redirect to a non-http(s) URL refused", headers, fp)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _too_large(what: str, o: ServeOptions) -> TooLarge:
    return _with_param(  # type: ignore[return-value]
        TooLarge(f"{what} is larger than the server's limit of {o.max_video_mb:g} MB",
                 hint="send a shorter or smaller video, or start the server with a larger --max-video-mb"),
        "messages",
        "video_too_large",
    )  # fmt: skip


def _spool(chunks: Any, o: ServeOptions, what: str, deadline: float | None = None) -> str:
    fd, path = tempfile.mkstemp(prefix="scissor-serve-")
    try:
        with os.fdopen(fd, "wb") as f:
            n = 0
            for chunk in chunks:
                n += len(chunk)
                if n > o.max_video_bytes:
                    raise _too_large(what, o)
                if deadline is not None and time.monotonic() > deadline:
                    raise VideoError(
                        f"fetching {what} took longer than {o.url_timeout_s:g} s",
                        hint="use a faster source, or start the server with a larger --url-timeout",
                    )
                f.write(chunk)
        if n == 0:
            raise VideoError(f"{what} is empty", hint="send a video file")
    except BaseException:
        os.unlink(path)
        raise
    return path


def _download(url: str, o: ServeOptions) -> str:
    deadline = time.monotonic() + o.url_timeout_s
    opener = urllib.request.build_opener(_NoSchemeChange)
    request = urllib.request.Request(url, headers={"User-Agent": "scissor-serve"})
    try:
        response = opener.open(request, timeout=o.url_timeout_s)
    except urllib.error.HTTPError as e:
        raise VideoError(f"cannot fetch {url}: HTTP {e.code} {e.reason}", hint="check the URL") from e
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise VideoError(f"cannot fetch {url}: {reason}", hint="check the URL and that the server can reach it") from e
    with response:
        length = response.headers.get("Content-Length")
        if length and length.isdigit() and int(length) > o.max_video_bytes:
            raise _too_large(url, o)

        def chunks():
            while True:
                try:
                    chunk = response.read1(1 << 16)
                except (OSError, ValueError) as e:
                    raise VideoError(f"cannot fetch {url}: {e}", hint="check the URL") from e
                if not chunk:
                    return
                yield chunk

        return _spool(chunks(), o, url, deadline)


def _from_data_url(url: str, o: ServeOptions) -> str:
    header, sep, payload = url.partition(",")
    mime = header[5:].split(";")[0].lower()
    if not sep or not header.endswith(";base64") or not mime.startswith(("video/", "image/", "application/")):
        raise _bad(
            "a data: URL must be data:video/...;base64,...", hint="base64-encode the video file", param="messages"
        )
    if len(payload) * 3 // 4 > o.max_video_bytes:
        raise _too_large("the data: URL's video", o)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as e:
        raise _bad("the data: URL is not valid base64", hint="base64-encode the video file", param="messages") from e
    return _spool([data], o, "the data: URL's video")


def local_path(url: str, o: ServeOptions) -> str:
    """A ``file://`` URL or absolute path -> its real path, when it lies under an ``--allow-files`` directory
    (symlinks and ``..`` resolved first, so neither escapes); Forbidden otherwise, before the file is looked at."""
    if url.startswith("file:"):
        parsed = urllib.parse.urlparse(url)
        if parsed.netloc not in ("", "localhost"):
            raise _bad(f"{url}: a file:// URL names a file on this machine", hint="use file:///path", param="messages")
        path = urllib.parse.unquote(parsed.path)
    else:
        path = url
    if not o.allow_files:
        raise _with_param(  # type: ignore[misc]
            Forbidden("this server reads no local files",
                      hint="send the video as a data: or http(s) URL, or start the server with --allow-files DIR"),
            "messages",
            "file_not_allowed",
        )  # fmt: skip
    real = os.path.realpath(path)
    for folder in o.allow_files:
        root = os.path.realpath(folder)
        if os.path.commonpath([real, root]) == root:
            return real
    raise _with_param(  # type: ignore[misc]
        Forbidden(f"{path} is outside the directories this server may read",
                  hint="put the video under an --allow-files directory, or send it as a data: URL"),
        "messages",
        "file_not_allowed",
    )  # fmt: skip


def fetch_video(url: str, o: ServeOptions) -> tuple[str, bool]:
    """(a local file to decode, whether it is a temporary copy the caller removes)."""
    lower = url[:8].lower()
    if lower.startswith("data:"):
        return _from_data_url(url, o), True
    if lower.startswith(("http://", "https://")):
        if not o.allow_urls:
            raise _with_param(  # type: ignore[misc]
                Forbidden("this server fetches no URLs (--no-urls)",
                          hint="send the video as a data: URL, or a file under an --allow-files directory"),
                "messages",
                "url_not_allowed",
            )  # fmt: skip
        return _download(url, o), True
    if lower.startswith("file:") or os.path.isabs(url):
        return local_path(url, o), False
    raise _bad(
        f"video url {url[:80]!r} is not a file://, http(s):// or data: URL",
        hint="give file:///abs/path.mp4, https://..., data:video/mp4;base64,... or an absolute path",
        param="messages",
    )


# ---------------------------------------------------------------------------------------------------- the model thread
@dataclass(eq=False)
class _Prepare:
    video: str
    profile: Profile
    question: str
    history: tuple[tuple[str, str], ...]
    info: Any
    decoded: Any
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


@dataclass(eq=False)
class _Generate:
    tokens: Any  # [M, D]
    question: str
    history: tuple[tuple[str, str], ...]
    profile: Profile
    on_text: Callable[[str], None] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)

    def batch_key(self) -> Any:
        g = self.profile.generation
        return None if g.temperature > 0 else (g, self.history)  # sampling runs alone: its seed is per call


def _row(out: GenerationOutput, i: int) -> GenerationOutput:
    """Row ``i`` of a batched output as a one-row output (per-row lists sliced, batch-wide values kept)."""
    values = {}
    for f in fields(out):
        v = getattr(out, f.name)
        values[f.name] = v[i : i + 1] if isinstance(v, list) and len(v) == len(out.texts) else v
    return type(out)(**values)


class ModelWorker:
    """The one thread that touches the model: vision tower + SCC jobs and batched generates, in arrival order."""

    def __init__(self, vlm: VisionLanguageModel, max_batch: int, cache: Any):
        self.vlm, self.max_batch, self.cache = vlm, max_batch, cache
        self._items: deque[_Prepare | _Generate] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.batches: list[int] = []  # rows of each generate, for the stats line and the tests
        self._thread = threading.Thread(target=self._run, name="scissor-model", daemon=True)
        self._thread.start()

    def submit(self, item: _Prepare | _Generate) -> concurrent.futures.Future:
        with self._cond:
            if self._closed:
                raise Unavailable("the server is shutting down", hint="retry against a running server")
            self._items.append(item)
            self._cond.notify()
        return item.future

    def close(self, timeout: float) -> None:
        """Stop the generation in progress, fail what waits, and wait up to ``timeout`` s for the thread."""
        with self._cond:
            self._closed = True
            left, self._items = list(self._items), deque()
            self._cond.notify_all()
        for item in left:
            if item.future.set_running_or_notify_cancel():
                item.future.set_exception(Unavailable("the server is shutting down", hint="retry later"))
        self._thread.join(timeout)

    def _take(self) -> list[_Prepare | _Generate] | None:
        with self._cond:
            while not self._items and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            # a prepare whose features are cached is quick: it goes first, so its generate joins the next batch
            # instead of the batch running without it
            head = next((i for i in self._items if isinstance(i, _Prepare) and i.decoded is None), self._items[0])
            self._items.remove(head)
            if isinstance(head, _Prepare) or head.batch_key() is None:
                return [head]
            rows, streamed = [head], head.on_text is not None
            for item in list(self._items):
                if len(rows) >= self.max_batch:
                    break
                if isinstance(item, _Generate) and item.batch_key() == head.batch_key():
                    if item.on_text is not None:
                        if streamed:
                            continue
                        streamed = True
                    self._items.remove(item)
                    rows.append(item)
            rows.sort(key=lambda r: r.on_text is None)  # the streamed row first: generate streams row 0
            return rows

    def _run(self) -> None:
        while (work := self._take()) is not None:
            work = [w for w in work if w.future.set_running_or_notify_cancel()]
            if work and isinstance(work[0], _Prepare):
                self._prepare(work[0])
            elif work:
                self._generate(work)  # type: ignore[arg-type]

    def _prepare(self, job: _Prepare) -> None:
        from scissor_cli.pipeline import compress_video, encode_video

        try:
            encoded = encode_video(self.vlm, job.video, job.profile, cache=self.cache, info=job.info,
                                   decoded=job.decoded)  # fmt: skip
            compressed = compress_video(encoded, job.profile)
            self._check_context(compressed.n_final, job)
            job.future.set_result((encoded, compressed))
        except BaseException as e:  # noqa: BLE001 - handed to the request that asked
            job.future.set_exception(e)

    def _check_context(self, n_video: int, job: _Prepare) -> None:
        """Here, not on the event loop: the tokenizer is the model thread's too."""
        limit = self.vlm.max_positions
        n_prompt = self.vlm.prompt_length(n_video, job.question, job.history)
        n_answer = job.profile.generation.max_new_tokens
        if limit is not None and n_prompt + n_answer > limit:
            raise _bad(
                f"this request would not fit in the model's context: {n_prompt:,} prompt tokens + up to "
                f"{n_answer:,} for the answer > {limit:,}",
                hint="fewer visual tokens (retention, tokens or frames), a smaller max_tokens, or fewer turns",
            )

    def _generate(self, rows: list[_Generate]) -> None:
        vlm = self.vlm
        ready = []
        for r in rows:
            if r.cancelled.is_set():  # its client went away while it waited
                r.future.set_exception(Unavailable("the client went away"))
            else:
                ready.append(r)
        if not ready:
            return
        head = ready[0]

        def should_stop() -> bool:
            return self._closed or all(r.cancelled.is_set() for r in ready)

        try:
            out = vlm.generate([(r.tokens, r.question) for r in ready], head.profile.generation,
                               history=head.history, on_text=head.on_text, should_stop=should_stop)  # fmt: skip
        except BaseException as e:  # noqa: BLE001
            for r in ready:
                r.future.set_exception(e)
            return
        self.batches.append(len(ready))
        for i, r in enumerate(ready):
            if self._closed:  # stopped mid-answer: not an answer
                r.future.set_exception(Unavailable("the server is shutting down", hint="retry later"))
            else:
                r.future.set_result((_row(out, i), len(ready)))


# ---------------------------------------------------------------------------------------------------- the engine
def _cache_with_memo() -> Any:
    """The feature cache, its keys remembered per file version: a key hashes the whole file, which every request
    about the same video would otherwise do again (twice: here and in ``encode_video``)."""
    from scissor_cli.cache import FeatureCache

    class Cache(FeatureCache):
        _keys: dict[tuple, str] = {}

        def key(self, path, indices, model_name, revision, dtype) -> str:  # noqa: ANN001 - FeatureCache.key's
            try:
                st = os.stat(path)
            except OSError:
                return FeatureCache.key(path, indices, model_name, revision, dtype)
            memo = (str(path), st.st_size, st.st_mtime_ns, tuple(indices), str(model_name), revision, str(dtype))
            if memo not in self._keys:
                if len(self._keys) >= 1024:
                    self._keys.clear()
                self._keys[memo] = FeatureCache.key(path, indices, model_name, revision, dtype)
            return self._keys[memo]

    return Cache()


@dataclass
class Result:
    answer: Any  # pipeline.Answer
    n_prompt: int
    n_new: int
    finish_reason: str
    batch_rows: int


class Engine:
    """Requests -> answers, off the event loop: the decode pool, the model thread, the in-flight bound."""

    def __init__(
        self,
        vlm: VisionLanguageModel,
        options: ServeOptions,
        base: Profile,
        build: Callable[..., Profile],
        profile_name: str | None = None,
        flags: dict[str, Any] | None = None,
    ):
        from scissor_cli.pipeline import model_fingerprint

        self.vlm, self.options = vlm, options
        self.base, self.build, self.profile_name, self.flags = base, build, profile_name, dict(flags or {})
        self.pool = concurrent.futures.ThreadPoolExecutor(options.decode_workers, thread_name_prefix="scissor-decode")
        self.cache = None
        self._fingerprint = model_fingerprint(vlm)
        self.worker: ModelWorker | None = None
        self.in_flight = 0
        self._probed: dict[tuple, Any] = {}

    def start(self, cache_on: bool) -> None:
        if cache_on:
            self.cache = _cache_with_memo()
        self.worker = ModelWorker(self.vlm, self.options.max_batch, self.cache)

    def close(self, timeout: float) -> None:
        if self.worker is not None:
            self.worker.close(timeout)
        self.pool.shutdown(wait=False, cancel_futures=True)

    @contextlib.contextmanager
    def admitted(self):
        """One request in flight; Unavailable (503) at once beyond ``max_queue``. Event-loop thread only."""
        if self.in_flight >= self.options.max_queue:
            raise _with_param(
                Unavailable(f"the server is busy: {self.in_flight} requests in flight (--max-queue)",
                            hint="retry in a moment"),
                None,
                "queue_full",
            )  # fmt: skip
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    def _open(self, url: str, profile: Profile) -> tuple[Any, Any, str | None]:
        """In the pool: (info, decoded frames or None when cached, a temporary file to remove or None)."""
        from scissor_cli import video as video_io

        path, temporary = fetch_video(url, self.options)
        try:
            info = self._probe(path, temporary)
            s = profile.sampling
            plan = video_io.plan_frames(info, n_frames=s.n_frames, fps=s.fps, start=s.start, end=s.end)
            vlm = self.vlm
            if self.cache is not None and profile.model.cache:
                key = self.cache.key(info.path, plan.indices, self._fingerprint, vlm.revision, str(vlm.dtype))
                if self.cache.has(key):
                    return info, None, path if temporary else None
            t0 = time.perf_counter()
            clip = video_io.sample_frames(path, n_frames=s.n_frames, fps=s.fps, start=s.start, end=s.end, info=info)
            return info, (clip, time.perf_counter() - t0, None), path if temporary else None
        except VideoError as e:
            if not temporary:
                raise
            os.unlink(path)
            shown = "the data: URL's video" if url[:5].lower() == "data:" else url  # not our temporary copy
            raise VideoError(e.message.replace(path, shown), hint=(e.hint or "").replace(path, shown) or None) from e
        except BaseException:
            if temporary:
                os.unlink(path)
            raise

    def _probe(self, path: str, temporary: bool) -> Any:
        """ffprobe once per file version: the same video asked again is not probed again (nor hashed: _Cache)."""
        from scissor_cli import video as video_io

        if temporary:
            return video_io.probe(path)
        st = os.stat(path)
        key = (path, st.st_size, st.st_mtime_ns)
        info = self._probed.get(key)
        if info is None:
            info = video_io.probe(path)
            if len(self._probed) >= 256:
                self._probed.clear()
            self._probed[key] = info
        return info

    async def prepare(self, url: str, req: ChatRequest, profile: Profile) -> tuple[EncodedVideo, CompressedVideo]:
        """Fetch, probe and (unless cached) decode in the pool; vision tower + SCC on the model thread."""
        loop = asyncio.get_running_loop()
        info, decoded, temporary = await loop.run_in_executor(self.pool, self._open, url, profile)
        try:
            assert self.worker is not None
            shown = url.split(",", 1)[0] + ",..." if url[:5].lower() == "data:" else url  # not megabytes of base64
            return await asyncio.wrap_future(
                self.worker.submit(_Prepare(shown, profile, req.question, req.history, info, decoded))
            )
        finally:
            if temporary:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)

    # ------------------------------------------------------------------ one request
    def request_profile(self, req: ChatRequest) -> Profile:
        """The server's flags with the request's fields on top, checked like the flags (the same messages, naming
        the request's fields), on the server's model; then resolved as ``ask`` resolves it."""
        from scissor_cli.options import validate
        from scissor_cli.pipeline import resolve_profile

        flags = merge_flags(self.flags, req.flags, req.profile)
        try:
            p = self.build(req.profile if req.profile is not None else self.profile_name, **flags)
            if req.top_p is not None:
                p = validate(replace(p, generation=replace(p.generation, top_p=req.top_p)))
        except OptionError as e:
            raise _named_for_requests(e) from e
        except ProfileError as e:
            raise _with_param(e, "profile") from e
        return resolve_profile(self.vlm, replace(p, model=self.base.model))

    def submit_generate(self, compressed: CompressedVideo, req: ChatRequest, profile: Profile,
                        on_text: Callable[[str], None] | None = None) -> _Generate:  # fmt: skip
        assert self.worker is not None
        item = _Generate(compressed.tokens, req.question, req.history, profile, on_text=on_text)
        self.worker.submit(item)
        return item

    def result(self, encoded: EncodedVideo, compressed: CompressedVideo, req: ChatRequest, profile: Profile,
               row: GenerationOutput, n_rows: int, t0: float) -> Result:  # fmt: skip
        from scissor_cli.pipeline import make_answers

        [answer] = make_answers(self.vlm, encoded, compressed, [req.question], row, profile)
        answer = replace(answer, timings_s={**answer.timings_s, "total": round(time.perf_counter() - t0, 4)})
        n_new = row.n_new_tokens[0] if row.n_new_tokens else 0
        finish = "length" if n_new >= profile.generation.max_new_tokens else "stop"
        return Result(answer, row.n_prompt_tokens[0], n_new, finish, n_rows)


def scissor_stats(result: Result) -> dict[str, Any]:
    """What ``ask --json`` reports about the answer (its fields but the video, question and answer), plus the rows
    of the batched generate that produced it."""
    stats = result.answer.to_dict()
    for key in ("video", "question", "answer"):
        stats.pop(key)
    stats["batch_rows"] = result.batch_rows
    return stats


def completion_body(result: Result, cid: str, created: int, model: str) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.answer.answer},
                "finish_reason": result.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": _usage(result),
        "scissor": scissor_stats(result),
    }


def _usage(result: Result) -> dict[str, int]:
    return {
        "prompt_tokens": result.n_prompt,
        "completion_tokens": result.n_new,
        "total_tokens": result.n_prompt + result.n_new,
    }


def _chunk(cid: str, created: int, model: str, delta: dict, finish: str | None = None, **extra: Any) -> bytes:
    body = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        **extra,
    }
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode()


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
                encoded, compressed = await engine.prepare(req.video, req, profile)
                cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
                if req.stream:
                    return StreamingResponse(
                        _stream(engine, req, profile, encoded, compressed, cid, created, state.model_id, t0),
                        media_type="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                    )
                item = engine.submit_generate(compressed, req, profile)
                try:
                    row, n_rows = await asyncio.wrap_future(item.future)
                finally:
                    item.cancelled.set()  # a no-op once answered; stops the row if this task is cancelled
                result = engine.result(encoded, compressed, req, profile, row, n_rows, t0)
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


async def _stream(engine: Engine, req: ChatRequest, profile: Profile, encoded: EncodedVideo,
                  compressed: CompressedVideo, cid: str, created: int, model: str, t0: float):  # fmt: skip
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
        result = engine.result(encoded, compressed, req, profile, row, n_rows, t0)
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


def run(profile: Profile, options: ServeOptions, build: Callable[..., Profile], profile_name: str | None = None,
        flags: dict[str, Any] | None = None, load: Callable[[], VisionLanguageModel] | None = None,
        stop: threading.Event | None = None) -> int:  # fmt: skip
    """Serve until SIGINT (Interrupted, exit 130) or SIGTERM (returns 0). The model loads while the server already
    answers /health (503 until loaded); one line on stderr when it is ready. ``build(profile_name, **flags)`` is
    the CLI's ``build_profile``: each request's profile is built from ``flags`` (the server's) and its fields.

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
    config = uvicorn.Config(create_app(state), log_level="error", access_log=False, lifespan="off",
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

    server = Server(config)
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
                engine = Engine(vlm, options, profile, build, profile_name, flags)
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

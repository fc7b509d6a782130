"""The server's side of OpenAI's protocol: its error classes and statuses, ``ServeOptions``, and a
chat-completions request parsed and checked (``parse_request``) and merged onto the server's flags."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
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
    pass


INSTALL_HINT = "pip install 'scissor-cli[serve]'"
REQUEST_FIELDS = ("retention", "tokens", "tau", "tau_temporal", "epsilon", "frames", "fps", "start", "end",
                  "no_compress", "profile")  # fmt: skip
# the compression flags: a request that sets any of them replaces the server's (the flags' tau-vs-budget rule)
_COMPRESSION = ("retention", "tokens", "tau", "tau_temporal", "epsilon", "no_compress")
# what the server's model flags fix for every request
_MODEL_FLAGS = ("model", "revision", "device", "dtype", "offline", "no_cache", "newline")
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
    flags: dict[str, Any]  # scissor fields and standard sampling fields, as settings.Overrides fields
    profile: str | None
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
    flags["top_p"] = _number(body, "top_p", float)
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
    """The settings' error in the request's field names (``settings.SPELLING``); ``param``: the field it names
    first."""
    from scissor_cli.settings import SPELLING, spelled

    fields = [SPELLING[k].serve for k in e.keys if k in SPELLING and SPELLING[k].serve is not None]
    return _with_param(spelled(e, "serve"), fields[0] if fields else None)  # type: ignore[return-value]

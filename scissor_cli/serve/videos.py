"""A request's ``video_url`` as a local file: an allowed local path, a download (time and size limits, no scheme
change on redirect) or a ``data:`` URL, spooled to a temporary file."""

from __future__ import annotations

import base64
import binascii
import os
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any

from scissor_cli.errors import (
    VideoError,
)

if TYPE_CHECKING:
    pass
from scissor_cli.serve.protocol import Forbidden, ServeOptions, TooLarge, _bad, _with_param


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
        raise _forbidden(
            "this server reads no local files",
            "send the video as a data: or http(s) URL, or start the server with --allow-files DIR",
            "file_not_allowed",
        )
    real = os.path.realpath(path)
    for folder in o.allow_files:
        root = os.path.realpath(folder)
        if os.path.commonpath([real, root]) == root:
            return real
    raise _forbidden(
        f"{path} is outside the directories this server may read",
        "put the video under an --allow-files directory, or send it as a data: URL",
        "file_not_allowed",
    )


def _forbidden(message: str, hint: str, code: str) -> Forbidden:
    """A 403 about the request's video (``messages``), with OpenAI's error ``code``."""
    return _with_param(Forbidden(message, hint=hint), "messages", code)  # type: ignore[return-value]


def fetch_video(url: str, o: ServeOptions) -> tuple[str, bool]:
    """(a local file to decode, whether it is a temporary copy the caller removes)."""
    lower = url[:8].lower()
    if lower.startswith("data:"):
        return _from_data_url(url, o), True
    if lower.startswith(("http://", "https://")):
        if not o.allow_urls:
            raise _forbidden(
                "this server fetches no URLs (--no-urls)",
                "send the video as a data: URL, or a file under an --allow-files directory",
                "url_not_allowed",
            )
        return _download(url, o), True
    if lower.startswith("file:") or os.path.isabs(url):
        return local_path(url, o), False
    raise _bad(
        f"video url {url[:80]!r} is not a file://, http(s):// or data: URL",
        hint="give file:///abs/path.mp4, https://..., data:video/mp4;base64,... or an absolute path",
        param="messages",
    )

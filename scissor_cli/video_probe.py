"""Probing a video: any path -> ``probe`` -> ``VideoInfo``, or one VideoError naming the problem; the subprocess
helpers the decoders share (every subprocess runs under a timeout, with stdin closed).

Besides files: an ``http(s)://`` URL is read by ffprobe/ffmpeg directly (they stream it; decord cannot), and ``-``
is a video on stdin, which ``opened`` spools to a temporary file that lives for one ``with`` block (ffprobe and
the decoders need to seek, and stdin can be read only once).

**ffprobe** always probes first. It reads every container ffmpeg knows, reports rotation (display matrix), and its
failures name the problem ("moov atom not found", "Invalid data"), so bad files get a specific message before a
decoder ever sees them (decord prints its own errors on stderr and may not return cleanly on them).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from scissor_cli.errors import VideoError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
# Lower-case suffixes a folder scan (batch mode) picks up; still images count as one-frame videos.
VIDEO_EXTENSIONS = frozenset(
    {
        ".mp4",
        ".m4v",
        ".mov",
        ".mkv",
        ".webm",
        ".avi",
        ".wmv",
        ".flv",
        ".mpg",
        ".mpeg",
        ".ts",
        ".mts",
        ".m2ts",
        ".3gp",
        ".3g2",
        ".ogv",
        ".gif",
    }  # fmt: skip
    | IMAGE_EXTENSIONS
)
PROBE_TIMEOUT_S = 30.0  # ffprobe reads headers (and counts packets when the container has no frame count)
INSTALL_HINT = (
    "install ffmpeg (Debian/Ubuntu: sudo apt install ffmpeg; macOS: brew install ffmpeg; "
    "conda: conda install -c conda-forge ffmpeg) so that ffmpeg and ffprobe are on PATH"
)
_HEAD_BYTES = 4096  # read to check the file is readable and to recognise text files
STDIN = "-"  # the video argument that means "read the video from stdin"
STDIN_NAME = "stdin"  # how messages name it
URL_SCHEMES = ("http://", "https://")
_URL_RW_TIMEOUT_US = 20_000_000  # ffmpeg gives up on a server silent this long (its own, clearer, error)


@dataclass(frozen=True)
class VideoInfo:
    path: str  # absolute path, or the URL as given
    duration: float  # seconds; 0.0 for a still image
    fps: float  # average frame rate; 0.0 for a still image
    n_frames: int  # frames the decoders can address (1 for a still image)
    width: int  # displayed (upright) width, after rotation
    height: int  # displayed (upright) height
    rotation: int  # 0/90/180/270: counter-clockwise degrees applied for display (ffprobe displaymatrix)
    codec: str  # e.g. "h264", "vp9", "gif", "png"
    backend: str  # planned decoder: "decord" | "ffmpeg" | "image" (sample_frames may still fall back to ffmpeg)
    is_image: bool  # a still image, used as a one-frame video


def is_url(path: str | os.PathLike) -> bool:
    """An http(s) address (read through ffmpeg), not a file path."""
    return isinstance(path, str) and path[:8].lower().startswith(URL_SCHEMES)


def probe(path: str | os.PathLike) -> VideoInfo:
    """Read a file's or URL's video properties with ffprobe; raise VideoError naming what is wrong with a bad file.

    ``-`` (stdin) is read through ``opened``, which keeps the spooled copy for the block that uses it."""
    if str(path) == STDIN:
        raise VideoError(
            "- (a video on stdin) must be opened with scissor_cli.video.opened()",
            hint="use `with opened('-') as info:`; it spools stdin to a temporary file for the block",
        )
    return _probe(path, str(path))


@contextlib.contextmanager
def opened(video: str | os.PathLike, stdin: BinaryIO | None = None) -> Iterator[VideoInfo]:
    """``probe(video)`` for a file or URL; for ``-``, the video on ``stdin`` (default ``sys.stdin``) is first copied
    to a temporary file, removed when the block ends (also on an error or Ctrl-C). Use ``info.path`` to decode."""
    if str(video) != STDIN:
        yield probe(video)
        return
    path = _spool(stdin if stdin is not None else sys.stdin.buffer)
    try:
        yield _probe(path, STDIN_NAME)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _spool(stream: BinaryIO) -> str:
    """Copy ``stream`` to a new temporary file and return its path; the file is gone if this fails."""
    if stream.isatty():
        raise VideoError(
            "- means a video on stdin, but stdin is a terminal",
            hint='pipe a video in, e.g. cat clip.mp4 | scissor ask - "What is happening?"',
        )
    fd, path = tempfile.mkstemp(prefix="scissor-stdin-")
    try:
        with os.fdopen(fd, "wb") as f:
            shutil.copyfileobj(stream, f, 1 << 20)
            n_bytes = f.tell()
        if n_bytes == 0:
            raise VideoError(
                "stdin is empty: no video was piped in",
                hint='pipe a video in, e.g. cat clip.mp4 | scissor ask - "What is happening?"',
            )
    except BaseException:  # also Ctrl-C while copying: no temporary file is left behind
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise
    return path


def _probe(path: str | os.PathLike, shown: str) -> VideoInfo:
    url = is_url(path)
    if url:
        abs_path, head = str(path), b""
    else:
        abs_path, head = _check_file(path, shown)
    data = _ffprobe(abs_path, shown, head)
    fmt = data.get("format") or {}
    streams = data.get("streams") or []
    format_name = str(fmt.get("format_name", ""))
    if format_name == "tty" or (not streams and _looks_like_text(head)):
        raise _text_file_error(shown, url)
    videos = [
        s for s in streams if s.get("codec_type") == "video" and not (s.get("disposition") or {}).get("attached_pic")
    ]
    if not videos:
        kinds = sorted({str(s.get("codec_type", "unknown")) for s in streams})
        if "audio" in kinds:
            raise VideoError(
                f"{shown} has audio but no video stream",
                hint="scissor answers questions about what is seen: give a video file or an image",
            )
        raise VideoError(
            f"{shown} has no video stream (streams found: {', '.join(kinds) or 'none'})",
            hint="give a video file or an image; check what the file holds with: ffprobe " + _quote(shown),
        )
    stream = videos[0]
    codec = str(stream.get("codec_name", "unknown"))
    stored_w, stored_h = int(stream.get("width") or 0), int(stream.get("height") or 0)
    if stored_w <= 0 or stored_h <= 0:
        raise VideoError(
            f"{shown}: the video stream has no frame size (codec {codec})",
            hint="the file is probably corrupt; re-encode it: ffmpeg -i IN -c:v libx264 OUT.mp4",
        )
    rotation = _rotation(stream)
    width, height = (stored_h, stored_w) if rotation in (90, 270) else (stored_w, stored_h)

    is_image = format_name == "image2" or format_name.endswith("_pipe")
    if is_image:
        return VideoInfo(abs_path, 0.0, 0.0, 1, width, height, rotation, codec, "image", True)

    fps = _rate(stream.get("avg_frame_rate")) or _rate(stream.get("r_frame_rate"))
    duration = _float(stream.get("duration")) or _float(fmt.get("duration"))
    n_frames = _int(stream.get("nb_frames"))
    if n_frames <= 0 and url and duration > 0 and fps > 0:
        n_frames = int(round(duration * fps))  # counting packets would download the whole video
    if n_frames <= 0:
        n_frames = _count_packets(abs_path, shown)
    if n_frames <= 0 and duration > 0 and fps > 0:
        n_frames = int(round(duration * fps))
    if n_frames <= 0:
        raise VideoError(
            f"{shown}: the video stream holds no frames",
            hint="the file is probably truncated or corrupt; check it with: ffprobe " + _quote(shown),
        )
    if fps <= 0:
        fps = n_frames / duration if duration > 0 else 25.0  # no rate anywhere: assume 25, only timestamps use it
    if duration <= 0:
        duration = n_frames / fps

    # decord 0.6 rotates by itself; its output shape only tells us so for non-square 90/270 (see module docstring).
    ambiguous_rotation = rotation == 180 or (rotation in (90, 270) and width == height)
    backend = "ffmpeg" if url or format_name == "gif" or ambiguous_rotation else "decord"
    return VideoInfo(
        abs_path, float(duration), float(fps), int(n_frames), width, height, rotation, codec, backend, False
    )


def _check_file(path: str | os.PathLike, shown: str) -> tuple[str, bytes]:
    """The cheap checks ffprobe would report badly: missing, symlink loop, directory, not a regular file (a FIFO
    would block ``open`` forever), unreadable, empty. Returns the head bytes."""
    if not str(path):
        raise VideoError("no video path given", hint="give the path of a video file")
    abs_path = os.path.abspath(os.path.expanduser(str(path)))
    try:
        st = os.stat(abs_path)  # before any open: opening a FIFO blocks until a writer comes
    except FileNotFoundError as e:
        raise VideoError(
            f"{shown}: no such file",
            hint="check the path for typos; quote it if it contains spaces",
        ) from e
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise VideoError(
                f"{shown} is a symlink loop (the link points back to itself)",
                hint="fix or remove the link (see where it points: ls -l " + _quote(shown) + ")",
            ) from e
        if e.errno in (errno.EACCES, errno.EPERM):
            raise VideoError(
                f"{shown} cannot be read: permission denied",
                hint="check the permissions of the file and its folders",
            ) from e
        raise VideoError(f"{shown} cannot be read: {e.strerror or e}", hint="check the path and the disk") from e
    if stat.S_ISDIR(st.st_mode):
        raise VideoError(
            f"{shown} is a directory, not a video file",
            hint="give one video file; to answer for every video in a folder use `scissor batch`",
        )
    _check_regular(st.st_mode, shown)
    try:
        # O_NONBLOCK: a FIFO swapped in after the stat must not block; fstat checks what was really opened
        with open(abs_path, "rb", opener=_open_nonblocking) as f:
            _check_regular(os.fstat(f.fileno()).st_mode, shown)
            head = f.read(_HEAD_BYTES)
    except PermissionError as e:
        raise VideoError(
            f"{shown} cannot be read: permission denied",
            hint="check the file's permissions (e.g. chmod u+r " + _quote(shown) + ")",
        ) from e
    except OSError as e:
        raise VideoError(f"{shown} cannot be read: {e.strerror or e}", hint="check the file and the disk") from e
    if not head:
        raise VideoError(
            f"{shown} is empty (0 bytes)",
            hint="the file may still be downloading or copying, or the copy failed; check the source",
        )
    return abs_path, head


def _open_nonblocking(path: str, flags: int) -> int:
    return os.open(path, flags | getattr(os, "O_NONBLOCK", 0))


def _check_regular(mode: int, shown: str) -> None:
    """A FIFO, device or socket is refused: ffprobe and the decoders would block on it or read it only once."""
    if stat.S_ISREG(mode):
        return
    kinds = (
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    kind = next((name for test, name in kinds if test(mode)), "not a regular file")
    raise VideoError(
        f"{shown} is {kind}, not a regular file",
        hint='give a video file; to read a stream, pipe it to stdin: cat SOURCE | scissor ask - "..."',
    )


def _ffprobe(abs_path: str, shown: str, head: bytes) -> dict:
    args = [_binary("ffprobe"), "-v", "error", "-show_format", "-show_streams", "-of", "json", *_input(abs_path)]
    proc = _run(args, shown, PROBE_TIMEOUT_S, what="ffprobe")
    stderr = proc.stderr.decode("utf-8", "replace")
    if proc.returncode != 0:
        if is_url(abs_path):
            raise _classify_url_failure(shown, stderr)
        raise _classify_probe_failure(shown, head, stderr)
    try:
        return json.loads(proc.stdout.decode("utf-8", "replace") or "{}")
    except json.JSONDecodeError as e:
        raise VideoError(f"{shown}: ffprobe gave unreadable output", hint=_last_line(stderr) or None) from e


def _classify_probe_failure(shown: str, head: bytes, stderr: str) -> VideoError:
    low = stderr.lower()
    if _looks_like_text(head):
        return _text_file_error(shown)
    container = _container_magic(head)
    if container == "mp4" and "moov atom not found" in low:
        return VideoError(
            f"{shown} is truncated or incomplete: its mp4 index (moov atom) is missing",
            hint="the recording or download was probably interrupted; download or copy it again "
            "(recovery tools such as untrunc can sometimes rebuild it)",
        )
    if container is not None:
        return VideoError(
            f"{shown} starts like {container} video but is truncated or corrupt ({_first_error(stderr)})",
            hint="the file was probably cut short while downloading or copying; get it again",
        )
    if "invalid data found" in low or "moov atom not found" in low:
        return VideoError(
            f"{shown} is not a video or image file that ffmpeg recognises",
            hint="supported: common video containers (mp4, mov, mkv, webm, avi, gif, ...) and still images; "
            "check what the file is with: file " + _quote(shown),
        )
    if "permission denied" in low:
        return VideoError(f"{shown} cannot be read: permission denied", hint="check the file's permissions")
    return VideoError(
        f"{shown} cannot be read as a video: {_last_line(stderr) or 'ffprobe failed'}",
        hint="check the file with: ffprobe " + _quote(shown),
    )


def _classify_url_failure(shown: str, stderr: str) -> VideoError:
    """One line for what went wrong fetching a URL: unreachable, an HTTP error, not a video, no TLS."""
    low = stderr.lower()
    fetch_hint = "or download the video (e.g. curl -LO URL) and give the file"
    reachable = {
        "failed to resolve hostname": "its host name was not found",
        "connection refused": "the connection was refused",
        "timed out": "the connection timed out",
        "network is unreachable": "the network is unreachable",
        "no route to host": "there is no route to the host",
    }
    for needle, why in reachable.items():
        if needle in low:
            hint = f"check the address and the network, {fetch_hint}"
            return VideoError(f"{shown} cannot be reached: {why}", hint=hint)
    status = re.search(r"server returned (\d{3}[^\n]*)", stderr, re.IGNORECASE)
    if status:
        code = status.group(1).strip()
        if code.startswith(("401", "403")):
            hint = f"the server refused access: {fetch_hint} yourself"
        elif code.startswith("404"):
            hint = "check the address: it must point at the video file itself"
        else:
            hint = f"try again later, {fetch_hint}"
        return VideoError(f"{shown}: the server answered {code}", hint=hint)
    if "protocol not found" in low:
        return VideoError(
            f"{shown}: this ffmpeg cannot open {shown.split(':', 1)[0]} addresses (built without that protocol)",
            hint=f"install an ffmpeg built with TLS (your package manager's usually is), {fetch_hint}",
        )
    if "tls" in low or "ssl" in low:
        return VideoError(f"{shown}: the secure (https) connection failed", hint=f"check the address, {fetch_hint}")
    if "invalid data found" in low:
        return VideoError(
            f"{shown} is not a video or image that ffmpeg recognises",
            hint="the address must point at the video file itself, not a web page that plays it",
        )
    detail = _last_line(stderr).removeprefix(shown + ": ") or "ffprobe failed"
    return VideoError(f"{shown} cannot be read as a video: {detail}", hint=f"check the address, {fetch_hint}")


def _text_file_error(shown: str, url: bool = False) -> VideoError:
    if url:
        return VideoError(
            f"{shown} is a text or web page, not a video",
            hint="the address must point at the video file itself, not a web page that plays it",
        )
    return VideoError(
        f"{shown} is a text file, not a video",
        hint="did you pass a manifest, subtitle or list file? give the video itself (manifests go to `scissor batch`)",
    )


def _container_magic(head: bytes) -> str | None:
    """The container a file claims to be by its first bytes, for files ffprobe then fails on."""
    if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
        return "mp4"  # ISO base media (mp4, mov, m4v, 3gp): a box size then a box type
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"  # mkv, webm
    if head.startswith(b"RIFF") and head[8:12] == b"AVI ":
        return "avi"
    return None


def _looks_like_text(head: bytes) -> bool:
    if not head or b"\x00" in head:
        return False
    control = sum(1 for b in head if b < 32 and b not in (9, 10, 12, 13))
    return control == 0


def _rotation(stream: dict) -> int:
    """Counter-clockwise degrees (0/90/180/270) that ffmpeg applies for display."""
    for side in stream.get("side_data_list") or []:
        if "rotation" in side:
            return int(round(float(side["rotation"]) / 90.0)) * 90 % 360
    tag = (stream.get("tags") or {}).get("rotate")
    if tag is not None:  # ffprobe < 5: the legacy tag counts clockwise
        try:
            return int(round(-float(tag) / 90.0)) * 90 % 360
        except ValueError:
            return 0
    return 0


def _count_packets(abs_path: str, shown: str) -> int:
    """Frame count for containers that do not store one (mkv, webm): demux the video packets, no decoding."""
    args = [_binary("ffprobe"), "-v", "error", "-select_streams", "v:0", "-count_packets"]
    args += ["-show_entries", "stream=nb_read_packets", "-of", "json", *_input(abs_path)]
    proc = _run(args, shown, PROBE_TIMEOUT_S, what="ffprobe")
    try:
        streams = json.loads(proc.stdout.decode("utf-8", "replace") or "{}").get("streams") or [{}]
        return _int(streams[0].get("nb_read_packets"))
    except json.JSONDecodeError:
        return 0


def _popen(args: list[str], **kwargs: object) -> subprocess.Popen:
    """ffmpeg/ffprobe in a process group of its own (a terminal's Ctrl-C reaches only us; we end the group), with
    stdin closed."""
    try:
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True, **kwargs)  # type: ignore[call-overload]
    except OSError as e:
        raise VideoError(f"{os.path.basename(args[0])} could not be started: {e}", hint=INSTALL_HINT) from e


def _kill_group(proc: subprocess.Popen, wait: bool = True) -> None:
    """SIGKILL ``proc``'s process group (it leads one: ``_popen``), then reap it: no orphan, no zombie."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    if wait:
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        with contextlib.suppress(ChildProcessError):
            proc.wait()


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise VideoError(
            f"{name} was not found on PATH (scissor needs ffmpeg and ffprobe to read videos)", INSTALL_HINT
        )
    return found


def _input(path: str) -> list[str]:
    """ffprobe's input arguments: a URL gets a read timeout, so a silent server is an error, not a hang."""
    return ["-rw_timeout", str(_URL_RW_TIMEOUT_US), path] if is_url(path) else [path]


def _run(args: list[str], shown: str, timeout: float, what: str) -> subprocess.CompletedProcess:
    proc = _popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as e:
        _kill_group(proc)
        where = (
            "the server may be slow or stalled; download the video and give the file"
            if is_url(shown)
            else "the file may be on a slow or stalled disk or network mount; copy it locally and retry"
        )
        raise VideoError(f"{shown}: {what} did not answer within {timeout:.0f} s", hint=where) from e
    except BaseException:  # Ctrl-C, SIGTERM raised as an interruption: the group dies before we wait on it
        _kill_group(proc)
        raise
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def _first_error(stderr: str) -> str:
    """ffmpeg's first message without its "[h264 @ 0x...]" prefix: the cause; later lines are consequences."""
    for line in stderr.splitlines():
        line = re.sub(r"^\[[^\]]* @ 0x[0-9a-f]+\]\s*", "", line.strip())
        if line:
            return line[:200].rstrip(".")
    return ""


def _last_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _quote(path: str) -> str:
    return "'" + path.replace("'", "'\\''") + "'" if any(c in path for c in " '\"$`\\") else path


def _rate(value: object) -> float:
    """ffprobe rates are "num/den"; "0/0" means unknown."""
    try:
        num, _, den = str(value).partition("/")
        rate = float(num) / float(den or 1)
    except (ValueError, ZeroDivisionError):
        return 0.0
    return rate if math.isfinite(rate) and rate > 0 else 0.0


def _float(value: object) -> float:
    try:
        x = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
    return x if math.isfinite(x) and x > 0 else 0.0


def _int(value: object) -> int:
    try:
        return max(int(value), 0)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0

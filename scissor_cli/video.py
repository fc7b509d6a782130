"""Video input: any path -> ``probe`` -> ``plan_frames`` -> ``sample_frames`` -> uint8 RGB frames, or one VideoError.

Besides files: an ``http(s)://`` URL is read by ffprobe/ffmpeg directly (they stream it; decord cannot), and ``-``
is a video on stdin, which ``opened`` spools to a temporary file that lives for one ``with`` block (ffprobe and
the decoders need to seek, and stdin can be read only once).

Backends, and why each is used when:

- **ffprobe** always probes first. It reads every container ffmpeg knows, reports rotation (display matrix), and
  its failures name the problem ("moov atom not found", "Invalid data"), so bad files get a specific message
  before a decoder ever sees them (decord prints its own errors on stderr and may not return cleanly on them).
- **decord** decodes when it can: it seeks to the sampled frames (``get_batch``), which is the fast path for long
  videos and is what the paper's evaluation used. decord 0.6 applies rotation metadata itself (through its own
  transpose filter); builds differ, so the frame shape tells us for 90/270 and we ``np.rot90`` only when decord
  did not. Where the shape cannot tell (180, square frames) we use ffmpeg instead.
- **ffmpeg** (through ffmpeg-python) decodes everything decord cannot open or decode: GIF, still images, some
  pixel formats and sizes (decord 0.6 fails on rotated frames whose rows are not 64-byte aligned, and on 2x2),
  VFR files whose frame count decord gets wrong. A ``select`` filter on the planned frame numbers pipes only those
  frames as rawvideo rgb24, so memory stays ``F*H*W*3`` bytes however long the video is. ffmpeg autorotates.

Split decoding (``_decode_split``): decord's seeks are independent, so a long video's sorted frame numbers are cut
into contiguous chunks, one per thread, each with its own ``VideoReader`` holding one decoder thread; each chunk
seeks as the serial loop would from its first frame, so the frames are the serial decode's, in order, written into
one array. Threads, not processes: decord releases the GIL while it decodes, and a process would pay its start and a
copy of its frames (bench/bench_video.py --split measures both). Where torchcodec (CPU) imports, it decodes the
chunks: the same frames on less CPU per frame; decord takes any chunk it cannot decode. How many threads:
``sample_frames(workers=)``, else ``set_decode_workers`` (the CLI's ``--decode-workers``; batch's decode-ahead
worker processes set 1), else this process's cores; fewer for few frames or a short span, serial for small decodes
(``split_workers``). ffmpeg is not split: its ``select`` decodes every frame up to the last sampled one, which each
chunk would repeat.

Frame numbers are presentation-order ordinals in both backends; timestamps are ``index / average fps`` (exact for
constant frame rate, approximate for variable). Every subprocess runs under a timeout, with stdin closed.
decord and ffmpeg are imported inside functions: ``scissor --help`` imports this module and must stay light.
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
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from scissor_cli.errors import OptionError, VideoError

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
# ffmpeg decode: killed when it neither reads its input nor sends a frame for this long (what it received, never
# the duration a header declares, bounds it); where its reads cannot be seen (URLs: sockets), frames only count
STALL_TIMEOUT_S = 30.0
FRAME_GAP_TIMEOUT_S = 120.0
_WATCH_EVERY_S = 0.25
# decoded frames above either limit are decoded smaller, by the decoder (see decode_size); below, at the video's
# own size: 32 frames of 4K (760 MiB, 25 MiB a frame) stay as they are, a 16000 x 16000 picture does not
FULL_SIZE_LIMIT_BYTES = 1 << 30
FRAME_LIMIT_BYTES = 64 << 20
DEFAULT_MEMORY_FRACTION = 0.5  # default memory budget: this fraction of the available memory
INSTALL_HINT = (
    "install ffmpeg (Debian/Ubuntu: sudo apt install ffmpeg; macOS: brew install ffmpeg; "
    "conda: conda install -c conda-forge ffmpeg) so that ffmpeg and ffprobe are on PATH"
)
_DECORD_CHUNK = 1  # frames per decord get_batch call; measured: 1 gives the lowest peak RSS and is no slower
# Split decoding (measured: docs/performance.md). Each chunk opens its own reader and seeks from the keyframe before
# its first frame, decoding again up to a keyframe interval that the serial loop decoded once; short or small decodes
# do not win that back (a 10 s 1080p clip: 0.7x; 8 frames of 360p: 0.7x; 30 s of 720p: 1.8x).
_SPLIT_MIN_PIXELS = 8 * 1280 * 720  # sampled frames' pixels below which decoding stays serial
_SPLIT_SPAN_PER_WORKER = 300  # video frames between the first and last sampled one, per thread (x264's GOP: 250)
_SPLIT_MIN_FRAMES = 2  # sampled frames per chunk
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


@dataclass(frozen=True)
class FramePlan:
    indices: tuple[int, ...]  # frame numbers to decode, increasing, no duplicates
    timestamps: tuple[float, ...]  # seconds, index / fps
    n_requested: int  # n_frames asked for
    note: str | None  # why len(indices) differs from n_requested, or how fps sampling was capped


@dataclass(frozen=True)
class Clip:
    frames: np.ndarray  # uint8 [F, H, W, 3], RGB, upright
    indices: tuple[int, ...]  # frame numbers of frames[i]
    timestamps: tuple[float, ...]  # seconds
    fps: float  # the video's average frame rate
    backend: str  # decoder actually used: "decord" | "torchcodec" (a split decode) | "ffmpeg" | "image"
    info: VideoInfo
    note: str | None  # the plan's note, plus any frames that could not be decoded
    workers: int = 1  # threads the decode was split across (split_workers; 1: serial)


@dataclass(frozen=True)
class ModelInput:
    """What the model's vision step takes per frame: the decoder's target size and the memory estimate use it."""

    size: tuple[int, int]  # (height, width) frames are resized to (LLaVA-OV: 384 x 384)
    tokens_per_frame: int  # T: visual tokens per frame after pooling (196)
    hidden_size: int  # D: width of those tokens (the LLM's hidden size)

    @classmethod
    def of(cls, vlm: Any) -> ModelInput | None:
        """From a ``VisionLanguageModel`` (None for anything without these attributes)."""
        try:
            h, w = vlm.image_size
            return cls((int(h), int(w)), int(vlm.tokens_per_frame), int(vlm.hidden_size))
        except (AttributeError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one video's decoding and vision step take, estimated before decoding (``estimate_memory``)."""

    n_frames: int  # F, frames planned
    size: tuple[int, int]  # (width, height) the decoder delivers: the video's own, or smaller (decode_size)
    frames: int  # F * h * w * 3: the uint8 RGB frames
    decoder: int  # 8 * H * W: the decoder's own full-size pictures (two, up to 4 bytes a pixel)
    model: int  # F * (3 * S * S * 4 + T * D * 4): float pixels and float features (0 without a model)

    @property
    def total(self) -> int:
        return self.frames + self.decoder + self.model


# ---------------------------------------------------------------------------------------------------- probe


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


# ------------------------------------------------------------------------------------------------------ plan


def plan_frames(
    info: VideoInfo,
    n_frames: int = 32,
    fps: float | None = None,
    start: float | None = None,
    end: float | None = None,
) -> FramePlan:
    """Which frames to decode. Pure: the pipeline calls it before decoding to build the feature-cache key.

    Default: ``n_frames`` uniformly over the video, ``np.linspace(0, n - 1, n_frames, dtype=int)`` (floor), as in
    the paper's evaluation. ``fps``: one frame every ``1/fps`` s, capped at ``n_frames`` (spread uniformly when
    more would be needed). ``start``/``end`` restrict either mode to a window. Frames are never repeated.
    """
    _check_plan_args(n_frames, fps, start, end)
    if info.is_image:
        note = None if n_frames == 1 and fps is None and not start else "a still image: used as one frame"
        return FramePlan((0,), (0.0,), n_frames, note)
    if start is not None and start >= info.duration:
        raise VideoError(
            f"the window starts at {start:g} s but {info.path} is only {info.duration:.2f} s long",
            hint=f"give a --start below {info.duration:.2f}",
        )

    n, rate = info.n_frames, info.fps
    if start is not None and start * rate >= n - 1e-6:
        # the header's duration lies (a 10 h claim over 2 s of frames): the first window frame would be clamped to
        # the last real one, an answer from elsewhere; the frames there are what counts
        real = n / rate
        raise VideoError(
            f"the window starts at {start:g} s but {info.path} has frames for only {real:.2f} s "
            f"({n} frames at {rate:g} fps; its header claims {info.duration:.2f} s)",
            hint=f"give a --start below {real:.2f}",
        )
    t0 = float(start or 0.0)
    t1 = info.duration if end is None else min(float(end), info.duration)
    windowed = start is not None or end is not None
    if windowed:  # frames whose time i / rate lies in [t0, t1); at least one
        first = min(max(math.ceil(t0 * rate - 1e-6), 0), n - 1)
        last = min(max(math.ceil(t1 * rate - 1e-6) - 1, first), n - 1)
        where = f"the window {t0:g}-{t1:g} s"
    else:
        first, last = 0, n - 1
        where = "the video"
    n_available = last - first + 1

    note = None
    if fps is None:
        indices, note = _uniform(first, last, n_frames, where)
    else:
        n_wanted = max(1, math.ceil((t1 - t0) * fps - 1e-9))
        if n_wanted > n_frames:
            indices, _ = _uniform(first, last, n_frames, where)
            note = (
                f"--fps {fps:g} over {t1 - t0:.2f} s would need {n_wanted} frames; "
                f"capped at {n_frames}, spread uniformly"
            )
        else:
            times = t0 + np.arange(n_wanted) / fps
            raw = np.clip(np.floor(times * rate + 1e-6).astype(np.int64), first, last)
            indices = np.unique(raw)  # sorted; fps above the video's rate would repeat frames
            if len(indices) < n_wanted:
                note = (
                    f"--fps {fps:g} asks for more frames than {where} has ({n_available} at {rate:g} fps); "
                    f"each frame used once ({len(indices)} frames)"
                )
    indices = tuple(int(i) for i in indices)
    timestamps = tuple(round(i / rate, 6) for i in indices)
    return FramePlan(indices, timestamps, n_frames, note)


def _uniform(first: int, last: int, n_frames: int, where: str) -> tuple[np.ndarray, str | None]:
    n_available = last - first + 1
    if n_available <= n_frames:
        note = None
        if n_available < n_frames:
            frames = "frame" if n_available == 1 else "frames"
            note = f"{where} has {n_available} {frames}; {n_frames} requested; each used once"
        return np.arange(first, last + 1), note
    # step >= 1, so the floored values are distinct
    return np.linspace(first, last, n_frames, dtype=int), None


def _check_plan_args(n_frames: int, fps: float | None, start: float | None, end: float | None) -> None:
    if isinstance(n_frames, bool) or not isinstance(n_frames, (int, np.integer)) or n_frames < 1:
        raise OptionError(f"n_frames must be an integer >= 1, got {n_frames!r}", hint="e.g. --frames 32")
    if fps is not None and not (fps > 0 and math.isfinite(fps)):
        raise OptionError(f"fps must be a positive number, got {fps!r}", hint="e.g. --fps 1 for one frame a second")
    if start is not None and not (start >= 0 and math.isfinite(start)):
        raise OptionError(f"start must be >= 0 seconds, got {start!r}", hint="e.g. --start 10")
    if end is not None and not (end > 0 and math.isfinite(end)):
        raise OptionError(f"end must be > 0 seconds, got {end!r}", hint="e.g. --end 60")
    if start is not None and end is not None and end <= start:
        raise OptionError(f"end ({end:g} s) must be after start ({start:g} s)", hint="e.g. --start 10 --end 20")


# ---------------------------------------------------------------------------------------------------- sample


def sample_frames(
    path: str | os.PathLike,
    n_frames: int = 32,
    fps: float | None = None,
    start: float | None = None,
    end: float | None = None,
    info: VideoInfo | None = None,
    model: ModelInput | None = None,
    memory_budget: str | None = None,
    workers: int | None = None,
) -> Clip:
    """Decode the frames ``plan_frames`` picks. decord first, ffmpeg when decord cannot open or decode the file.

    ``info.path`` is what is decoded (for ``-``, the spooled copy from ``opened``); ``path`` is how messages name it.
    ``model``: what the frames are for; frames too large at the video's own size are then decoded smaller
    (``decode_size``). Before decoding, ``estimate_memory`` is checked against ``memory_budget`` (the option's text;
    None: the default), and a video that would not fit is refused with a VideoError naming the size.
    ``workers``: threads splitting decord's decode (``split_workers``); None: ``set_decode_workers``'s, else the cores.
    """
    if info is None:
        info = probe(path)
    plan = plan_frames(info, n_frames=n_frames, fps=fps, start=start, end=end)
    shown = STDIN_NAME if str(path) == STDIN else str(path)
    estimate = estimate_memory(info, len(plan.indices), model)
    check_memory(shown, estimate, resolve_memory_budget(memory_budget))

    frames = None
    backend, n_split = info.backend, 1
    full_size = estimate.size == (info.width, info.height)
    try:
        if info.backend == "decord" and full_size:  # decord's own scaler is not used: ffmpeg scales
            n_split = split_workers(info, plan.indices, workers)
            if n_split > 1:
                frames, backend = _decode_split(info, plan.indices, n_split)
            else:
                frames = _decode_decord(info, plan.indices)
        if frames is None:
            backend = "image" if info.is_image else "ffmpeg"
            frames = _decode_ffmpeg(info, plan.indices, shown, estimate.size)
    except MemoryError as e:  # numpy's "Unable to allocate": the estimate was too low for this machine's state
        raise out_of_memory(shown, estimate) from e

    indices, timestamps, note = plan.indices, plan.timestamps, plan.note
    if len(frames) < len(indices):  # the file ends before its header says it does
        lost = (
            f"only {len(frames)} of {len(indices)} planned frames could be decoded (the file ends early or is corrupt)"
        )
        note = f"{note}; {lost}" if note else lost
        indices, timestamps = indices[: len(frames)], timestamps[: len(frames)]
    if not full_size:
        w, h = estimate.size
        scaled = f"decoded at {w}x{h} instead of {info.width}x{info.height} (memory)"
        note = f"{note}; {scaled}" if note else scaled
    n_workers = 1 if backend in ("ffmpeg", "image") else n_split
    return Clip(frames, indices, timestamps, info.fps, backend, info, note, n_workers)


# ---------------------------------------------------------------------------------------------------- memory


def decode_size(info: VideoInfo, n_frames: int, model: ModelInput | None) -> tuple[int, int]:
    """(width, height) to decode at. The video's own size unless its ``n_frames`` frames would take more than
    ``FULL_SIZE_LIMIT_BYTES`` (or one frame more than ``FRAME_LIMIT_BYTES``) and a model says what size it needs:
    then each side is capped at twice the model's input (at once if that is still too much), never below it, so the
    model's antialiased resize still runs and ordinary videos keep exactly the frames they had."""
    w, h = info.width, info.height
    if model is None or (n_frames * w * h * 3 <= FULL_SIZE_LIMIT_BYTES and w * h * 3 <= FRAME_LIMIT_BYTES):
        return w, h
    sh, sw = model.size
    for factor in (2, 1):
        tw, th = min(w, factor * sw), min(h, factor * sh)
        if n_frames * tw * th * 3 <= FULL_SIZE_LIMIT_BYTES:
            break
    return tw, th


def estimate_memory(info: VideoInfo, n_frames: int, model: ModelInput | None = None) -> MemoryEstimate:
    """What decoding ``n_frames`` frames of ``info`` and (with ``model``) its vision step will take; see
    ``MemoryEstimate`` for the formula. The vision tower runs a few frames at a time, so the float pixels term is
    an upper bound that also covers its activations."""
    w, h = decode_size(info, n_frames, model)
    model_bytes = 0
    if model is not None:
        sh, sw = model.size
        model_bytes = n_frames * (3 * sh * sw * 4 + model.tokens_per_frame * model.hidden_size * 4)
    return MemoryEstimate(n_frames, (w, h), n_frames * w * h * 3, 8 * info.width * info.height, model_bytes)


def available_memory() -> int | None:
    """Bytes this process can still take: the least of the system's MemAvailable, the cgroup's limit minus its
    use, and the address-space limit (ulimit -v) minus what is mapped. None where none of them can be read."""
    found = []
    meminfo = _read_kib("/proc/meminfo", "MemAvailable:")
    if meminfo is not None:
        found.append(meminfo)
    else:
        with contextlib.suppress(AttributeError, ValueError, OSError):
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    with contextlib.suppress(OSError, ValueError):
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit != "max":
            with open("/sys/fs/cgroup/memory.current") as f:
                found.append(max(int(limit) - int(f.read().strip()), 0))
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        mapped = _read_kib("/proc/self/status", "VmSize:")
        if soft != resource.RLIM_INFINITY and mapped is not None:
            found.append(max(soft - mapped, 0))
    except (ImportError, OSError, ValueError):
        pass
    return min(found) if found else None


def _read_kib(path: str, key: str) -> int | None:
    """A "Key:   123 kB" line of a /proc file, in bytes."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def resolve_memory_budget(setting: str | None) -> int | None:
    """The budget in bytes for ``sampling.memory_budget`` (``8G``, ``0.5``, None: ``DEFAULT_MEMORY_FRACTION``
    of ``available_memory()``); None (no limit) where the available memory cannot be read."""
    from scissor_cli.options import MEMORY_BUDGET_ALLOWED, parse_memory_budget

    fraction = DEFAULT_MEMORY_FRACTION
    if setting is not None:
        try:
            n_bytes, given = parse_memory_budget(setting)
        except ValueError as e:
            raise OptionError(
                f"--memory-budget {setting!r} is not a memory size", hint=f"give {MEMORY_BUDGET_ALLOWED}"
            ) from e
        if n_bytes is not None:
            return n_bytes
        fraction = given if given is not None else fraction
    available = available_memory()
    return None if available is None else int(available * fraction)


def check_memory(shown: str, estimate: MemoryEstimate, budget: int | None) -> None:
    """Refuse, before anything is allocated, a video whose estimate is over the budget (None: no budget)."""
    if budget is None or estimate.total <= budget:
        return
    w, h = estimate.size
    parts = f"frames {_size(estimate.frames)}, decoder {_size(estimate.decoder)}"
    if estimate.model:
        parts += f", model step {_size(estimate.model)}"
    raise VideoError(
        f"{shown}: {estimate.n_frames} frames at {w}x{h} need about {_size(estimate.total)} ({parts}), "
        f"more than the memory budget of {_size(budget)}",
        hint="sample fewer frames (--frames N), give a smaller video, or raise the budget (e.g. --memory-budget 16G) "
        "if the machine has the memory",
    )


def out_of_memory(shown: str, estimate: MemoryEstimate | None = None) -> VideoError:
    """The error for an allocation that failed while decoding (never an "internal error")."""
    need = ""
    if estimate is not None:
        w, h = estimate.size
        need = f" ({estimate.n_frames} frames at {w}x{h}, about {_size(estimate.total)})"
    return VideoError(
        f"{shown}: out of memory while decoding{need}",
        hint="sample fewer frames (--frames N), give a smaller video, or lower --memory-budget so that such videos "
        "are refused before decoding",
    )


def _size(n_bytes: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes / 1024:.1f} KiB"


def _decode_decord(
    info: VideoInfo, indices: tuple[int, ...], threads: int = 0, out: np.ndarray | None = None
) -> np.ndarray | None:
    """uint8 [F, H, W, 3] upright, or None when decord is missing or fails (the caller falls back to ffmpeg).

    ``threads``: the decoder's own threads (0: decord's default). ``out``: an array of that shape to fill (a split
    decode's slice), used when the frames fit it."""
    try:
        import decord
    except ImportError:  # no wheel for this platform (e.g. macOS arm64): ffmpeg does the work
        return None
    if hasattr(decord, "logging") and hasattr(decord.logging, "QUIET"):
        decord.logging.set_level(decord.logging.QUIET)
    try:
        reader = decord.VideoReader(info.path, ctx=decord.cpu(0), **({"num_threads": threads} if threads else {}))
        if max(indices) >= len(reader):  # frame count disagrees with ffprobe (VFR, broken header)
            return None
        frames = None
        # a few frames per call: get_batch's buffer plus asnumpy's copy of all of them would double the peak
        for at in range(0, len(indices), _DECORD_CHUNK):
            batch = _upright(reader.get_batch(list(indices[at : at + _DECORD_CHUNK])).asnumpy(), info)
            if batch is None:
                return None
            if frames is None:
                fits = out is not None and out.shape == (len(indices), *batch.shape[1:])
                frames = out if fits else np.empty((len(indices), *batch.shape[1:]), dtype=np.uint8)
            frames[at : at + len(batch)] = batch
        del reader
    except (decord.DECORDError, RuntimeError):  # decord's errors on files it cannot read: ffmpeg gets a second try
        return None
    return frames


_workers_setting: int | None = None  # set_decode_workers; None: this process's cores


def set_decode_workers(n: int | None) -> None:
    """Threads ``sample_frames`` may split one video's decode across in this process, like
    ``torch.set_num_threads``: None (the default) uses the process's cores, 0 or 1 decodes serially. The CLI sets it
    from ``--decode-workers``; batch's decode-ahead worker processes set 1 (they already take a core each)."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise OptionError(f"--decode-workers {n!r} is out of range", hint="give 0 (serial) or a number of threads")
    global _workers_setting
    _workers_setting = n


def split_workers(info: VideoInfo, indices: tuple[int, ...], workers: int | None = None) -> int:
    """Threads for decoding the frames ``indices`` (increasing) of ``info``: ``workers``, else
    ``set_decode_workers``'s, else the process's cores; at most one per ``_SPLIT_MIN_FRAMES`` sampled frames and per
    ``_SPLIT_SPAN_PER_WORKER`` frames of video they span; 1 (serial) below ``_SPLIT_MIN_PIXELS`` sampled pixels."""
    if workers is None:
        workers = _workers_setting
    if workers is None:
        from scissor_cli.prefetch import process_cores

        workers = process_cores()
    if not indices or len(indices) * info.width * info.height < _SPLIT_MIN_PIXELS:
        return 1
    span = indices[-1] - indices[0] + 1
    return max(1, min(workers, len(indices) // _SPLIT_MIN_FRAMES, span // _SPLIT_SPAN_PER_WORKER))


def _decode_split(
    info: VideoInfo, indices: tuple[int, ...], n_workers: int, use_torchcodec: bool | None = None
) -> tuple[np.ndarray | None, str]:
    """``n_workers`` contiguous chunks of ``indices`` decoded at once, one thread and one reader with one decoder
    thread each, into one uint8 [F, H, W, 3] array, and the backend that decoded them: torchcodec where it imports
    (``use_torchcodec`` None; it decodes the same frames on less CPU), else decord (also for a chunk torchcodec
    could not decode). The frames are None when a chunk fails in both (ffmpeg then decodes the whole video).

    Daemon threads: on Ctrl-C the main thread stops waiting at once; a chunk still decoding ends in the background
    (it holds a reference to the array until then) instead of holding up the exit."""
    if use_torchcodec is None:
        use_torchcodec = _torchcodec() is not None
    bounds = np.linspace(0, len(indices), n_workers + 1).round().astype(int)  # chunk sizes differ by one at most
    frames = np.empty((len(indices), info.height, info.width, 3), dtype=np.uint8)
    parts: list[np.ndarray | None] = [None] * n_workers
    used: list[str] = ["decord"] * n_workers
    errors: list[BaseException] = []

    def run(k: int) -> None:
        lo, hi = bounds[k], bounds[k + 1]
        try:
            if use_torchcodec:
                parts[k] = _decode_torchcodec(info, indices[lo:hi], out=frames[lo:hi])
                used[k] = "torchcodec"
            if parts[k] is None:
                parts[k] = _decode_decord(info, indices[lo:hi], threads=1, out=frames[lo:hi])
                used[k] = "decord"
        except BaseException as e:  # a bug, not a decode failure: raised in the caller's thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(n_workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    if any(p is None for p in parts):
        return None, "ffmpeg"
    for k, part in enumerate(parts):  # frames that did not fit ``out`` (not expected: _upright checks the shape)
        if not np.shares_memory(part, frames):
            frames[bounds[k] : bounds[k + 1]] = part
    return frames, "torchcodec" if set(used) == {"torchcodec"} else "decord"


_torchcodec_loaded: list = []  # [VideoDecoder or None], once per process


def _torchcodec():
    """torchcodec's ``VideoDecoder`` class, or None where it is not installed or does not load (its CUDA builds,
    0.14 on, fail beside a CPU torch). Imports torch: only a split decode asks, after the model has loaded it."""
    if not _torchcodec_loaded:
        try:
            from torchcodec.decoders import VideoDecoder
        except Exception:  # ImportError, or OSError/RuntimeError from its shared libraries
            VideoDecoder = None
        _torchcodec_loaded.append(VideoDecoder)
    return _torchcodec_loaded[0]


def _decode_torchcodec(info: VideoInfo, indices: tuple[int, ...], out: np.ndarray | None = None) -> np.ndarray | None:
    """uint8 [F, H, W, 3] upright from torchcodec (CPU, one FFmpeg thread, exact seeks), frame by frame into ``out``
    when given; None when torchcodec is missing or cannot decode the file (the caller uses decord)."""
    decoder_cls = _torchcodec()
    if decoder_cls is None:
        return None
    frames = out if out is not None else np.empty((len(indices), info.height, info.width, 3), dtype=np.uint8)
    try:
        decoder = decoder_cls(info.path, device="cpu", seek_mode="exact", num_ffmpeg_threads=1, dimension_order="NHWC")
        if max(indices) >= len(decoder):  # frame count disagrees with ffprobe
            return None
        for k, i in enumerate(indices):  # one frame at a time: no second copy of the chunk
            frame = _upright(decoder.get_frame_at(int(i)).data.numpy()[None], info)
            if frame is None or frame.shape[1:] != frames.shape[1:]:
                return None
            frames[k] = frame[0]
    except (RuntimeError, ValueError, IndexError):  # its errors on files it cannot read
        return None
    return frames


def _upright(batch: np.ndarray, info: VideoInfo) -> np.ndarray | None:
    """[f, h, w, 3] from decord -> [f, H, W, 3] upright; None for anything unexpected. decord 0.6 rotates by
    itself, older builds do not."""
    if batch.ndim != 4 or batch.shape[3] != 3 or batch.dtype != np.uint8:
        return None
    shape = batch.shape[1:3]
    if shape == (info.height, info.width):
        return batch
    if info.rotation in (90, 270) and shape == (info.width, info.height):
        return np.rot90(batch, k=info.rotation // 90, axes=(1, 2))
    return None


def _decode_ffmpeg(info: VideoInfo, indices: tuple[int, ...], shown: str, size: tuple[int, int]) -> np.ndarray:
    """Pipe only the selected frames as rawvideo rgb24 at ``size`` (width, height): memory is F*h*w*3 bytes,
    never the whole video, whatever the input's own size."""
    import ffmpeg

    ffmpeg_bin = _binary("ffmpeg")
    width, height = size
    stream = ffmpeg.input(info.path, **({"rw_timeout": _URL_RW_TIMEOUT_US} if is_url(info.path) else {}))
    if not info.is_image:
        # frame numbers n count decoded frames in presentation order, as decord's indices do
        stream = stream.filter("select", "+".join(f"eq(n,{i})" for i in indices))
    # ffmpeg has already autorotated here; at the probed size scale is a no-op that pins the rawvideo frame size,
    # smaller (decode_size) it is where a huge input shrinks before a full-size frame reaches us
    stream = stream.filter("scale", width, height)
    out = stream.output("pipe:", format="rawvideo", pix_fmt="rgb24", vsync=0, **{"frames:v": len(indices)})
    args = out.compile(cmd=ffmpeg_bin)
    args = [args[0], "-nostdin", "-hide_banner", "-v", "error", *args[1:]]

    frames = np.empty((len(indices), height, width, 3), dtype=np.uint8)
    n_bytes, returncode, stderr = _read_into(args, frames, shown, is_url(info.path))
    n_decoded = n_bytes // (height * width * 3)
    if n_decoded == 0:
        detail = _first_error(stderr)
        if "cannot allocate memory" in stderr.lower() or "out of memory" in stderr.lower():
            raise out_of_memory(shown)
        raise VideoError(
            f"{shown}: no frame could be decoded (the video data is corrupt or truncated)",
            hint=(f"ffmpeg said: {detail}; " if detail else "")
            + "if it plays elsewhere, re-encode it: ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p OUT.mp4",
        )
    return frames[:n_decoded]


def _read_into(args: list[str], frames: np.ndarray, shown: str, url: bool) -> tuple[int, int, str]:
    """Run ffmpeg, reading its stdout straight into ``frames``; kill it when it stalls.

    Stalled: for ``STALL_TIMEOUT_S`` it has read nothing (``/proc/PID/io``) and sent no frame bytes; where its reads
    cannot be seen (a URL's socket, no /proc) ``FRAME_GAP_TIMEOUT_S`` without frame bytes. A server dripping a
    header that claims 10 hours is stopped by what arrives, not by what it claims. ffmpeg runs in its own process
    group; an exception here (Ctrl-C, SIGTERM turned into one, a stall) kills the whole group before waiting.
    stderr goes to a temporary file: a pipe we do not drain could fill and block ffmpeg on a corrupt file.
    """
    buffer = memoryview(frames).cast("B")
    stalled_after: list[float] = []  # set by the watcher: the limit that ran out
    done = threading.Event()
    with tempfile.TemporaryFile() as err:
        proc = _popen(args, stdout=subprocess.PIPE, stderr=err)
        last = [time.monotonic()]  # when ffmpeg last read input or sent output

        def watch() -> None:
            reads = None if url else _chars_read(proc.pid)
            limit = FRAME_GAP_TIMEOUT_S if reads is None else STALL_TIMEOUT_S
            while not done.wait(_WATCH_EVERY_S):
                now_reads = None if reads is None else _chars_read(proc.pid)
                if now_reads is not None and now_reads != reads:
                    reads, last[0] = now_reads, time.monotonic()
                if time.monotonic() - last[0] > limit:
                    stalled_after.append(limit)
                    _kill_group(proc, wait=False)
                    return

        watcher = threading.Thread(target=watch, name="ffmpeg-stall-watch", daemon=True)
        watcher.start()
        n_bytes = 0
        try:
            while n_bytes < buffer.nbytes:
                got = proc.stdout.readinto(buffer[n_bytes:])
                if not got:
                    break
                n_bytes += got
                last[0] = time.monotonic()
            proc.stdout.close()
            returncode = proc.wait()
        except BaseException:  # Ctrl-C, SIGTERM (raised as an interruption), anything: the group dies first
            _kill_group(proc)
            raise
        finally:
            done.set()
            watcher.join()
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
    if stalled_after:
        raise VideoError(
            f"{shown}: ffmpeg received nothing to decode for {stalled_after[0]:g} s and was stopped",
            hint="the server or disk stalled; download or copy the video locally and retry"
            if url
            else "the file may be on a stalled disk or network mount; copy it locally and retry",
        )
    return n_bytes, returncode, stderr


def _chars_read(pid: int) -> int | None:
    """Bytes process ``pid`` has read through read(2) so far (files, pipes; not sockets); None where unknown."""
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("rchar:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


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


# ---------------------------------------------------------------------------------------------------- helpers


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

"""Video input: any path -> ``probe`` -> ``plan_frames`` -> ``sample_frames`` -> uint8 RGB frames, or one VideoError.

Probing (files, URLs, stdin) is ``video_probe``; the memory estimate and budget, and the cores a decode may use,
are ``video_limits``. This module re-exports their public names (``video.probe``, ``video.estimate_memory``, ...).

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
``sample_frames(workers=)`` (the CLI's ``--decode-workers``, passed down; batch's decode-ahead worker processes
pass 1), else this process's cores; fewer for few frames or a short span, serial for small decodes
(``split_workers``). ffmpeg is not split: its ``select`` decodes every frame up to the last sampled one, which each
chunk would repeat.

Frame numbers are presentation-order ordinals in both backends; timestamps are ``index / average fps`` (exact for
constant frame rate, approximate for variable). Every subprocess runs under a timeout, with stdin closed.
decord and ffmpeg are imported inside functions: ``scissor --help`` imports this module and must stay light.
"""

from __future__ import annotations

import math
import os
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from scissor_cli.errors import OptionError, VideoError
from scissor_cli.video_limits import (  # noqa: F401 - re-exported: video.estimate_memory, ...
    MemoryEstimate,
    ModelInput,
    available_memory,
    check_memory,
    decode_size,
    estimate_memory,
    out_of_memory,
    process_cores,
    resolve_memory_budget,
)
from scissor_cli.video_probe import (  # noqa: F401 - re-exported: video.probe, video.VideoInfo, ...
    _URL_RW_TIMEOUT_US,
    IMAGE_EXTENSIONS,
    STDIN,
    STDIN_NAME,
    VIDEO_EXTENSIONS,
    VideoInfo,
    _binary,
    _first_error,
    _kill_group,
    _popen,
    is_url,
    opened,
    probe,
)

# ffmpeg decode: killed when it neither reads its input nor sends a frame for this long (what it received, never
# the duration a header declares, bounds it); where its reads cannot be seen (URLs: sockets), frames only count
STALL_TIMEOUT_S = 30.0
FRAME_GAP_TIMEOUT_S = 120.0
_WATCH_EVERY_S = 0.25
_DECORD_CHUNK = 1  # frames per decord get_batch call; measured: 1 gives the lowest peak RSS and is no slower
# Split decoding (measured: docs/performance.md). Each chunk opens its own reader and seeks from the keyframe before
# its first frame, decoding again up to a keyframe interval that the serial loop decoded once; short or small decodes
# do not win that back (a 10 s 1080p clip: 0.7x; 8 frames of 360p: 0.7x; 30 s of 720p: 1.8x).
_SPLIT_MIN_PIXELS = 8 * 1280 * 720  # sampled frames' pixels below which decoding stays serial
_SPLIT_SPAN_PER_WORKER = 300  # video frames between the first and last sampled one, per thread (x264's GOP: 250)
_SPLIT_MIN_FRAMES = 2  # sampled frames per chunk


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


class Decoded(NamedTuple):
    """A clip decoded off the model's critical path (batch's decode-ahead workers, the server's pool), handed to
    ``pipeline.encode_video``."""

    clip: Clip  # with its frames, or without them when ``resized`` holds them
    decode_s: float  # seconds the decode (and resize) took where it ran
    resized: Any = None  # uint8 [F, 3, S, S] already at the model's input (a worker's resize), or None


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
    ``workers``: threads splitting decord's decode (``split_workers``); None: the process's cores.
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


def check_decode_threads(n: object) -> int | None:
    """``n`` if it is a thread count ``sample_frames(workers=)`` takes (None: the process's cores; 0 or 1: serial),
    else OptionError naming ``--decode-workers``. The CLI passes it down from there (``pipeline.answer``,
    ``inspect_video``, ``ChatSession``); batch's decode-ahead worker processes pass 1 (they take a core each)."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise OptionError(f"--decode-workers {n!r} is out of range", hint="give 0 (serial) or a number of threads")
    return n


def split_workers(info: VideoInfo, indices: tuple[int, ...], workers: int | None = None) -> int:
    """Threads for decoding the frames ``indices`` (increasing) of ``info``: ``workers``, else the process's
    cores; at most one per ``_SPLIT_MIN_FRAMES`` sampled frames and per
    ``_SPLIT_SPAN_PER_WORKER`` frames of video they span; 1 (serial) below ``_SPLIT_MIN_PIXELS`` sampled pixels."""
    if workers is None:
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

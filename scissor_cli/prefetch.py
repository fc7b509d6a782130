"""Decode-ahead for batch mode: worker processes decode the next videos while the model works on the current one.

    with Prefetcher(videos, profile.sampling, n_workers=2, skip=is_cached) as ahead:
        for video in videos:
            decoded = ahead.take(video)     # video.Decoded, or None: decode inline / use the cache

Why processes: decord and ffmpeg hold the GIL for parts of a decode and the model's own threads want the cores,
so threads would not overlap them; a process per worker does, and a decoder that crashes (a segfault on a
broken file) takes down its worker, not the run. Workers are plain ``python -c`` subprocesses talking over a
socket pair (``multiprocessing.connection.Connection``), not ``multiprocessing.Process``: a spawned Process
re-imports the caller's main script, which breaks scripts without an ``if __name__ == "__main__"`` guard, and
fork would copy a process holding torch's threads. Their stdout is /dev/null (``-o -`` streams JSONL there).

Bounded memory: at most ``n_workers`` videos are submitted ahead of the one the model is on (decoding or decoded,
not yet taken), each holding one clip of ``F*H*W*3`` bytes, or ``F*3*S*S`` when the workers resize to the model's
``S x S`` input (``resize_to``; the frame plan caps F), so decode-ahead adds at most
``n_workers`` clips to what inline decoding holds, however many videos the run has. A worker that finished early
waits (holding its clip) until the model catches up; nothing queues beyond that.

Errors stay with their video: a worker sends back the exception (``ScissorError``'s message and hint intact), and
``take`` raises it for that video only. A worker that dies mid-decode fails its video with a ``VideoError`` and is
replaced. ``skip(video)`` (the features are in the cache) is asked before a video is sent: such videos are never
decoded.

Cleanup: each worker leads its own session and process group, so a terminal's Ctrl-C reaches only the main
process (no traceback from every worker). ``close()`` (the ``with`` block's end, also on Ctrl-C or an error)
sends each worker SIGTERM: the worker kills its ffmpeg/ffprobe children, reaps them and exits, and the main
process reaps the worker: no orphans, no zombies. A worker that does not exit within seconds is killed with its
whole process group. A worker whose parent died (``kill -9``) finds its socket closed and exits after its current
decode.

``n_workers=0`` is not a prefetcher: callers decode inline (``Prefetcher`` refuses it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from typing import TYPE_CHECKING, Any

import numpy as np

from scissor_cli import video_limits
from scissor_cli.errors import OptionError, ScissorError, VideoError, literal

if TYPE_CHECKING:
    from scissor_cli.options import SamplingOptions
    from scissor_cli.video import Decoded

MAX_AUTO_WORKERS = 8  # beyond this, disk reads and memory bandwidth rather than cores limit decoding
_KILL_WAIT_S = 5.0  # how long close() waits for a killed worker to be reaped


def default_decode_workers(cores: int | None = None) -> int:
    """One core for the main process (model, SCC, writing), the rest decode: ``clamp(cores - 1, 1, 8)``.
    decord and ffmpeg keep 1.2-1.7 cores busy per 1080p H.264 decode when cores are free, ~0.6 on a loaded machine
    (bench/bench_video.py, bench/bench_batch.py measure it).
    ``cores`` defaults to this process's share of the machine: its cores divided by the processes a launcher
    started on it (``LOCAL_WORLD_SIZE``, set by torchrun and accelerate), so 8 ranks on 16 cores decode with one
    worker each, not seven."""
    if cores is None:
        cores = video_limits.process_cores()
    return max(1, min(cores - 1, MAX_AUTO_WORKERS))


def check_decode_workers(n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        from scissor_cli.settings import spelled

        e = OptionError(
            f"{{0:=}} {literal(n)} is out of range",
            hint=f"give 0 (decode inline) or a number of worker processes, e.g. {default_decode_workers()}",
            keys=("decode_workers",),
        )
        raise spelled(e, "cli")  # not a profile setting: the flag's words unless a front end words it its own way
    return n


# ------------------------------------------------------------------------------------------------------- worker
@dataclass(frozen=True)
class _DecodeRequest:
    video: str
    n_frames: int
    fps: float | None
    start: float | None
    end: float | None
    resize_to: tuple[int, int] | None = None  # the model's (height, width): send resized frames (pixels.resize_frames)
    model: Any = None  # video.ModelInput: decode size and memory estimate (sample_frames)
    memory_budget: str | None = None  # sampling.memory_budget


def _pack_error(e: BaseException) -> tuple:
    """An exception as plain data: ScissorError's hint does not survive pickling (its args hold the message only)."""
    if isinstance(e, ScissorError):
        return ("scissor", type(e).__name__, e.message, e.hint, None)
    return ("other", type(e).__name__, str(e), None, traceback.format_exc())


def _unpack_error(packed: tuple) -> Exception:
    kind, name, message, hint, tb = packed
    if kind == "scissor":
        import scissor_cli.errors as errors

        cls = getattr(errors, name, None)
        if isinstance(cls, type) and issubclass(cls, ScissorError):
            return cls(message, hint=hint)
        return VideoError(message, hint=hint)
    # another exception type (a decoder bug): its type name and message as the job's error
    error = RuntimeError(f"{name}: {message}" if message else name)
    error.worker_traceback = tb  # type: ignore[attr-defined]
    return error


def _child_pids() -> list[int]:
    """This process's children (ffmpeg, ffprobe), from /proc; empty where there is none (the group kill covers)."""
    me, found = os.getpid(), []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == me:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return found


def _stop(signum: int, frame: Any) -> None:
    """SIGTERM from ``close()``: kill and reap our children, so none is left as an orphan or a zombie; then exit."""
    for pid in _child_pids():
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
    os._exit(0)


def _worker_main(fd: int) -> None:
    """Decode tasks from the socket ``fd`` until it closes; reply (ok, payload) per task on the same socket."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle (it stops us)
    conn = Connection(fd)
    signal.signal(signal.SIGTERM, _stop)
    from scissor_cli import video as video_io

    resize = None  # families.pixels.resize_frames, imported (with torch) on the first task that asks for it
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):  # the main process closed the pipe or died
            return
        if task is None:
            return
        t0 = time.perf_counter()
        frames = clip = None
        try:
            # workers=1: the workers already take a core each, so splitting a video would oversubscribe
            clip = video_io.sample_frames(task.video, n_frames=task.n_frames, fps=task.fps, start=task.start,
                                          end=task.end, model=task.model, memory_budget=task.memory_budget,
                                          workers=1)  # fmt: skip
            if task.resize_to is not None:
                if resize is None:
                    import torch

                    torch.set_num_threads(1)  # one core per worker, as decoding
                    from scissor_cli.families.pixels import resize_frames as resize
                try:
                    frames = resize(clip.frames, task.resize_to).numpy()  # uint8 [F, 3, S, S]
                except (MemoryError, RuntimeError) as e:  # torch: "DefaultCPUAllocator: can't allocate memory"
                    if isinstance(e, RuntimeError) and "allocate" not in str(e):
                        raise
                    raise video_io.out_of_memory(task.video) from e
            else:
                frames = np.ascontiguousarray(clip.frames)
            clip = replace(clip, frames=None)  # while the send waits for the model, only what it sends stays alive
            # the frames go as raw bytes after the rest: pickling them would copy them once more on each side
            reply: tuple[bool, Any] = (
                True,
                (clip, frames.shape, time.perf_counter() - t0, task.resize_to is not None),
            )
        except Exception as e:
            reply = (False, _pack_error(e))
        try:
            conn.send(reply)
            if frames is not None:
                conn.send_bytes(memoryview(frames).cast("B"))
        except (BrokenPipeError, EOFError, OSError):
            return
        del reply, frames, clip  # the previous clip must not stay alive through the next decode


@dataclass
class _Worker:
    process: subprocess.Popen
    conn: Connection
    task: int | None = None  # index of the video it is decoding (None: idle)


# ------------------------------------------------------------------------------------------------------- parent
def _receive(conn: Connection) -> tuple[bool, Any]:
    """One reply: (False, packed error), or (True, (clip, decode_s, resized)) with the frames read straight into
    their array: the clip's uint8 [F, H, W, 3] frames, or (``resize_to``) ``resized`` uint8 [F, 3, S, S] and a
    clip without frames."""
    from scissor_cli.video import Decoded

    ok, payload = conn.recv()
    if not ok:
        return ok, payload
    clip, shape, decode_s, is_resized = payload
    frames = np.empty(shape, dtype=np.uint8)
    if frames.nbytes:
        conn.recv_bytes_into(memoryview(frames).cast("B"))
    if is_resized:
        return True, Decoded(clip, decode_s, frames)
    return True, Decoded(replace(clip, frames=frames), decode_s, None)


def _reap(process: subprocess.Popen) -> None:
    """Wait for a worker that was told to stop (or died); kill its whole group if it does not end in time."""
    try:
        process.wait(_KILL_WAIT_S)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # a stuck worker, and any child left in its group
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(_KILL_WAIT_S)


class Prefetcher:
    """Decodes ``videos`` in order, up to ``n_workers`` ahead of the one last taken. Use as a context manager."""

    def __init__(
        self,
        videos: Sequence[str],
        sampling: SamplingOptions,
        n_workers: int,
        skip: Callable[[str], bool] | None = None,
        resize_to: tuple[int, int] | None = None,
        model: Any = None,
    ):
        n_workers = check_decode_workers(n_workers)
        if n_workers == 0:
            raise ValueError("Prefetcher needs n_workers >= 1; with 0 the caller decodes inline")
        self.videos = list(videos)
        self.sampling, self.n_workers, self.skip = sampling, n_workers, skip
        self.resize_to = None if resize_to is None else (int(resize_to[0]), int(resize_to[1]))
        self.model = model  # video.ModelInput of the model the frames are for, or None
        self._workers: list[_Worker] = []
        self._results: dict[int, tuple[bool, Any]] = {}  # decoded (or failed) and not yet taken
        self._skipped: set[int] = set()
        self._next_submit = 0  # index of the next video to hand to a worker
        self._next_take = 0
        self._closed = False
        self.n_sent = 0  # videos handed to a worker (a crashed worker's video counts once)
        self.n_skipped = 0  # videos ``skip`` kept from the workers (cached features)

    # lifecycle
    def __enter__(self) -> Prefetcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        for _ in range(min(self.n_workers, len(self.videos))):
            self._spawn()
        self._submit()

    def _spawn(self) -> _Worker:
        ours, theirs = socket.socketpair()
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where scissor_cli lives
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")])))
        code = f"from scissor_cli.prefetch import _worker_main; _worker_main({theirs.fileno()})"
        try:
            process = subprocess.Popen(
                [sys.executable, "-c", code], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                pass_fds=[theirs.fileno()], start_new_session=True, env=env,
            )  # fmt: skip
        finally:
            theirs.close()
        worker = _Worker(process, Connection(ours.detach()))
        self._workers.append(worker)
        return worker

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers]

    def close(self) -> None:
        """Kill every worker and its children (ffmpeg), reap them. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for w in self._workers:
            with contextlib.suppress(OSError):
                w.conn.close()
            if w.process.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(w.process.pid, signal.SIGTERM)  # _stop: kills and reaps its ffmpeg, then exits
        for w in self._workers:
            _reap(w.process)
        self._workers.clear()
        self._results.clear()

    # work
    def _in_flight(self) -> int:
        return sum(1 for w in self._workers if w.task is not None)

    def n_decoding(self) -> int:
        """Workers decoding right now: given a video and not yet replied. Polls their sockets, never blocks (a
        dead worker's socket reads as ready, so it does not count)."""
        n = 0
        for w in self._workers:
            if w.task is not None:
                try:
                    n += not w.conn.poll(0)
                except (EOFError, OSError):
                    pass
        return n

    @property
    def n_ahead(self) -> int:
        """Videos decoding or decoded and not yet taken: never more than ``n_workers`` (the memory bound)."""
        return self._in_flight() + len(self._results)

    def _submit(self) -> None:
        """Hand videos to idle workers while fewer than ``n_workers`` are ahead of the model (decoding or done)."""
        while self._next_submit < len(self.videos):
            if self.n_ahead >= self.n_workers:
                return
            idle = next((w for w in self._workers if w.task is None), None)
            if idle is None:
                return
            i = self._next_submit
            video = self.videos[i]
            try:
                skipped = self.skip is not None and self.skip(video)
            except Exception as e:  # e.g. the file vanished: the error belongs to this video's jobs
                self._results[i] = (False, _pack_error(e))
                self._next_submit += 1
                continue
            self._next_submit += 1
            if skipped:
                self._skipped.add(i)
                self.n_skipped += 1
                continue
            s = self.sampling
            try:
                idle.conn.send(
                    _DecodeRequest(
                        video, s.n_frames, s.fps, s.start, s.end, self.resize_to, self.model, s.memory_budget
                    )
                )
            except (BrokenPipeError, OSError):  # the worker died while idle: replace it, retry this video
                self._replace(idle)
                self._next_submit -= 1
                continue
            idle.task = i
            self.n_sent += 1

    def _replace(self, dead: _Worker) -> None:
        with contextlib.suppress(OSError):
            dead.conn.close()
        _reap(dead.process)
        self._workers.remove(dead)
        self._spawn()

    def _collect(self, block: bool) -> None:
        """Receive finished decodes; a worker that died fails the video it had and is replaced."""
        busy = [w for w in self._workers if w.task is not None]
        if not busy:
            return
        ready = wait([w.conn for w in busy], timeout=None if block else 0)  # a dead worker's socket reads EOF
        for w in busy:
            if w.conn not in ready:
                continue
            try:
                self._results[w.task] = _receive(w.conn)
                w.task = None
                continue
            except (EOFError, OSError):
                pass  # the worker died
            _reap(w.process)
            code = w.process.returncode
            how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
            self._results[w.task] = (
                False,
                _pack_error(
                    VideoError(
                        f"{self.videos[w.task]}: the decoder process {how} while decoding it",
                        hint="the file may be corrupt: check it with ffprobe, or re-encode it "
                        "(ffmpeg -i IN -c:v libx264 OUT.mp4); --decode-workers 0 decodes in the main process",
                    )
                ),
            )
            w.task = None
            self._replace(w)

    def take(self, video: str) -> Decoded | None:
        """The next video's frames and how long decoding them took (``Decoded``), or None when ``skip`` said so
        (the caller reads the cache, or decodes inline should the entry have gone since). Raises that video's
        decode error. Videos must be taken in the order given."""
        if self._closed:
            raise RuntimeError("the prefetcher is closed")
        i = self._next_take
        if i >= len(self.videos) or self.videos[i] != video:
            expected = self.videos[i] if i < len(self.videos) else "nothing"
            raise RuntimeError(f"take({video!r}) out of order: the next video is {expected!r}")
        self._next_take += 1
        self._collect(block=False)
        self._submit()
        while i not in self._results and i not in self._skipped:
            if self._in_flight() == 0:  # cannot happen unless a worker vanished without a trace
                self._submit()
                if self._in_flight() == 0 and i not in self._results and i not in self._skipped:
                    raise RuntimeError(f"no worker is decoding {video}")
            self._collect(block=True)
        self._skipped.discard(i)
        ok, payload = self._results.pop(i, (True, None))
        self._submit()  # the slot this video held goes to the next one
        if not ok:
            raise _unpack_error(payload)
        return payload


class CoreShare:
    """Keeps the main process's torch threads off the cores busy decoders use: called between model steps (the
    model's ``on_step``), it sets torch's intra-op threads to ``max(1, min(base, cores - n_decoding))``, ``base``
    being the count when it was made and ``cores`` the cores this process may use; ``restore()`` puts ``base``
    back.

    Why: torch's thread pool synchronises every operator across its threads; when a decoder holds one of those
    threads' cores, each operator waits for the descheduled thread. On 2 cores with one decoder busy the tiny
    model's time grew 5x (bench/bench_batch.py --decode-bound); with one thread it does not grow. Sized per step,
    not once: a model that outlasts the decodes (a large model on a CPU) gets every thread back as soon as the
    workers idle, holding their clips, so decode-ahead never halves its threads for the whole run."""

    def __init__(self, prefetcher: Prefetcher):
        import torch

        self._torch = torch
        self.prefetcher = prefetcher
        self.base = torch.get_num_threads()
        # torch may use fewer threads than cores (physical cores, OMP_NUM_THREADS)
        self.cores = video_limits.available_cores()
        self.threads = self.base

    def __call__(self) -> None:
        want = max(1, min(self.base, self.cores - self.prefetcher.n_decoding()))
        if want != self.threads:
            self._torch.set_num_threads(want)
            self.threads = want

    def restore(self) -> None:
        """``base`` threads again (unconditionally: something else may have changed the count since)."""
        self._torch.set_num_threads(self.base)
        self.threads = self.base


def decode_ahead(
    videos: Sequence[str], profile: Any, n_workers: int, vlm: Any = None, cache: Any = None
) -> Prefetcher | None:
    """A started ``Prefetcher`` for batch mode (the caller closes it), or None when decoding stays inline
    (``n_workers`` 0, or a single video: nothing to overlap). With ``cache`` (a ``FeatureCache``) and ``vlm``,
    videos whose features are cached for this model and frame plan are not decoded."""
    n_workers = check_decode_workers(n_workers)
    if n_workers == 0 or len(videos) < 2:
        return None
    skip = None
    if cache is not None and vlm is not None:
        from scissor_cli import video as video_io
        from scissor_cli.pipeline import model_fingerprint

        fingerprint, s = model_fingerprint(vlm), profile.sampling

        def skip(video: str) -> bool:
            if video_io.is_url(video):
                return False  # never cached
            info = video_io.probe(video)
            plan = video_io.plan_frames(info, n_frames=s.n_frames, fps=s.fps, start=s.start, end=s.end)
            return cache.has(cache.key(info.path, plan.indices, fingerprint, vlm.revision, str(vlm.dtype)))

    # a model that takes resized frames (VisionLanguageModel.encode(resized=...)): the workers resize too, so the
    # main process neither receives nor resizes full-size frames
    from scissor_cli.video import ModelInput

    size = getattr(vlm, "image_size", None)
    prefetcher = Prefetcher(videos, profile.sampling, n_workers, skip=skip, resize_to=size, model=ModelInput.of(vlm))
    try:
        prefetcher.start()
    except BaseException:
        prefetcher.close()
        raise
    return prefetcher


@contextlib.contextmanager
def decoding_ahead(
    videos: Sequence[str], profile: Any, n_workers: int, vlm: Any, cache: Any = None
) -> Iterator[Prefetcher | None]:
    """``decode_ahead`` around a model's run (batch, the lmms-eval plugin): while the block runs, ``vlm.on_step``
    is a ``CoreShare`` sizing the model's torch threads around busy decoders. On leaving (an error or Ctrl-C too)
    the hook is removed and the threads restored first, which cannot block, then the workers are stopped."""
    ahead = decode_ahead(videos, profile, n_workers, vlm, cache)
    share = None
    try:
        if ahead is not None:
            share = vlm.on_step = CoreShare(ahead)
        yield ahead
    finally:
        if share is not None:
            vlm.on_step = None
            share.restore()
        if ahead is not None:  # kills the workers and their ffmpeg children
            ahead.close()

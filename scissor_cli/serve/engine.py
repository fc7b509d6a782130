"""The model side of the server: one model thread (torch is not re-entrant) that runs a video's vision tower + SCC
and batched ``generate`` calls, and the ``Engine`` that prepares requests in a thread pool and batches them.

The model thread keeps the ``VideoRun``s of recently asked videos (``RunCache``): every request about one video
shares one run, so SCC runs once per compression setting and the rows of a batch hand ``generate`` one tensor, whose
prefix (the prompt up to the end of the video) it prefills once for them all."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import json
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from scissor_cli.errors import (
    OptionError,
    ProfileError,
    VideoError,
)

if TYPE_CHECKING:
    from scissor_cli.config import UserConfig
    from scissor_cli.model import GenerationOutput, VisionLanguageModel
    from scissor_cli.options import Profile
    from scissor_cli.pipeline import CompressedVideo, VideoRun
    from scissor_cli.settings import Overrides
from scissor_cli.serve.protocol import (
    ChatRequest,
    ServeOptions,
    Unavailable,
    _named_for_requests,
    _with_param,
    merge_flags,
)
from scissor_cli.serve.videos import fetch_video


# ---------------------------------------------------------------------------------------------------- the model thread
@dataclass(eq=False)
class _Prepare:
    video: str
    profile: Profile
    question: str
    history: tuple[tuple[str, str], ...]
    info: Any
    decoded: Any
    key: tuple | None = None  # the run's key in the model thread's RunCache (None: not kept)
    run: VideoRun | None = None  # another request's run of the same video (single-flight): shared, SCC only
    flight: concurrent.futures.Future | None = None  # told the run (or its failure) as soon as it is known
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


@dataclass(eq=False)
class _Call:
    """Quick work that must run on the model thread (it uses the tokenizer, which is not shared across threads),
    taken before anything else that waits."""

    fn: Callable[[], Any]
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


def _settle(future: concurrent.futures.Future, result: Any = None, error: BaseException | None = None) -> None:
    """Set ``future`` unless it is set already (a single-flight's request and the model thread may both try)."""
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)


RUNS_KEPT = 8  # videos whose runs the model thread keeps
RUNS_MAX_BYTES = 1 << 30  # and at most this much of their features and compressions (on the model's device)


class RunCache:
    """The ``VideoRun``s of recently asked videos, least recently used dropped first beyond ``max_runs`` runs or
    ``max_bytes`` of their tensors (``VideoRun.nbytes``; a run over the bound alone is not kept). Keyed by
    (feature-cache key, sampling): the key hashes the file's content, so a changed file is another key. Written on
    the model thread; ``in`` is safe from the decode pool."""

    def __init__(self, max_runs: int = RUNS_KEPT, max_bytes: int = RUNS_MAX_BYTES):
        self.max_runs, self.max_bytes = max_runs, max_bytes
        self._runs: OrderedDict[tuple, VideoRun] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, key: tuple) -> bool:
        with self._lock:
            return key in self._runs

    def __len__(self) -> int:
        return len(self._runs)

    def get(self, key: tuple) -> VideoRun | None:
        with self._lock:
            run = self._runs.get(key)
            if run is not None:
                self._runs.move_to_end(key)
            return run

    def put(self, key: tuple, run: VideoRun) -> None:
        with self._lock:
            self._runs[key] = run
            self._runs.move_to_end(key)
        self.trim()

    def trim(self) -> None:
        """Drop the least recently used runs until the bounds hold (a run grows as it compresses)."""
        with self._lock:
            sizes = {key: run.nbytes() for key, run in self._runs.items()}
            while self._runs and (len(self._runs) > self.max_runs or sum(sizes.values()) > self.max_bytes):
                key, _ = self._runs.popitem(last=False)
                del sizes[key]


class ModelWorker:
    """The one thread that touches the model: vision tower + SCC jobs and batched generates, in arrival order."""

    def __init__(self, vlm: VisionLanguageModel, max_batch: int, cache: Any, runs: RunCache | None = None):
        self.vlm, self.max_batch, self.cache = vlm, max_batch, cache
        self.runs = runs if runs is not None else RunCache()
        self._items: deque[_Call | _Prepare | _Generate] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.batches: list[int] = []  # rows of each generate, for the stats line and the tests
        self._thread = threading.Thread(target=self._run, name="scissor-model", daemon=True)
        self._thread.start()

    def submit(self, item: _Call | _Prepare | _Generate) -> concurrent.futures.Future:
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

    def _take(self) -> list[_Call | _Prepare | _Generate] | None:
        with self._cond:
            while not self._items and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            # a prepare whose features are cached is quick: it goes first, so its generate joins the next batch
            # instead of the batch running without it
            quick = (i for i in self._items if isinstance(i, _Call) or (isinstance(i, _Prepare) and i.decoded is None))
            head = next(quick, self._items[0])
            self._items.remove(head)
            if isinstance(head, (_Call, _Prepare)) or head.batch_key() is None:
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
            if work and isinstance(work[0], _Call):
                try:
                    work[0].future.set_result(work[0].fn())
                except BaseException as e:  # noqa: BLE001 - handed to the request that asked
                    work[0].future.set_exception(e)
            elif work and isinstance(work[0], _Prepare):
                self._prepare(work[0])
            elif work:
                self._generate(work)  # type: ignore[arg-type]

    def _prepare(self, job: _Prepare) -> None:
        """The request's ``VideoRun`` and its SCC, the context checked here, not on the event loop: the tokenizer is
        the model thread's too. The run shares a single-flight leader's (``job.run``) or a kept one's (``job.key``
        in ``runs``: reported as a cache hit, nothing decoded or encoded for it); else the video is encoded (or
        read from the feature cache) and its run kept."""
        from scissor_cli.pipeline import VideoRun, check_context

        try:
            held = self.runs.get(job.key) if job.key is not None and job.run is None else None
            if job.run is not None:
                run = job.run.sharing(job.profile)
            elif held is not None:
                memory = replace(held.encoded, decode_s=0.0, vision_s=0.0, cache_hit=True, backend="cache")
                run = held.sharing(job.profile, encoded=memory)
            else:
                run = VideoRun.open(self.vlm, job.video, job.profile, cache=self.cache, info=job.info,
                                    decoded=job.decoded)  # fmt: skip
                if job.key is not None:
                    self.runs.put(job.key, run)
        except BaseException as e:  # noqa: BLE001 - handed to the request that asked (and those waiting on it)
            if job.flight is not None:
                _settle(job.flight, error=e)
            job.future.set_exception(e)
            return
        if job.flight is not None:
            _settle(job.flight, result=run)
        try:
            compressed = run.compressed()
            self.runs.trim()  # a new compression counts against the bound
            check_context(self.vlm, compressed.n_final, job.question, job.history,
                          job.profile.generation.max_new_tokens, what="this request",
                          hint="fewer visual tokens (retention, tokens or frames), a smaller max_tokens, or fewer "
                          "turns")  # fmt: skip
            job.future.set_result((run, compressed))
        except BaseException as e:  # noqa: BLE001 - handed to the request that asked
            job.future.set_exception(e)

    def _generate(self, rows: list[_Generate]) -> None:
        from scissor_cli.pipeline import output_rows

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

        def should_stop() -> bool | list[bool]:
            """A closed server stops every row; a client that went away stops its own row (the others go on, and
            generate ends once every row has stopped)."""
            return True if self._closed else [r.cancelled.is_set() for r in ready]

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
                r.future.set_result((output_rows(out, i, i + 1), len(ready)))


# ---------------------------------------------------------------------------------------------------- the engine
def _cache_with_memo(root: Any) -> Any:
    """The feature cache in ``root``, its keys remembered per file version: a key hashes the whole file, which every
    request about the same video would otherwise do again (twice: here and in ``encode_video``). Also the keys of
    the model thread's ``RunCache``, the feature cache on or off."""
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

    return Cache(root)


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
        overrides: Overrides,
        config: UserConfig | None = None,
        runs: RunCache | None = None,
    ):
        """``base``: the server's profile (its model settings hold for every request); ``overrides``: the
        server's flags, under each request's fields; ``config``: the user config (default: read now, once)."""
        from scissor_cli.cache import default_root
        from scissor_cli.config import load_config
        from scissor_cli.pipeline import model_fingerprint

        # (video url, sampling) -> the encoding in progress: a second request for a video being decoded and
        # encoded waits for that encoding instead of decoding it again
        self._flights: dict[tuple, concurrent.futures.Future] = {}
        self._flights_lock = threading.Lock()
        self.vlm, self.options = vlm, options
        self.base, self.overrides = base, overrides
        self.config = config if config is not None else load_config()
        self.pool = concurrent.futures.ThreadPoolExecutor(options.decode_workers, thread_name_prefix="scissor-decode")
        self.keys = _cache_with_memo(default_root(self.config))
        self.cache = None
        self.runs = runs if runs is not None else RunCache()
        self._fingerprint = model_fingerprint(vlm)
        self.worker: ModelWorker | None = None
        self.in_flight = 0
        self._probed: dict[tuple, Any] = {}

    def start(self, cache_on: bool) -> None:
        if cache_on:
            self.cache = self.keys
        self.worker = ModelWorker(self.vlm, self.options.max_batch, self.cache, self.runs)

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

    def _open(self, url: str, profile: Profile) -> tuple[Any, Any, str | None, tuple]:
        """In the pool: (info, decoded frames or None when cached or its run is kept, a temporary file to remove or
        None, the run's ``RunCache`` key)."""
        from scissor_cli import video as video_io
        from scissor_cli.pipeline import decode_clip, feature_key

        path, temporary = fetch_video(url, self.options)
        try:
            info = self._probe(path, temporary)
            s = profile.sampling
            plan = video_io.plan_frames(info, n_frames=s.n_frames, fps=s.fps, start=s.start, end=s.end)
            vlm = self.vlm
            key = feature_key(self.keys, vlm, info, plan.indices, self._fingerprint)
            run_key = (key, s)
            if run_key in self.runs or (self.cache is not None and profile.model.cache and self.cache.has(key)):
                return info, None, path if temporary else None, run_key
            t0 = time.perf_counter()
            clip = decode_clip(vlm, path, s, info)
            return info, video_io.Decoded(clip, time.perf_counter() - t0), path if temporary else None, run_key
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

    async def prepare(self, url: str, req: ChatRequest, profile: Profile) -> tuple[VideoRun, CompressedVideo]:
        """Fetch, probe and (unless cached) decode in the pool; vision tower + SCC on the model thread. A question
        the context cannot hold is refused first, before anything is fetched or decoded. Single-flight: while a
        request decodes and encodes a video, another for the same video (and frames) waits for that encoding,
        and a failure of it is the other's too."""
        assert self.worker is not None
        check = functools.partial(self.vlm.check_question, req.question, reserve=profile.generation.max_new_tokens,
                                  history=req.history)  # fmt: skip
        await asyncio.wrap_future(self.worker.submit(_Call(check)))
        shown = url.split(",", 1)[0] + ",..." if url[:5].lower() == "data:" else url  # not megabytes of base64
        key = (url, profile.sampling)
        with self._flights_lock:
            flight = self._flights.get(key)
            leader = flight is None
            if leader:
                flight = self._flights[key] = concurrent.futures.Future()
        if not leader:
            run = await asyncio.wrap_future(flight)  # raises the encoding's failure
            job = _Prepare(shown, profile, req.question, req.history, None, None, run=run)
            return await asyncio.wrap_future(self.worker.submit(job))
        try:
            loop = asyncio.get_running_loop()
            info, decoded, temporary, run_key = await loop.run_in_executor(self.pool, self._open, url, profile)
            try:
                job = _Prepare(shown, profile, req.question, req.history, info, decoded, key=run_key, flight=flight)
                return await asyncio.wrap_future(self.worker.submit(job))
            finally:
                if temporary:
                    with contextlib.suppress(OSError):
                        os.unlink(temporary)
        except BaseException as e:
            # failed before the model thread encoded (a no-op after): the waiting requests fail alike
            gone = Unavailable("the request encoding this video went away", hint="retry")
            _settle(flight, error=e if isinstance(e, Exception) else gone)
            raise
        finally:
            with self._flights_lock:
                del self._flights[key]

    # ------------------------------------------------------------------ one request
    def request_profile(self, req: ChatRequest) -> Profile:
        """The server's flags with the request's fields on top (``merge_flags``), resolved by ``settings.resolve``
        as the flags are (the same messages, naming the request's fields), on the server's model; then resolved
        as ``ask`` resolves it."""
        from dataclasses import asdict

        from scissor_cli.pipeline import resolve_profile
        from scissor_cli.settings import Overrides, resolve

        server = {k: v for k, v in asdict(self.overrides).items() if k != "profile"}
        flags = merge_flags(server, req.flags, req.profile)
        name = req.profile if req.profile is not None else self.overrides.profile
        try:
            p = resolve(Overrides(profile=name, **flags), self.config)
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

    def result(self, run: VideoRun, req: ChatRequest, profile: Profile, row: GenerationOutput, n_rows: int,
               t0: float) -> Result:  # fmt: skip
        [answer] = run.answers([req.question], row, profile)
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

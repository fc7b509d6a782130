"""The batch runner: ``run_batch`` loads the model once, answers the pending jobs (grouped per video, batched
questions), appends each record as it finishes, and merges the ranks' part files.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from scissor_cli.batch.ranks import BARRIER_TIMEOUT_S, _Group, dist_env
from scissor_cli.batch.records import (
    DEBUG_HINT,
    STDOUT,
    RecordTask,
    _append_line,
    _check_levels,
    _check_resume,
    _final_records,
    _job_keys,
    _read_records,
    _Record,
    _tasks,
    _write_atomic,
    config_hash,
    run_config,
)
from scissor_cli.batch.safety import (
    JOURNAL_SUFFIX,
    MAX_CRASHES,
    _check_not_an_input,
    _check_output,
    _check_overwritable,
    _compact_journal,
    _crash_counts,
    _Journal,
    _lock,
    _part_files,
    _remove_stale_lock,
    _signals_held,
    _unlock,
    _write_failed,
    _write_summary,
    _WriteError,
    _writing,
    journal_path,
    part_path,
    summary_path_for,
)
from scissor_cli.choices import PROMPT_PRESETS, build_prompt
from scissor_cli.errors import (
    Interrupted,
    ManifestError,
    OptionError,
    ScissorError,
    StdoutClosed,
    debug_enabled,
    shorten,
)
from scissor_cli.jobs import Job
from scissor_cli.options import Profile
from scissor_cli.prefetch import check_decode_workers, decoding_ahead
from scissor_cli.scoring import score, summarize
from scissor_cli.sweep import SWEEP_AXES, Sweep

if TYPE_CHECKING:
    from scissor_cli.model import VisionLanguageModel
    from scissor_cli.pipeline import CompressedVideo, VideoRun


@dataclass
class BatchSummary:
    n_total: int  # jobs given (x levels in a sweep: one record each)
    n_done: int  # answered in this run (rank 0 of several: by every rank)
    n_failed: int  # failed in this run (their records say why)
    n_skipped: int  # already in the output
    mean_time_s: float | None  # wall time per job of this run in this process, model load excluded
    # scoring.summarize over every record in the output, earlier runs' included (n_records, n_ok, n_error,
    # mean_retention, accuracy): the numbers <output>.summary.json holds. With -o -: this run's records; on a rank
    # other than 0: that rank's own records.
    totals: dict[str, Any]
    config: dict[str, Any]  # run_config(profile), as in every record
    config_hash: str
    output: str
    summary_path: str | None  # <output stem>.summary.json (None with -o - and on ranks other than 0)
    rank: int = 0
    world_size: int = 1

    @property
    def accuracy(self) -> dict | None:
        return self.totals.get("accuracy")

    @property
    def mean_retention(self) -> float | None:
        return self.totals.get("mean_retention")

    def to_dict(self) -> dict[str, Any]:
        """``batch --json``: the summary file's content, plus this run's counts and where the summary was written."""
        this_run = {"n_jobs": self.n_total, "n_done": self.n_done, "n_failed": self.n_failed,
                    "n_skipped": self.n_skipped, "mean_time_s": self.mean_time_s}  # fmt: skip
        return {"output": self.output, **self.totals, "config_hash": self.config_hash, "config": self.config,
                "this_run": this_run, "summary_path": self.summary_path}  # fmt: skip


class BatchView(Protocol):
    """Progress sink (render.BatchProgress); every method is optional."""

    def start(self, n_total: int, n_skipped: int) -> None: ...
    def note(self, text: str) -> None: ...  # a step worth a line of its own: loading the model, merging part files
    def status(self, text: str) -> None: ...  # what is running now (a video, a stage): a live display only
    def job_done(self, record: dict) -> None: ...


def _notify(view: Any, method: str, *args: Any) -> None:
    fn = getattr(view, method, None) if view is not None else None
    if fn is not None:
        fn(*args)


# ---------------------------------------------------------------------------------------------------------- run
@dataclass
class _Row:
    task: RecordTask
    run: VideoRun  # the job's video, encoded once
    compressed: CompressedVideo  # at the job's level
    profile: Profile  # the level's (resolved) profile
    prompt: str
    share_s: float  # this job's share of the video's decode + vision + SCC wall time

    @property
    def job(self) -> Job:
        return self.task.job


MAX_ERROR_FIELD = 200  # characters of a question, prompt, option, ... copied into an error record


MAX_ERROR_TEXT = 500  # characters of an error record's error and hint


MAX_FIELD = 100_000  # characters of any text field of an ok record (the model's own limits keep them far below)


_UNCAPPED = frozenset({"id", "video", "status", "config_hash", "traceback"})  # keys, or needed whole (traceback)


def _capped(record: dict[str, Any], limit: int) -> dict[str, Any]:
    """Text fields cut to ``limit`` characters, the full length noted: a 100 MB question stays out of the file."""
    for key, value in record.items():
        if key in _UNCAPPED:
            continue
        if isinstance(value, str):
            record[key] = shorten(value, limit)
        elif key == "options" and isinstance(value, list):
            record[key] = [shorten(v, limit) if isinstance(v, str) else v for v in value]
    return record


def _base_record(task: RecordTask) -> dict[str, Any]:
    job = task.job
    record: dict[str, Any] = {"id": task.id, "status": "ok"}
    if task.level is not None:
        record["level"] = dict(task.level)
    record.update(video=job.video, question=job.question)
    if job.options:
        record["options"] = list(job.options)
    if job.answer is not None:
        record["expected"] = job.answer
    return record


def _error_record(task: RecordTask, e: Exception) -> dict[str, Any]:
    job = task.job
    record = _base_record(task)
    record["status"] = "error"
    if isinstance(e, ScissorError):
        error, hint = e.message, e.hint
    else:
        error, hint = f"{type(e).__name__}: {e}", DEBUG_HINT
    _capped(record, MAX_ERROR_FIELD)
    record.update(error=shorten(error, MAX_ERROR_TEXT), error_type=type(e).__name__)
    record["hint"] = None if hint is None else shorten(hint, MAX_ERROR_TEXT)
    if not isinstance(e, ScissorError) and debug_enabled():
        record["traceback"] = traceback.format_exc()
    if job.answer is not None:
        record["correct"] = False
    record.update(_capped(dict(job.extra), MAX_ERROR_FIELD))
    return record


def _killed_record(task: RecordTask, n_deaths: int, journal: str) -> dict[str, Any]:
    """A job two runs died on (``_Journal``) is not started a third time: this error record stands for it."""
    record = _error_record(
        task,
        ManifestError(
            f"started {n_deaths} times and never finished: the process died while working on it each time "
            "(killed: out of memory?)",
            hint=f"it is not started again in this output; check memory (dmesg shows the OOM killer), try a "
            f"smaller --batch-size or a larger machine, or fewer --frames in a new output; to retry it here, "
            f"delete {journal}",
        ),
    )
    record["error_type"] = "Killed"
    return record


def _ok_record(task: RecordTask, answer: Any, prompt: str, n_rows: int) -> dict[str, Any]:
    job = task.job
    record = _base_record(task)
    record.update(answer.to_dict())
    for key in ("options", "expected"):  # keep them after the answer's fields, as in error records
        if key in record:
            record[key] = record.pop(key)
    record.update(score(job, answer.answer))
    if prompt != job.question:
        record["prompt"] = prompt
    record["batch_rows"] = n_rows  # timings_s prefill/generation are this generate call's, shared by its rows
    record.update(job.extra)
    return _capped(record, MAX_FIELD)


class _Runner:
    """Opens each video's ``VideoRun`` (one encoding, SCC once per level), queues its questions, and sends up to
    ``batch_size`` rows per ``generate``, rows of several videos and levels together."""

    def __init__(
        self,
        vlm: VisionLanguageModel,
        profile: Profile,
        batch_size: int,
        emit: Callable[[dict], None],
        sweep: Sweep | None = None,
        prompt: str | None = None,
        on_start: Callable[[list[str]], None] | None = None,
        cache_dir: str | os.PathLike | None = None,
    ):
        from scissor_cli import pipeline

        self.vlm, self.profile, self.batch_size, self.emit = vlm, profile, batch_size, emit
        self.on_start = on_start or (lambda ids: None)  # the journal: these jobs are in flight now
        self.sweep, self.prompt = sweep, prompt
        # each level's profile, built once (the model's resolved tau/epsilon/seed shared by every level)
        self.level_profiles = {v: sweep.profile_for(profile, v) for v in sweep.values} if sweep else {None: profile}
        self.pipeline = pipeline
        self.cache = None
        if profile.model.cache:
            from scissor_cli.cache import FeatureCache

            self.cache = FeatureCache(cache_dir)
        self.queue: list[_Row] = []
        self.prefetch: Any = None  # a prefetch.Prefetcher decoding the next videos in worker processes, or None

    def refuse_long_prompts(self, videos: list[str], by_video: dict[str, list[RecordTask]]) -> list[str]:
        """A prompt longer than the model's context allows is its job's error record, before anything is
        decoded; returns the videos that still have jobs (``by_video`` keeps only those jobs)."""
        reserve = self.profile.generation.max_new_tokens
        for video in videos:
            kept = []
            for task in by_video[video]:
                try:
                    self.vlm.check_question(
                        build_prompt(task.job.question, task.job.options, task.job.prompt or self.prompt),
                        reserve=reserve,
                        what="the job's prompt",
                    )
                    kept.append(task)
                except OptionError as e:
                    self.emit(_error_record(task, e))
            by_video[video] = kept
        return [v for v in videos if by_video[v]]

    def add_video(self, video: str, tasks: list[RecordTask], on_status: Callable[[str], None]) -> None:
        """One decode + vision tower pass for every task of ``video``, then SCC once per level; the rows are
        queued level by level (a level's rows share one ``CompressedVideo``), so a video's levels go through
        ``generate`` together when ``batch_size`` allows."""
        t0 = time.perf_counter()
        self.on_start([t.id for t in tasks])
        try:
            decoded = self.prefetch.take(video) if self.prefetch is not None else None  # raises its decode error
            run = self.pipeline.VideoRun.open(self.vlm, video, self.profile, on_status=on_status, cache=self.cache,
                                              decoded=decoded)  # fmt: skip
        except Exception as e:
            for task in tasks:
                self.emit(_error_record(task, e))
            return
        rows: list[tuple[RecordTask, CompressedVideo, Profile]] = []
        if getattr(self.vlm, "on_step", None) is not None:
            self.vlm.on_step()  # SCC's matmuls take the threads the decoders leave now, not at the last vision chunk
        for value, profile in self.level_profiles.items():
            level_tasks = [t for t in tasks if t.value == value]
            if not level_tasks:
                continue
            try:
                compressed = run.compressed(profile)
            except Exception as e:
                for task in level_tasks:
                    self.emit(_error_record(task, e))
                continue
            rows.extend((task, compressed, profile) for task in level_tasks)
        if not rows:
            return
        share_s = (time.perf_counter() - t0) / len(rows)
        for task, compressed, profile in rows:
            prompt = build_prompt(task.job.question, task.job.options, task.job.prompt or self.prompt)
            self.queue.append(_Row(task, run, compressed, profile, prompt, share_s))
        while len(self.queue) >= self.batch_size:
            self.flush(self.batch_size)

    def flush(self, n: int | None = None) -> None:
        n = len(self.queue) if n is None else n
        rows, self.queue = self.queue[:n], self.queue[n:]
        if len(rows) == 1:
            self._generate_one(rows[0])
        elif rows:
            self.on_start([r.task.id for r in rows])
            try:
                generated = self.vlm.generate(
                    [(r.compressed.tokens, r.prompt) for r in rows], rows[0].profile.generation
                )
            except Exception:
                # one bad row must not fail its batch-mates: answer them one at a time, each failing on its own
                for row in rows:
                    self._generate_one(row)
                return
            self._emit_rows(rows, generated)

    def _generate_one(self, row: _Row) -> None:
        self.on_start([row.task.id])
        try:
            generated = self.vlm.generate([(row.compressed.tokens, row.prompt)], row.profile.generation)
        except Exception as e:
            self.emit(_error_record(row.task, e))
            return
        self._emit_rows([row], generated)

    def _emit_rows(self, rows: list[_Row], generated: Any) -> None:
        # the answers of the rows of one video at one level at a time, from their slice of the batch's outputs
        start = 0
        while start < len(rows):
            stop = start
            while stop < len(rows) and rows[stop].compressed is rows[start].compressed:
                stop += 1
            video_rows = rows[start:stop]
            first, part = video_rows[0], self.pipeline.output_rows(generated, start, stop)
            try:
                answers = first.run.answers([r.job.question for r in video_rows], part, first.profile)
            except Exception as e:
                for row in video_rows:
                    self.emit(_error_record(row.task, e))
            else:
                for row, ans in zip(video_rows, answers, strict=True):
                    self.emit(_ok_record(row.task, ans, row.prompt, len(rows)))
            start = stop


def run_batch(
    load_model: Callable[[], VisionLanguageModel],
    jobs: Sequence[Job],
    output: str,
    profile: Profile,
    overwrite: bool = False,
    batch_size: int = 4,
    view: BatchView | None = None,
    *,
    inputs: Sequence[str] = (),
    rank: int | None = None,
    world_size: int | None = None,
    sweep: Sweep | None = None,
    prompt: str | None = None,
    decode_workers: int = 0,
    cache_dir: str | os.PathLike | None = None,
) -> BatchSummary:
    """Answer ``jobs``, appending one record per job to ``output`` (or this rank's part file; ``"-"``: stdout);
    see the module doc.

    ``load_model`` is called once, only when this process has pending jobs, and only after the output's settings
    were checked. ``inputs`` are files the jobs were read from (the manifest): like every job's video, the output
    may not be one of them. ``rank``/``world_size`` default to the RANK/WORLD_SIZE environment (torchrun,
    accelerate launch). Raises ManifestError for an unusable output, OptionError for an output made with other
    settings, Interrupted on Ctrl-C (finished jobs are saved). ``decode_workers``: processes decoding the next videos
    while the model works (``scissor_cli.prefetch``; 0, the default here, decodes inline; the CLI's default is
    ``default_decode_workers()``).

    ``sweep``: answer every job at each of its levels (one record per job and level, ids ``<job id>@<level>``),
    each video decoded and encoded once. ``prompt``: the multiple-choice prompt preset (``PROMPT_PRESETS``) of jobs
    that do not name their own. ``cache_dir``: the feature cache's folder (None: ``cache.default_root()``; the CLI
    passes the one it resolved)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise OptionError(f"batch size {batch_size!r} is out of range", hint="--batch-size must be an integer >= 1")
    check_decode_workers(decode_workers)
    env_rank, env_world = dist_env()
    rank = env_rank if rank is None else rank
    world_size = env_world if world_size is None else world_size
    if output == STDOUT:
        if world_size > 1:
            raise OptionError("-o - (stdout) needs a single process", hint="give the run a file: -o results.jsonl")
    else:
        _check_not_an_input(output, jobs, inputs)
        _check_output(output)
    if prompt is not None and prompt not in PROMPT_PRESETS:
        raise OptionError(f"unknown prompt preset {prompt!r}", hint=f"use one of: {', '.join(PROMPT_PRESETS)}")
    if sweep is not None:
        if sweep.axis not in SWEEP_AXES or not sweep.values:
            raise OptionError(f"cannot sweep {sweep.axis!r}", hint=f"sweep one of: {', '.join(SWEEP_AXES)}")
        for value in sweep.values:
            sweep.profile_for(profile, value)  # an out-of-range level fails now, before any work
    tasks = _tasks(jobs, sweep)
    ids: set[str] = set()
    for task in tasks:
        if task.id in ids:
            raise ManifestError(f"duplicate job id {task.id!r}", hint="every job needs its own id")
        ids.add(task.id)

    # one writer per file: a run locks the output (rank 0 of several: also the merge into it), each other rank
    # its part file; a second run on the same output stops here, before it reads, writes or loads anything
    lock = None if output == STDOUT else _lock(output if rank == 0 else part_path(output, rank, world_size), output)
    try:
        group = _Group(rank, world_size, BARRIER_TIMEOUT_S)
        try:
            return _run(load_model, tasks, output, profile, overwrite, batch_size, view, rank, world_size, group,
                        sweep, prompt, decode_workers, cache_dir)  # fmt: skip
        finally:
            group.close()
    finally:
        _unlock(lock)


def _write_stdout(record: dict) -> None:
    try:
        sys.stdout.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        sys.stdout.flush()  # a reader downstream sees each record as its job finishes
    except BrokenPipeError as e:  # `-o - | head`: the reader has what it wanted; end quietly like Unix tools
        raise StdoutClosed from e


def _interrupted(output: str, n_total: int, n_saved: int, n_this_run: int) -> Interrupted:
    if output == STDOUT:
        return Interrupted(
            f"{n_this_run} of {n_total} records were written to stdout, which cannot be resumed "
            "(rerunning starts over; use -o FILE to be able to continue)"
        )
    return Interrupted(
        f"{n_saved} of {n_total} jobs are saved in {output} ({n_this_run} in this run); "
        "rerun the same command to continue"
    )


def _saved_counts(
    target: str, my_jobs: Sequence[RecordTask], my_records: list[dict], to_stdout: bool
) -> tuple[int, int]:
    """(this rank's jobs saved ok, records written) after a stop: a signal can land after a record's line was
    written but before it was counted (during its fsync), so count what the file holds, as the next run will."""
    n_ok = sum(1 for r in my_records if r["status"] == "ok")
    n_written = len(my_records)
    if not to_stdout:
        with contextlib.suppress(ScissorError):
            done = {r.key for r in _read_records(target, keep_raw=False) if r.ok}
            n_ok = max(n_ok, sum(1 for t in my_jobs if any(k in done for k in _job_keys(t))))
            n_written = max(n_written, n_ok)
    return n_ok, n_written


def _run(
    load_model: Callable[[], VisionLanguageModel],
    jobs: list[RecordTask],
    output: str,
    profile: Profile,
    overwrite: bool,
    batch_size: int,
    view: BatchView | None,
    rank: int,
    world_size: int,
    group: _Group,
    sweep: Sweep | None,
    prompt: str | None,
    decode_workers: int = 0,
    cache_dir: str | os.PathLike | None = None,
) -> BatchSummary:
    to_stdout = output == STDOUT
    target = output if world_size == 1 else part_path(output, rank, world_size)
    journal_file = None if to_stdout else journal_path(output)
    config = run_config(profile, sweep, prompt)
    digest = config_hash(config)
    # Phase 1: every rank reads the same files (nobody writes records before the barrier).
    existing: list[_Record] = []
    crashes: Counter[str] = Counter()
    try:
        if to_stdout:
            pass
        elif overwrite:
            summary_file = summary_path_for(output)
            _check_overwritable([(output, False), (summary_file, True), *((p, False) for p in _part_files(output))])
            with _writing(output):
                if rank == 0:
                    mine = {part_path(output, r, world_size) for r in range(world_size)}
                    for path in [output, summary_file, journal_file, *_part_files(output)]:
                        if os.path.exists(path) and path not in mine:
                            os.remove(path)
                open(target, "wb").close()  # each rank empties its own part (or the output when alone)
        else:
            found: dict[str | None, tuple[dict | None, int]] = {}
            existing = [
                r for p in [output, *_part_files(output)] for r in _read_records(p, keep_raw=False, configs=found)
            ]
            _check_resume(output, found, config, digest)  # before anything is written or loaded
            if sweep is not None:
                _check_levels(output, existing, sweep.axis)
            crashes = _crash_counts(journal_file)
            with _writing(output):
                if world_size == 1:
                    _merge_parts(output)  # leftovers of a killed multi-process run
                _read_records(target, truncate_partial=True, keep_raw=False)  # only this rank writes `target`
    except _WriteError as e:
        raise _write_failed(e, "nothing was written") from None
    finished = {r.key for r in existing if r.ok}
    pending = [j for j in jobs if not any(k in finished for k in _job_keys(j))]
    n_skipped = len(jobs) - len(pending)
    # jobs in flight when two runs died (the OOM killer?) get an error record instead of a third try
    killed = [t for t in pending if crashes[t.id] >= MAX_CRASHES]
    killed_ids = {t.id for t in killed}

    by_video: dict[str, list[RecordTask]] = {}
    for task in pending:
        if task.id not in killed_ids:
            by_video.setdefault(task.job.video, []).append(task)
    # whole videos per rank, so one rank encodes each video once
    my_videos = list(by_video)[rank::world_size]
    my_jobs = [job for v in my_videos for job in by_video[v]]
    my_killed = killed[rank::world_size]
    group.barrier()

    _notify(view, "start", len(my_jobs) + len(my_killed) + n_skipped, n_skipped)
    my_records: list[dict] = []
    t_work = None
    journal = None if journal_file is None else _Journal(journal_file, rank)
    try:
        try:
            if my_jobs or my_killed:
                t_work = _answer(load_model, my_videos, by_video, target, profile, config, digest, batch_size, view,
                                 my_records, sweep, prompt, decode_workers, my_killed, crashes, journal,
                                 cache_dir)  # fmt: skip
        finally:
            if journal is not None:
                journal.ended()  # whatever stopped it, this run did not die: its jobs in flight are not to blame
        group.barrier()  # every rank has written its part
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM/SIGHUP (the CLI raises them as its subclass Terminated)
        n_ok, n_written = _saved_counts(target, my_jobs, my_records, to_stdout)
        if not to_stdout and world_size == 1:
            with contextlib.suppress(ScissorError, OSError):  # the summary of what is saved, as after a full run
                _write_summary(output, summarize([r.slim for r in _final_records(_read_records(output))]), config,
                               digest)  # fmt: skip
        raise _interrupted(output, len(jobs), n_skipped + n_ok, n_written) from None
    except _WriteError as e:
        n_ok, _ = _saved_counts(target, my_jobs, my_records, to_stdout)
        raise _write_failed(e, f"{n_skipped + n_ok} of {len(jobs)} jobs are saved in {output}") from None

    summary = BatchSummary(
        n_total=len(jobs),
        n_done=sum(1 for r in my_records if r["status"] == "ok"),
        n_failed=sum(1 for r in my_records if r["status"] != "ok"),
        n_skipped=n_skipped,
        mean_time_s=t_work / len(my_records) if t_work is not None and my_records else None,
        totals=summarize(my_records),
        config=config,
        config_hash=digest,
        output=output if rank == 0 else target,
        summary_path=None,
        rank=rank,
        world_size=world_size,
    )
    if rank != 0 or to_stdout:
        return summary

    if world_size > 1:
        _notify(view, "note", "merging part files")
    try:
        with _writing(output):
            final = _merge_parts(output)
            if world_size > 1:  # count every rank's work of this run
                pending_keys = {_job_keys(j)[0] for j in pending}
                run_records = [r.slim for r in final if r.key in pending_keys]
                summary.n_done = sum(1 for r in run_records if r.get("status") == "ok")
                summary.n_failed = len(run_records) - summary.n_done
            summary.totals = summarize([r.slim for r in final])
            summary.summary_path = _write_summary(output, summary.totals, config, digest)
            _compact_journal(journal_file, {r.key[3:] for r in final if r.ok and r.key.startswith("id:")})
    except _WriteError as e:
        n_ok = sum(1 for r in _read_records(output, keep_raw=False) if r.ok)
        raise _write_failed(e, f"{n_ok} of {len(jobs)} jobs are saved in {output} and its part files") from None
    return summary


def _answer(
    load_model: Callable[[], VisionLanguageModel],
    videos: list[str],
    by_video: dict[str, list[RecordTask]],
    target: str,
    profile: Profile,
    config: dict,
    digest: str,
    batch_size: int,
    view: BatchView | None,
    records: list[dict],
    sweep: Sweep | None = None,
    prompt: str | None = None,
    decode_workers: int = 0,
    killed: Sequence[RecordTask] = (),
    crashes: Counter[str] | None = None,
    journal: _Journal | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> float | None:
    """Write the ``killed`` jobs' error records, then (if ``videos`` has any) load the model, answer ``videos``'
    jobs and write their records to ``target``; returns the work's wall time (model load excluded; None without
    videos). ``records`` receives each record as it is written (for counts after an interrupt). ``journal``
    hears of each step's jobs before the step starts."""
    with _writing(target):
        fd = None if target == STDOUT else os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:

        def emit(record: dict) -> None:
            record.update(config_hash=digest, config=config)
            with _signals_held():  # a Ctrl-C landing in the fsync must not leave a written record uncounted
                if fd is None:
                    _write_stdout(record)
                else:
                    with _writing(target):
                        _append_line(fd, record)
                records.append(record)
            _notify(view, "job_done", record)

        for task in killed:
            emit(_killed_record(task, (crashes or Counter())[task.id], journal.path if journal else JOURNAL_SUFFIX))
        if not videos:
            return None
        _notify(view, "note", "loading the model")
        vlm = load_model()
        from scissor_cli.pipeline import resolve_profile

        resolved = resolve_profile(vlm, profile)
        t_work = time.perf_counter()
        runner = _Runner(vlm, resolved, batch_size, emit, sweep, prompt, journal.started if journal else None,
                         cache_dir)  # fmt: skip
        videos = runner.refuse_long_prompts(videos, by_video)
        # also on Ctrl-C, the block's end stops the workers and their ffmpeg children
        with decoding_ahead(videos, resolved, decode_workers, vlm, runner.cache) as runner.prefetch:
            for i, video in enumerate(videos, 1):
                prefix = f"[{i}/{len(videos)}] {os.path.basename(video)}"
                _notify(view, "status", prefix)
                runner.add_video(video, by_video[video], lambda text, p=prefix: _notify(view, "status", f"{p}: {text}"))
            runner.flush()
        return time.perf_counter() - t_work
    finally:
        if fd is not None:
            os.close(fd)


def _merge_parts(output: str) -> list[_Record]:
    """Fold part files into ``output`` (one record per job), remove them; returns the output's final records."""
    parts = _part_files(output)
    records = _read_records(output, truncate_partial=True)
    merged = records + [r for p in parts for r in _read_records(p)]
    final = _final_records(merged)
    if len(final) != len(records) or any(a is not b for a, b in zip(final, records, strict=False)):
        _write_atomic(output, b"".join(r.raw for r in final))
    for p in parts:
        os.remove(p)
        _remove_stale_lock(p)
    return final

"""Batch mode: many (video, question) jobs with the model loaded once, streamed to a resumable JSONL file.

    jobs = jobs_from_paths(["videos/"], ["What is happening?"])      # scissor_cli.jobs; or jobs_from_manifest(...)
    summary = run_batch(lambda: load_model(profile.model), jobs, "results.jsonl", profile)

Output: one JSON line per job (``Answer.to_dict()`` plus ``id``, ``status``, the job's own fields, and the run's
``config`` with its ``config_hash``), written with one ``os.write`` of the whole line and ``fsync``'d as soon as the
job finishes. A job that fails records ``error`` and ``hint`` and the run goes on. ``output="-"`` streams the lines
to stdout instead (nothing to resume from).

Resume: a job is finished when the output holds a record with its ``id`` and ``status: "ok"``; those are skipped,
errored jobs are retried (after fixing a file, rerunning the command is the fix). One output holds one configuration:
before the model loads, every record's ``config`` must equal this run's (``run_config``: the settings that change an
answer), else ``OptionError`` names each differing setting. A trailing line without its newline (the process was
killed mid-write) is cut away on start. When a job ends up with several records (an error, then a retry), the file is
rewritten atomically at the end keeping one record per job: ok wins, else the latest.

Sweeps (``sweep=Sweep("retention", (1.0, 0.5, 0.1))``, the CLI's comma lists): one record per job and level, id
``<job id>@<axis>=<value>`` with a ``level`` field; every level of a video reuses its one decode + vision tower pass
(SCC runs per level). The levels are not part of ``config`` (``"sweep": <axis>`` is), so a rerun with more levels
resumes into the same output and runs only the missing (job, level) records; each resumed record's ``level`` is
checked instead.

Jobs about the same video share one decode + vision tower + SCC; up to ``batch_size`` questions (from one or
several videos) go through one ``generate`` call, which answers the same as one call per question (left padding).

Several processes (``torchrun`` / ``accelerate launch`` set RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT): every
rank reads the same output (+ part files) and computes the same pending list, a gloo barrier makes sure nobody
writes before everybody has read, and rank r answers the videos ``pending_videos[r::world_size]`` into
``<output>.part-<r>-of-<world>``. After a second barrier rank 0 merges every part file into the output and removes
them. Part files left by a killed run count as finished work on the next start and are merged at its end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

from scissor_cli.errors import Interrupted, ManifestError, OptionError, ScissorError
from scissor_cli.jobs import Job, derive_id, jobs_from_manifest, jobs_from_paths
from scissor_cli.options import Profile
from scissor_cli.prefetch import check_decode_workers, decoding_ahead
from scissor_cli.scoring import (
    GROUP_FIELDS,
    PROMPT_PRESETS,
    SWEEP_AXES,
    build_prompt,
    level_text,
    prompt_template,
    score,
    summarize,
)

if TYPE_CHECKING:
    from scissor_cli.model import VisionLanguageModel
    from scissor_cli.pipeline import CompressedVideo, EncodedVideo

__all__ = [  # the job readers are re-exported: `from scissor_cli.batch import jobs_from_manifest, run_batch`
    "BatchSummary", "BatchView", "Job", "Sweep", "config_hash", "derive_id", "jobs_from_manifest", "jobs_from_paths",
    "parse_levels", "part_path", "run_batch", "run_config", "shard_device", "summary_path_for",
]  # fmt: skip

STDOUT = "-"  # --output - : JSONL on stdout
DEBUG_HINT = "rerun with SCISSOR_DEBUG=1 to record the traceback in the output, and report it if it is a bug"
BARRIER_TIMEOUT_S = float(os.environ.get("SCISSOR_BATCH_BARRIER_S", 6 * 3600))  # how long ranks wait for each other
# Profile fields that do not change an answer, left out of a run's config: where it runs (device), how the weights
# are fetched, and the feature cache. The dtype as set ("auto") is left out too: the config holds the resolved one.
NOT_CONFIG = frozenset({"name", "description", "model.device", "model.dtype", "model.offline", "model.cache",
                        "model.allow_pickle"})  # fmt: skip
TABLE_SUFFIXES = (".csv", ".tsv")


# ------------------------------------------------------------------------------------------------------- sweeps
@dataclass(frozen=True)
class Sweep:
    """Several levels of one setting in one run: ``axis`` is retention (1 = uncompressed), tokens or tau."""

    axis: str
    values: tuple[float | int, ...]

    def level(self, value: float | int) -> dict[str, float | int]:
        return {self.axis: int(value) if self.axis == "tokens" else float(value)}

    def levels(self) -> list[dict[str, float | int]]:
        return [self.level(v) for v in self.values]

    def profile_for(self, profile: Profile, value: float | int) -> Profile:
        """``profile`` at one level, by the flags' rule: a retention or token level replaces any budget and tau
        (retention 1: compression off); a tau level sets the threshold and drops any budget. Always validated."""
        from scissor_cli.options import validate

        c = profile.compression
        if self.axis == "retention":
            off = value == 1  # 1: every token, the model's own path (not SCC with a no-op budget)
            c = replace(c, enabled=not off, retention=None if off else float(value), tokens=None, tau=None)
        elif self.axis == "tokens":
            c = replace(c, enabled=True, retention=None, tokens=int(value), tau=None)
        else:
            c = replace(c, enabled=True, tau=float(value), retention=None, tokens=None)
        return validate(replace(profile, compression=c))

    def base_profile(self, profile: Profile) -> Profile:
        """What the run's ``config`` is made from: the profile with the swept setting left unset, so that one
        output holds every level of the sweep (each record's ``level`` says which)."""
        c = profile.compression
        if self.axis == "tau":
            c = replace(c, enabled=True, tau=None)
        else:
            c = replace(c, enabled=True, retention=None, tokens=None)
        return replace(profile, compression=c)


def parse_levels(flag: str, text: str | None) -> list[float | int] | None:
    """``"1,0.5,0.1"`` -> ``[1.0, 0.5, 0.1]`` (``--tokens``: integers); None for None. Repeats are dropped,
    the order is kept. Raises OptionError naming ``flag`` for anything that is not such a list."""
    if text is None:
        return None
    kind = int if flag == "--tokens" else float
    parts = [p.strip() for p in str(text).split(",")]
    example = "--tokens 1000,500,200" if kind is int else f"{flag} 1,0.5,0.35,0.1,0.05"
    if not parts or any(not p for p in parts):
        raise OptionError(f"{flag} {text!r} has an empty value", hint=f"give a number or a comma list: {example}")
    values: list[float | int] = []
    for part in parts:
        try:
            value = kind(part)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise OptionError(f"{flag}: {part!r} is not {what}", hint=f"e.g. {example}") from None
        if value not in values:
            values.append(value)
    return values


def sweep_from_flags(retention: str | None, tokens: str | None, tau: str | None) -> tuple[Sweep | None, dict]:
    """(the sweep, or None, and the single values left for the profile) from the batch command's three flags.
    Two lists at once is an OptionError (one sweep axis per run)."""
    given = {"retention": parse_levels("--retention", retention), "tokens": parse_levels("--tokens", tokens),
             "tau": parse_levels("--tau", tau)}  # fmt: skip
    lists = [axis for axis in SWEEP_AXES if given[axis] is not None and len(given[axis]) > 1]
    if len(lists) > 1:
        raise OptionError(
            f"{' and '.join('--' + a for a in lists)} are both lists: a run sweeps one setting",
            hint="sweep one of them and give the other one value, or run the sweeps into separate outputs",
        )
    singles = {axis: (v[0] if v is not None and axis not in lists else None) for axis, v in given.items()}
    if not lists:
        return None, singles
    axis = lists[0]
    return Sweep(axis, tuple(given[axis])), singles


# ------------------------------------------------------------------------------------------------------ config
def run_config(profile: Profile, sweep: Sweep | None = None, prompt: str | None = None) -> dict[str, Any]:
    """The settings that change an answer, as every record stores them: each profile section's fields (model and
    revision, frames/fps/window, tau/epsilon/budget, compression on/off, generation and seeds) minus ``NOT_CONFIG``,
    plus the multiple-choice prompt template. Built from the profile's fields generically, so a new option is part
    of the config unless it is listed in ``NOT_CONFIG``. "auto" values stay ``null`` (the model decides them),
    except ``model.dtype``: the dtype "auto" resolves to on this machine (``model.dtype_name``).

    A sweep's config is its ``base_profile``'s plus ``"sweep": <axis>``: the levels are not part of it (a rerun
    with more levels resumes into the same output), each record's ``level`` is. ``prompt``: the run's prompt preset
    (None: the default, whose template string is the one older outputs recorded)."""
    if sweep is not None:
        profile = sweep.base_profile(profile)
    config: dict[str, Any] = {}
    for section in dataclasses.fields(profile):
        value = getattr(profile, section.name)
        if not dataclasses.is_dataclass(value):
            if section.name not in NOT_CONFIG:
                config[section.name] = value
            continue
        config[section.name] = {
            f.name: getattr(value, f.name)
            for f in dataclasses.fields(value)
            if f"{section.name}.{f.name}" not in NOT_CONFIG
        }
    # the dtype it runs in, "auto" resolved (bf16 on one CPU, fp32 on another): a resumed run never mixes them
    from scissor_cli.model import dtype_name

    config["model"]["dtype"] = dtype_name(profile.model.device, profile.model.dtype)
    config["prompt_template"] = prompt_template(prompt)
    if sweep is not None:
        config["sweep"] = sweep.axis
    return config


def config_hash(config: dict[str, Any]) -> str:
    """First 12 hex digits of the SHA-256 of the config's canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def _flatten(config: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(config, dict):
        return {prefix: config}
    flat: dict[str, Any] = {}
    for key, value in config.items():
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) for every setting that differs; a missing key reads as "(absent)"."""
    a, b = _flatten(old), _flatten(new)
    missing = "(absent)"
    return [
        (k, a.get(k, missing), b.get(k, missing))
        for k in sorted(a.keys() | b.keys())
        if a.get(k, missing) != b.get(k, missing)
    ]


def _shown(value: Any) -> str:
    return value if value == "(absent)" else json.dumps(value, ensure_ascii=False, default=str)


def _check_resume(output: str, found: dict[str | None, tuple[dict | None, int]], config: dict, digest: str) -> None:
    """Refuse to resume into an output made with other settings (or by a scissor that did not record them)."""
    n_legacy = found.get(None, (None, 0))[1]
    if n_legacy:
        raise OptionError(
            f"{output} has {n_legacy} record{'s' if n_legacy != 1 else ''} without a 'config' (written by an older "
            "scissor): cannot tell whether they were made with these settings",
            hint=f"pass --overwrite to start {output} again, or write to a new file with -o",
        )
    for other, (old, n) in found.items():
        if other == digest or other is None:
            continue
        diffs = config_diff(old or {}, config)
        if not diffs:  # the same settings hashed by another scissor version's rules
            continue
        changes = "; ".join(f"{k}: {_shown(a)} in the output, {_shown(b)} now" for k, a, b in diffs)
        raise OptionError(
            f"{output} was made with other settings ({n} record{'s' if n != 1 else ''}, config {other}): {changes}",
            hint=f"one output holds one configuration: write to a new file with -o, or pass --overwrite to replace "
            f"{output}",
        )


def _check_levels(output: str, records: Sequence[_Record], axis: str) -> None:
    """A sweep's config leaves its levels out, so each record's own ``level`` must say where it belongs."""
    for r in records:
        level = r.slim.get("level")
        if not (isinstance(level, dict) and list(level) == [axis] and isinstance(level[axis], (int, float))):
            raise OptionError(
                f"{output}: record {r.slim.get('id')!r} has level {level!r}, not a {axis} level of this sweep",
                hint=f"a sweep's records each carry their level; write to a new file with -o, or pass --overwrite "
                f"to replace {output}",
            )


# -------------------------------------------------------------------------------------------------- output file
@dataclass
class _Record:
    key: str
    ok: bool
    raw: bytes  # the full line, newline included
    slim: dict  # only what summaries need; whole records of big runs would not fit comfortably in memory


def _record_key(record: dict) -> str:
    if record.get("id") is not None:
        return "id:" + str(record["id"])
    vq = f"vq:{record.get('video')}\n{record.get('question')}"
    return vq if not isinstance(record.get("level"), dict) else f"{vq}\n@{level_text(record['level'])}"


@dataclass(frozen=True)
class _Task:
    """One record to produce: a job, at one level of a sweep (``value`` None: not a sweep)."""

    job: Job
    id: str  # the record's id: the job's, or ``<job id>@<level>`` in a sweep
    value: float | int | None = None
    level: dict | None = None


def _tasks(jobs: Sequence[Job], sweep: Sweep | None) -> list[_Task]:
    if sweep is None:
        return [_Task(job, job.id) for job in jobs]
    return [
        _Task(job, f"{job.id}@{level_text(sweep.level(v))}", v, sweep.level(v)) for job in jobs for v in sweep.values
    ]


def _job_keys(task: _Task) -> tuple[str, str]:
    vq = f"vq:{task.job.video}\n{task.job.question}"
    return "id:" + task.id, vq if task.level is None else f"{vq}\n@{level_text(task.level)}"


SLIM_KEYS = (
    ("id", "status", "level", "video", "question", "expected", "correct", "retention", "config_hash")
    + ("tokens", "tflops", "timings_s", "batch_rows")
    + GROUP_FIELDS
)


def _read_records(
    path: str,
    truncate_partial: bool = False,
    keep_raw: bool = True,
    configs: dict[str | None, tuple[dict | None, int]] | None = None,
) -> list[_Record]:
    """Records of a JSONL output; a trailing line without its newline (killed mid-write) is ignored or cut away.
    ``keep_raw=False`` drops the lines themselves (enough to find finished jobs; a fraction of the memory).
    ``configs`` collects {config_hash: (config, n_records)} (key None: records without a config)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise ManifestError(f"cannot read {path}: {e}", hint="check the file's permissions") from e
    end = data.rfind(b"\n") + 1
    if end < len(data) and truncate_partial:
        os.truncate(path, end)
    records = []
    for n, raw in enumerate(data[:end].splitlines(keepends=True), 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            record = e
        if not isinstance(record, dict):
            raise ManifestError(
                f"{path} line {n} is not a JSON object: not a scissor batch output",
                hint="pass another --output, or --overwrite to replace this file",
            )
        if configs is not None:
            digest = record.get("config_hash") if isinstance(record.get("config"), dict) else None
            config, count = configs.get(digest, (record.get("config"), 0))
            configs[digest] = (config, count + 1)
        slim = {k: record[k] for k in SLIM_KEYS if k in record}
        records.append(_Record(_record_key(record), record.get("status") == "ok", raw if keep_raw else b"", slim))
    return records


def _final_records(records: Iterable[_Record]) -> list[_Record]:
    """One record per job, in order of first appearance: the latest ok one, else the latest error."""
    chosen: dict[str, _Record] = {}
    for r in records:
        if r.key not in chosen or r.ok or not chosen[r.key].ok:
            chosen[r.key] = r
    return list(chosen.values())


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    except OSError:
        return  # not supported everywhere (Windows)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomic(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path)


def _append_line(fd: int, record: dict) -> None:
    # one write of one whole line, then fsync: a kill leaves either the full line or a tail without "\n"
    data = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode()
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.fsync(fd)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT/SIGTERM wait (pending) until the block ends; then the handler runs as usual. Main thread, POSIX."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def part_path(output: str, rank: int, world_size: int) -> str:
    return f"{output}.part-{rank}-of-{world_size}"


def _part_files(output: str) -> list[str]:
    folder = os.path.dirname(os.path.abspath(output))
    prefix = os.path.basename(output) + ".part-"
    pattern = re.compile(re.escape(prefix) + r"(\d+)-of-(\d+)$")
    found = []
    for name in os.listdir(folder):
        m = pattern.match(name)
        if m:
            found.append((int(m.group(2)), int(m.group(1)), os.path.join(folder, name)))
    return [p for _, _, p in sorted(found)]


def summary_path_for(output: str) -> str:
    """results.jsonl -> results.summary.json"""
    root, ext = os.path.splitext(output)
    return (root if ext else output) + ".summary.json"


def _check_output(output: str) -> None:
    if output.lower().endswith(TABLE_SUFFIXES):
        raise ManifestError(
            f"--output {output}: batch writes JSONL (one record per line, resumable), not "
            f"{os.path.splitext(output)[1][1:].upper()}",
            hint="write results.jsonl, then convert, e.g. "
            "jq -r '[.id, .video, .question, .answer, .status] | @csv' results.jsonl > results.csv",
        )
    folder = os.path.dirname(os.path.abspath(output))
    if os.path.isdir(output):
        raise ManifestError(f"--output {output} is a folder", hint="give a file name, e.g. results.jsonl")
    if not os.path.isdir(folder):
        raise ManifestError(f"the output folder {folder} does not exist", hint=f"create it: mkdir -p {folder}")
    if not os.access(folder, os.W_OK) or (os.path.exists(output) and not os.access(output, os.W_OK)):
        raise ManifestError(f"cannot write {output}", hint="choose a writable location for --output")


def _file_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)  # follows symlinks; "./a" and "a" and hard links share (device, inode)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def _check_not_an_input(output: str, jobs: Sequence[Job], inputs: Sequence[str]) -> None:
    """Refuse an output (or its summary file) that is the manifest or one of the videos, whatever the spelling."""
    written = {}
    for path in (output, summary_path_for(output)):
        file_id = _file_id(path)
        if file_id is not None:
            written[file_id] = path
    if not written:
        return  # nothing there yet, so it cannot be an (existing) input
    candidates = [("the manifest", p) for p in inputs] + [
        ("a video of the job list", v) for v in dict.fromkeys(j.video for j in jobs)
    ]
    for what, path in candidates:
        hit = written.get(_file_id(path))
        if hit is not None:
            where = "--output" if hit == output else f"--output {output} writes its summary to"
            raise ManifestError(
                f"{where} {hit} is {what} ({path}): writing there would destroy it",
                hint="write results to another file, e.g. -o results.jsonl",
            )


# ------------------------------------------------------------------------------------------------------- summary
def _write_summary(output: str, totals: dict[str, Any], config: dict, digest: str) -> str:
    path = summary_path_for(output)
    data = {"output": output, **totals, "config_hash": digest, "config": config}
    _write_atomic(path, (json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n").encode())
    return path


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


# ----------------------------------------------------------------------------------------------- several ranks
def dist_env() -> tuple[int, int]:
    """(rank, world_size) from the launcher's environment; (0, 1) when run plainly."""
    try:
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError as e:
        raise OptionError(f"RANK / WORLD_SIZE are not integers: {e}", hint="launch with torchrun") from e
    if world < 1 or not 0 <= rank < world:
        raise OptionError(f"RANK={rank} WORLD_SIZE={world} is not a valid pair", hint="0 <= RANK < WORLD_SIZE")
    return rank, world


def shard_device(profile: Profile) -> Profile:
    """Under torchrun/accelerate with several visible GPUs and device auto/cuda: this process's GPU (LOCAL_RANK).
    Otherwise the profile unchanged (one GPU per process via CUDA_VISIBLE_DEVICES also works as is)."""
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1 or profile.model.device not in ("auto", "cuda"):
        return profile
    import torch

    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n_gpus <= 1:
        return profile
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", 0)))
    return replace(profile, model=replace(profile.model, device=f"cuda:{local_rank % n_gpus}"))


class _Group:
    """Barriers between ranks over a gloo process group (CPU, works next to NCCL); a no-op for one process."""

    def __init__(self, rank: int, world_size: int, timeout_s: float):
        self.world_size, self.timeout = world_size, timedelta(seconds=timeout_s)
        self.group, self.owned = None, False
        if world_size == 1:
            return
        import torch.distributed as dist

        if not dist.is_available():
            raise OptionError("this torch build has no torch.distributed", hint="run one process, or install torch")
        if dist.is_initialized():
            self.group = dist.new_group(backend="gloo", timeout=self.timeout)
            return
        if not (os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT")):
            raise OptionError(
                "WORLD_SIZE > 1 but MASTER_ADDR / MASTER_PORT are not set",
                hint="launch with torchrun or accelerate launch, or set MASTER_ADDR (rank 0's host) and MASTER_PORT",
            )
        dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=self.timeout)
        self.owned = True

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.monitored_barrier(group=self.group, timeout=self.timeout, wait_all_ranks=True)

    def close(self) -> None:
        if self.owned:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.owned = False


# ---------------------------------------------------------------------------------------------------------- run
@dataclass
class _Row:
    task: _Task
    encoded: EncodedVideo
    compressed: CompressedVideo
    profile: Profile  # the level's (resolved) profile
    prompt: str
    share_s: float  # this job's share of the video's decode + vision + SCC wall time

    @property
    def job(self) -> Job:
        return self.task.job


def _base_record(task: _Task) -> dict[str, Any]:
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


def _error_record(task: _Task, e: Exception) -> dict[str, Any]:
    job = task.job
    record = _base_record(task)
    record["status"] = "error"
    if isinstance(e, ScissorError):
        record.update(error=e.message, error_type=type(e).__name__, hint=e.hint)
    else:
        record.update(error=f"{type(e).__name__}: {e}", error_type=type(e).__name__, hint=DEBUG_HINT)
        if os.environ.get("SCISSOR_DEBUG", "").strip() not in ("", "0", "false", "no"):
            record["traceback"] = traceback.format_exc()
    if job.answer is not None:
        record["correct"] = False
    record.update(job.extra)
    return record


def _ok_record(task: _Task, answer: Any, prompt: str, n_rows: int) -> dict[str, Any]:
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
    return record


class _Runner:
    """Encodes each video once, queues its questions, and sends up to ``batch_size`` rows per ``generate``."""

    def __init__(
        self,
        vlm: VisionLanguageModel,
        profile: Profile,
        batch_size: int,
        emit: Callable[[dict], None],
        sweep: Sweep | None = None,
        prompt: str | None = None,
    ):
        from scissor_cli import pipeline

        self.vlm, self.profile, self.batch_size, self.emit = vlm, profile, batch_size, emit
        self.sweep, self.prompt = sweep, prompt
        # each level's profile, built once (the model's resolved tau/epsilon/seed shared by every level)
        self.level_profiles = {v: sweep.profile_for(profile, v) for v in sweep.values} if sweep else {None: profile}
        self.pipeline = pipeline
        self.cache = None
        if profile.model.cache:
            from scissor_cli.cache import FeatureCache

            self.cache = FeatureCache()
        self.queue: list[_Row] = []
        self.prefetch: Any = None  # a prefetch.Prefetcher decoding the next videos in worker processes, or None

    def add_video(self, video: str, tasks: list[_Task], on_status: Callable[[str], None]) -> None:
        """One decode + vision tower pass for every task of ``video``, then SCC once per level; the rows are
        queued level by level (a level's rows share one ``CompressedVideo``), so a video's levels go through
        ``generate`` together when ``batch_size`` allows."""
        t0 = time.perf_counter()
        try:
            decoded = self.prefetch.take(video) if self.prefetch is not None else None  # raises its decode error
            encoded = self.pipeline.encode_video(
                self.vlm, video, self.profile, on_status=on_status, cache=self.cache, decoded=decoded
            )
        except Exception as e:
            for task in tasks:
                self.emit(_error_record(task, e))
            return
        rows: list[tuple[_Task, CompressedVideo, Profile]] = []
        if getattr(self.vlm, "on_step", None) is not None:
            self.vlm.on_step()  # SCC's matmuls take the threads the decoders leave now, not at the last vision chunk
        for value, profile in self.level_profiles.items():
            level_tasks = [t for t in tasks if t.value == value]
            if not level_tasks:
                continue
            try:
                compressed = self.pipeline.compress_video(encoded, profile)
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
            self.queue.append(_Row(task, encoded, compressed, profile, prompt, share_s))
        while len(self.queue) >= self.batch_size:
            self.flush(self.batch_size)

    def flush(self, n: int | None = None) -> None:
        n = len(self.queue) if n is None else n
        rows, self.queue = self.queue[:n], self.queue[n:]
        if len(rows) == 1:
            self._generate_one(rows[0])
        elif rows:
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
        try:
            generated = self.vlm.generate([(row.compressed.tokens, row.prompt)], row.profile.generation)
        except Exception as e:
            self.emit(_error_record(row.task, e))
            return
        self._emit_rows([row], generated)

    def _emit_rows(self, rows: list[_Row], generated: Any) -> None:
        # make_answers takes the rows of one video at one level with their slice of the batch's outputs
        start = 0
        while start < len(rows):
            stop = start
            while stop < len(rows) and rows[stop].compressed is rows[start].compressed:
                stop += 1
            part = replace(
                generated,
                texts=generated.texts[start:stop],
                n_prompt_tokens=list(generated.n_prompt_tokens[start:stop]),
                **{k: list(getattr(generated, k)[start:stop]) for k in ("n_new_tokens", "token_ids", "n_prefill_tokens")
                   if len(getattr(generated, k, []) or []) == len(rows)},
            )  # fmt: skip
            video_rows = rows[start:stop]
            try:
                answers = self.pipeline.make_answers(
                    self.vlm, video_rows[0].encoded, video_rows[0].compressed,
                    [r.job.question for r in video_rows], part, video_rows[0].profile,
                )  # fmt: skip
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
    that do not name their own."""
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

    group = _Group(rank, world_size, BARRIER_TIMEOUT_S)
    try:
        return _run(load_model, tasks, output, profile, overwrite, batch_size, view, rank, world_size, group, sweep,
                    prompt, decode_workers)  # fmt: skip
    finally:
        group.close()


def _write_stdout(record: dict) -> None:
    from scissor_cli.render import StdoutClosed

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


def _run(
    load_model: Callable[[], VisionLanguageModel],
    jobs: list[_Task],
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
) -> BatchSummary:
    to_stdout = output == STDOUT
    target = output if world_size == 1 else part_path(output, rank, world_size)
    config = run_config(profile, sweep, prompt)
    digest = config_hash(config)
    # Phase 1: every rank reads the same files (nobody writes records before the barrier).
    existing: list[_Record] = []
    if to_stdout:
        pass
    elif overwrite:
        if rank == 0:
            for path in [output, summary_path_for(output), *_part_files(output)]:
                if os.path.exists(path) and path not in {part_path(output, r, world_size) for r in range(world_size)}:
                    os.remove(path)
        open(target, "wb").close()  # each rank empties its own part (or the output when alone)
    else:
        found: dict[str | None, tuple[dict | None, int]] = {}
        existing = [r for p in [output, *_part_files(output)] for r in _read_records(p, keep_raw=False, configs=found)]
        _check_resume(output, found, config, digest)  # before anything is written or loaded
        if sweep is not None:
            _check_levels(output, existing, sweep.axis)
        if world_size == 1:
            _merge_parts(output)  # leftovers of a killed multi-process run
        _read_records(target, truncate_partial=True, keep_raw=False)  # only this rank writes `target`
    finished = {r.key for r in existing if r.ok}
    pending = [j for j in jobs if not any(k in finished for k in _job_keys(j))]
    n_skipped = len(jobs) - len(pending)

    by_video: dict[str, list[_Task]] = {}
    for task in pending:
        by_video.setdefault(task.job.video, []).append(task)
    # whole videos per rank, so one rank encodes each video once
    my_videos = list(by_video)[rank::world_size]
    my_jobs = [job for v in my_videos for job in by_video[v]]
    group.barrier()

    _notify(view, "start", len(my_jobs) + n_skipped, n_skipped)
    my_records: list[dict] = []
    t_work = None
    try:
        if my_jobs:
            t_work = _answer(load_model, my_videos, by_video, target, profile, config, digest, batch_size, view,
                             my_records, sweep, prompt, decode_workers)  # fmt: skip
        group.barrier()  # every rank has written its part
    except KeyboardInterrupt:
        n_ok = sum(1 for r in my_records if r["status"] == "ok")
        n_written = len(my_records)
        if not to_stdout:
            # Ctrl-C can land after a record's line was written but before it was counted (during its fsync):
            # count what the file holds, the same way the next run will
            done = {r.key for r in _read_records(target, keep_raw=False) if r.ok}
            n_ok = max(n_ok, sum(1 for t in my_jobs if any(k in done for k in _job_keys(t))))
            n_written = max(n_written, n_ok)
        raise _interrupted(output, len(jobs), n_skipped + n_ok, n_written) from None

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
    final = _merge_parts(output)
    if world_size > 1:  # count every rank's work of this run
        pending_keys = {_job_keys(j)[0] for j in pending}
        run_records = [r.slim for r in final if r.key in pending_keys]
        summary.n_done = sum(1 for r in run_records if r.get("status") == "ok")
        summary.n_failed = len(run_records) - summary.n_done
    summary.totals = summarize([r.slim for r in final])
    summary.summary_path = _write_summary(output, summary.totals, config, digest)
    return summary


def _answer(
    load_model: Callable[[], VisionLanguageModel],
    videos: list[str],
    by_video: dict[str, list[_Task]],
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
) -> float:
    """Load the model, answer ``videos``' jobs and write their records to ``target``; returns the work's wall time
    (model load excluded). ``records`` receives each record as it is written (for counts after an interrupt)."""
    _notify(view, "note", "loading the model")
    vlm = load_model()
    from scissor_cli.pipeline import resolve_profile

    resolved = resolve_profile(vlm, profile)
    fd = None if target == STDOUT else os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:

        def emit(record: dict) -> None:
            record.update(config_hash=digest, config=config)
            with _signals_held():  # a Ctrl-C landing in the fsync must not leave a written record uncounted
                if fd is None:
                    _write_stdout(record)
                else:
                    _append_line(fd, record)
                records.append(record)
            _notify(view, "job_done", record)

        t_work = time.perf_counter()
        runner = _Runner(vlm, resolved, batch_size, emit, sweep, prompt)
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
    return final

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

Safety (README "Reliability"): a run holds ``flock`` on ``<output>.lock`` (ranks > 0: on their part file's) from
before it reads until it returns, so a second run on the output stops with ManifestError naming the holder's PID.
``<output>.journal`` names the jobs in flight before each step (``_Journal``); a job in flight when two runs died
gets an error record instead of a third try. A failed write (ENOSPC, EROFS, ...) cuts the file back to whole
records and raises ManifestError saying how many jobs are saved; ``--overwrite`` replaces only scissor's own files.
Error records copy at most ``MAX_ERROR_FIELD`` characters of each text.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import os
import re
import signal
import sys
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

from scissor_cli.errors import Interrupted, ManifestError, OptionError, ScissorError, shorten
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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_atomic(path: str, data: bytes) -> None:
    """Replace ``path`` by ``data`` through ``<path>.tmp-<pid>``, which is removed if anything goes wrong (a full
    disk, a Ctrl-C): the old file stays whole and no temporary file is left."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path)


def _append_line(fd: int, record: dict) -> None:
    # one write of one whole line, then fsync: a kill leaves either the full line or a tail without "\n"; a write
    # that fails (full disk) is cut back to the last whole line, so the file holds only whole records
    data = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode()
    size = os.lseek(fd, 0, os.SEEK_END)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, size)
        raise


class _WriteError(Exception):
    """An OSError writing ``path`` (a full disk, a read-only or failing one); ``_run`` turns it into one line."""

    def __init__(self, path: str, error: OSError):
        super().__init__(f"{path}: {error}")
        self.path, self.error = path, error


@contextlib.contextmanager
def _writing(path: str) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        raise _WriteError(path, e) from e


def _mount_point(path: str) -> str:
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.ismount(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    return folder


def _write_failed(e: _WriteError, saved: str) -> ManifestError:
    """One line for a write that failed: what happened where, how many records are safe, what to do."""
    code, where = e.error.errno, _mount_point(e.path)
    again = "then rerun the same command to continue"
    if code == errno.ENOSPC:
        return ManifestError(f"no space left on {where} ({saved})", hint=f"free some space, {again}")
    if code == getattr(errno, "EDQUOT", None):
        return ManifestError(f"disk quota exceeded on {where} ({saved})", hint=f"free some space, {again}")
    if code == errno.EROFS:
        return ManifestError(
            f"{where} is a read-only file system ({saved})",
            hint=f"write to another location with -o, or remount it read-write and {again}",
        )
    if code == errno.EIO:
        return ManifestError(
            f"the disk of {e.path} reported an I/O error ({saved})", hint=f"check the disk (dmesg), {again}"
        )
    return ManifestError(
        f"cannot write {e.path}: {e.error.strerror or e.error} ({saved})", hint=f"fix the cause, {again}"
    )


# ------------------------------------------------------------------------------------------ one writer per file
LOCK_SUFFIX = ".lock"


def _lock_pid(fd: int) -> str:
    """The PID the holder wrote into the lock file (it writes it right after locking: wait a moment for it)."""
    for _ in range(20):
        with contextlib.suppress(OSError):
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            if text:
                return text
        time.sleep(0.025)
    return "unknown"


def _lock(path: str, output: str) -> tuple[int, str] | None:
    """An exclusive ``flock`` on ``<path>.lock``, held until ``_unlock`` (the kernel drops it if the process dies,
    kill -9 included). Another holder: ManifestError naming its PID. None where the OS or the filesystem has no
    flock (Windows, some network mounts): the run goes on unlocked, as before."""
    try:
        import fcntl
    except ImportError:
        return None
    lock_path = path + LOCK_SUFFIX
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ManifestError(
                f"cannot create the lock file {lock_path}: {e.strerror}", hint="choose a writable location for --output"
            ) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _lock_pid(fd)
            os.close(fd)
            raise ManifestError(
                f"{output} is being written by another scissor batch run (PID {pid}): two runs on one output would "
                "lose each other's records",
                hint="wait for that run to finish (or stop it), or write to another file with -o",
            ) from None
        except OSError:
            os.close(fd)
            return None
        # a run that was ending may have removed the file between our open and flock: lock the file at the path
        try:
            st, now = os.fstat(fd), os.stat(lock_path)
            if (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd, lock_path


def _unlock(lock: tuple[int, str] | None) -> None:
    if lock is None:
        return
    fd, lock_path = lock
    with contextlib.suppress(OSError):
        os.unlink(lock_path)  # while still holding it: a run waiting on this inode sees it gone and retries
    os.close(fd)


def _remove_stale_lock(path: str) -> None:
    """The lock file of a part written by a killed run: removed if nobody holds it."""
    lock = None
    with contextlib.suppress(ManifestError):
        if os.path.exists(path + LOCK_SUFFIX):
            lock = _lock(path, path)
    _unlock(lock)


# --------------------------------------------------------------------------------------- jobs that kill the run
JOURNAL_SUFFIX = ".journal"
MAX_CRASHES = 2  # a job in flight when this many runs died is not started again


def journal_path(output: str) -> str:
    """results.jsonl -> results.jsonl.journal: which jobs each run had in flight (see ``_Journal``)."""
    return output + JOURNAL_SUFFIX


class _Journal:
    """``<output>.journal``: before each step that may kill the process (a video's decode + vision tower + SCC, one
    ``generate`` call), one fsync'd line ``{"run": <token>, "ids": [the jobs in flight]}``; a run that ends in any
    way but death (finished, interrupted, stopped by an error) adds ``{"run": <token>, "end": true}``. So a run
    without its end line died (the OOM killer, kill -9), and its last line names the jobs it died on."""

    def __init__(self, path: str, rank: int):
        self.path, self.fd = path, None
        self.token = f"{os.getpid()}-{rank}-{time.time_ns()}"

    def _append(self, entry: dict) -> None:
        data = (json.dumps({"run": self.token, **entry}, ensure_ascii=False) + "\n").encode()
        with _writing(self.path), _signals_held():  # whole lines only: a torn one would swallow the next
            if self.fd is None:
                self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            _write_all(self.fd, data)
            os.fsync(self.fd)

    def started(self, ids: list[str]) -> None:
        self._append({"ids": ids})

    def ended(self) -> None:
        try:
            if self.fd is not None:  # nothing in flight was ever written: nothing to close
                self._append({"end": True})
        except _WriteError:
            pass  # a full disk: this run's last jobs count as one death each, a rerun retries them
        finally:
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None


def _read_journal(path: str) -> list[dict]:
    try:
        with open(path, "rb") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise ManifestError(f"cannot read {path}: {e}", hint="check the file's permissions") from e
    entries = []
    for raw in lines:
        try:
            entry = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # a torn line of a killed run
        if isinstance(entry, dict) and isinstance(entry.get("run"), str):
            entries.append(entry)
    return entries


def _deaths(entries: list[dict]) -> dict[str, list[str]]:
    """{run token: the jobs it had in flight when it died} for every run without an end line."""
    last: dict[str, list[str]] = {}
    ended: set[str] = set()
    for entry in entries:
        if entry.get("end"):
            ended.add(entry["run"])
        elif isinstance(entry.get("ids"), list):
            last[entry["run"]] = [str(i) for i in entry["ids"]]
    return {run: ids for run, ids in last.items() if run not in ended}


def _crash_counts(path: str) -> Counter[str]:
    """How many runs died with each job in flight."""
    return Counter(i for ids in _deaths(_read_journal(path)).values() for i in set(ids))


def _compact_journal(path: str, finished: set[str]) -> None:
    """After a run: keep one line per run that died, naming only its jobs that are still not done (their count
    is what stops a third attempt); nothing left: the file goes."""
    deaths = {run: [i for i in ids if i not in finished] for run, ids in _deaths(_read_journal(path)).items()}
    lines = [json.dumps({"run": run, "ids": ids}, ensure_ascii=False) + "\n" for run, ids in deaths.items() if ids]
    if lines:
        _write_atomic(path, "".join(lines).encode())
    elif os.path.exists(path):
        os.remove(path)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT/SIGTERM/SIGHUP wait (pending) until the block ends; then the handler runs as usual. Main thread,
    POSIX."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
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


def _not_a_batch_output(path: str, summary: bool = False) -> str | None:
    """Why ``path`` is not something ``--overwrite`` may replace (None: missing, empty, or scissor's own file):
    every whole line a record with ``status`` and ``id`` or ``video``; a summary, scissor's summary object."""
    try:
        with open(path, "rb") as f:
            if summary:
                try:
                    data = json.loads(f.read())
                except (json.JSONDecodeError, UnicodeDecodeError):
                    data = None
                if isinstance(data, dict) and "config_hash" in data and "n_records" in data:
                    return None
                return "not the summary of a scissor batch output"
            for n, raw in enumerate(f, 1):
                if not raw.endswith(b"\n") or not raw.strip():
                    continue  # a run killed mid-line leaves a tail without its newline
                try:
                    record = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    record = None
                if not (isinstance(record, dict) and record.get("status") in ("ok", "error")
                        and ("id" in record or "video" in record)):  # fmt: skip
                    return f"line {n} is not a scissor batch record"
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"it cannot be read: {e.strerror or e}"
    return None


def _check_overwritable(paths: Iterable[tuple[str, bool]]) -> None:
    """--overwrite replaces scissor's own files only: anything else is refused before a byte is removed."""
    for path, summary in paths:
        reason = _not_a_batch_output(path, summary)
        if reason is not None:
            raise ManifestError(
                f"--overwrite would replace {path}, which is not a scissor batch output ({reason})",
                hint=f"check the -o path; to replace that file anyway, delete it yourself first (rm {path})",
            )


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
        error, hint = e.message, e.hint
    else:
        error, hint = f"{type(e).__name__}: {e}", DEBUG_HINT
    _capped(record, MAX_ERROR_FIELD)
    record.update(error=shorten(error, MAX_ERROR_TEXT), error_type=type(e).__name__)
    record["hint"] = None if hint is None else shorten(hint, MAX_ERROR_TEXT)
    if not isinstance(e, ScissorError) and os.environ.get("SCISSOR_DEBUG", "").strip() not in ("", "0", "false", "no"):
        record["traceback"] = traceback.format_exc()
    if job.answer is not None:
        record["correct"] = False
    record.update(_capped(dict(job.extra), MAX_ERROR_FIELD))
    return record


def _killed_record(task: _Task, n_deaths: int, journal: str) -> dict[str, Any]:
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
    return _capped(record, MAX_FIELD)


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
        on_start: Callable[[list[str]], None] | None = None,
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

            self.cache = FeatureCache()
        self.queue: list[_Row] = []
        self.prefetch: Any = None  # a prefetch.Prefetcher decoding the next videos in worker processes, or None

    def refuse_long_prompts(self, videos: list[str], by_video: dict[str, list[_Task]]) -> list[str]:
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

    def add_video(self, video: str, tasks: list[_Task], on_status: Callable[[str], None]) -> None:
        """One decode + vision tower pass for every task of ``video``, then SCC once per level; the rows are
        queued level by level (a level's rows share one ``CompressedVideo``), so a video's levels go through
        ``generate`` together when ``batch_size`` allows."""
        t0 = time.perf_counter()
        self.on_start([t.id for t in tasks])
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

    # one writer per file: a run locks the output (rank 0 of several: also the merge into it), each other rank
    # its part file; a second run on the same output stops here, before it reads, writes or loads anything
    lock = None if output == STDOUT else _lock(output if rank == 0 else part_path(output, rank, world_size), output)
    try:
        group = _Group(rank, world_size, BARRIER_TIMEOUT_S)
        try:
            return _run(load_model, tasks, output, profile, overwrite, batch_size, view, rank, world_size, group,
                        sweep, prompt, decode_workers)  # fmt: skip
        finally:
            group.close()
    finally:
        _unlock(lock)


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


def _saved_counts(target: str, my_jobs: Sequence[_Task], my_records: list[dict], to_stdout: bool) -> tuple[int, int]:
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

    by_video: dict[str, list[_Task]] = {}
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
                                 my_records, sweep, prompt, decode_workers, my_killed, crashes, journal)  # fmt: skip
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
    killed: Sequence[_Task] = (),
    crashes: Counter[str] | None = None,
    journal: _Journal | None = None,
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
        runner = _Runner(vlm, resolved, batch_size, emit, sweep, prompt, journal.started if journal else None)
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

"""Batch safety (README "Reliability"): the ``flock`` on ``<output>.lock``, the death journal
(``<output>.journal``), write errors cut back to whole records, the part and summary paths, and which files a run
may write over.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from scissor_cli.batch.records import _write_all, _write_atomic
from scissor_cli.errors import ManifestError
from scissor_cli.jobs import Job

TABLE_SUFFIXES = (".csv", ".tsv")


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

"""Batch records: the run's ``config`` and ``config_hash``, resume keys, reading an output's JSONL records (cutting
a torn last line), and the writes (one ``os.write`` per line, ``fsync``, atomic rewrite).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from scissor_cli.choices import prompt_template
from scissor_cli.errors import ManifestError, OptionError
from scissor_cli.jobs import Job
from scissor_cli.options import Profile
from scissor_cli.scoring import GROUP_FIELDS
from scissor_cli.sweep import Sweep, level_text

STDOUT = "-"  # --output - : JSONL on stdout
DEBUG_HINT = "rerun with SCISSOR_DEBUG=1 to record the traceback in the output, and report it if it is a bug"
# Profile fields that do not change an answer, left out of a run's config: where it runs (device), how the weights
# are fetched, and the feature cache. The dtype as set ("auto") is left out too: the config holds the resolved one.
# vLLM's knobs change where and how fast, not what is answered (model.engine does: it is part of the config,
# but for the default "hf", so outputs written before engines existed still resume)
NOT_CONFIG = frozenset({"name", "description", "model.device", "model.dtype", "model.offline", "model.cache",
                        "model.allow_pickle", "model.tensor_parallel_size", "model.gpu_memory_utilization",
                        "model.max_model_len"})  # fmt: skip
# ------------------------------------------------------------------------------------------------------ config


def run_config(profile: Profile, sweep: Sweep | None = None, prompt: str | None = None) -> dict[str, Any]:
    """The settings that change an answer, as every record stores them: each profile section's fields (model and
    revision, frames/fps/window, tau/epsilon/budget, compression on/off, generation and seeds) minus ``NOT_CONFIG``,
    plus the multiple-choice prompt template. Built from the profile's fields generically, so a new option is part
    of the config unless it is listed in ``NOT_CONFIG``. "auto" values stay ``null`` (the model decides them),
    except ``model.dtype``: the dtype "auto" resolves to on this machine (``devices.dtype_name``).

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
    from scissor_cli.devices import dtype_name

    config["model"]["dtype"] = dtype_name(profile.model.device, profile.model.dtype)
    if config["model"].get("engine") == "hf":  # the default: the config (and hash) outputs made before engines had
        del config["model"]["engine"]
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
class RecordTask:
    """One record to produce: a job, at one level of a sweep (``value`` None: not a sweep)."""

    job: Job
    id: str  # the record's id: the job's, or ``<job id>@<level>`` in a sweep
    value: float | int | None = None
    level: dict | None = None


def _tasks(jobs: Sequence[Job], sweep: Sweep | None) -> list[RecordTask]:
    if sweep is None:
        return [RecordTask(job, job.id) for job in jobs]
    return [
        RecordTask(job, f"{job.id}@{level_text(sweep.level(v))}", v, sweep.level(v))
        for job in jobs
        for v in sweep.values
    ]


def _job_keys(task: RecordTask) -> tuple[str, str]:
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

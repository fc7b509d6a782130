"""Batch mode: many (video, question) jobs with the model loaded once, streamed to a resumable JSONL file.

    jobs = jobs_from_paths(["videos/"], "What is happening?")      # or jobs_from_manifest("jobs.csv")
    summary = run_batch(lambda: load_model(profile.model), jobs, "results.jsonl", profile)

Output: one JSON line per job (``Answer.to_dict()`` plus ``id``, ``status`` and the job's own fields), written with
one ``os.write`` of the whole line and ``fsync``'d as soon as the job finishes. A job that fails records ``error``
and ``hint`` and the run goes on.

Resume: a job is finished when the output holds a record with its ``id`` and ``status: "ok"``; those are skipped,
errored jobs are retried (after fixing a file, rerunning the command is the fix). A trailing line without its
newline (the process was killed mid-write) is cut away on start. When a job ends up with several records (an error,
then a retry), the file is rewritten atomically at the end keeping one record per job: ok wins, else the latest.

Jobs about the same video share one decode + vision tower + SCC; up to ``batch_size`` questions (from one or
several videos) go through one ``generate`` call, which answers the same as one call per question (left padding).

Several processes (``torchrun`` / ``accelerate launch`` set RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT): every
rank reads the same output (+ part files) and computes the same pending list, a gloo barrier makes sure nobody
writes before everybody has read, and rank r answers the videos ``pending_videos[r::world_size]`` into
``<output>.part-<r>-of-<world>``. After a second barrier rank 0 merges every part file into the output and removes
them. Part files left by a killed run count as finished work on the next start and are merged at its end.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import json
import math
import os
import re
import string
import time
import traceback
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from scissor_cli.errors import ManifestError, OptionError, ScissorError
from scissor_cli.options import Profile

if TYPE_CHECKING:
    from scissor_cli.model import VisionLanguageModel
    from scissor_cli.pipeline import CompressedVideo, EncodedVideo

LETTERS = string.ascii_uppercase
# lmms-eval's post prompt for LLaVA-OneVision multiple-choice video benchmarks (Video-MME, NExT-QA, ...)
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
GROUP_FIELDS = ("task", "category")  # manifest fields accuracy is broken down by
MANIFEST_FIELDS = ("id", "video", "question", "options", "answer")
# Record fields a manifest's extra column may not overwrite.
RESERVED = frozenset(
    {"status", "error", "error_type", "hint", "traceback", "expected", "predicted", "correct", "prompt", "batch_rows"}
    | {"tokens", "retention", "tau", "tau_temporal", "epsilon", "frames", "timestamps", "timings_s", "tflops"}
    | {"model", "device", "dtype", "cache_hit", "note", "profile"}
)
DEBUG_HINT = "rerun with SCISSOR_DEBUG=1 to record the traceback in the output, and report it if it is a bug"
BARRIER_TIMEOUT_S = float(os.environ.get("SCISSOR_BATCH_BARRIER_S", 6 * 3600))  # how long ranks wait for each other


# ------------------------------------------------------------------------------------------------------------ jobs
@dataclass(frozen=True)
class Job:
    id: str  # unique within a run; the resume key
    video: str  # path (manifest-relative paths already resolved)
    question: str  # as asked; multiple choice adds the lettered options to the prompt
    options: tuple[str, ...] | None = None  # multiple-choice candidates, lettered A, B, ...
    answer: str | None = None  # expected answer: a letter or an option's text, or free text for exact match
    extra: dict = field(default_factory=dict)  # other manifest fields (task, category, ...), copied to the record


def derive_id(video: str, question: str, options: Sequence[str] | None = None) -> str:
    """``<video>#<8 hex>``: readable, and different questions about one video get different ids."""
    text = question if not options else question + "\x00" + "\x00".join(options)
    return f"{video}#{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def _glob_match(rel: str, name: str, pattern: str) -> bool:
    # '*' in fnmatch also crosses '/', so '*cat*' and 'sub/*.mp4' both do what people expect
    return fnmatch.fnmatch(rel, pattern) or fnmatch.fnmatch(name, pattern)


def jobs_from_paths(paths: Sequence[str], question: str, glob: str | None = None) -> list[Job]:
    """One job per video file under ``paths`` (folders searched recursively, hidden entries skipped), sorted."""
    from scissor_cli.video import VIDEO_EXTENSIONS

    if not question or not question.strip():
        raise ManifestError("the question is empty", hint='pass --question "What is happening in this video?"')
    found: set[str] = set()
    for given in paths:
        path = os.path.expanduser(given)
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                for name in files:
                    if name.startswith(".") or os.path.splitext(name)[1].lower() not in VIDEO_EXTENSIONS:
                        continue
                    full = os.path.join(root, name)
                    if glob and not _glob_match(os.path.relpath(full, path).replace(os.sep, "/"), name, glob):
                        continue
                    found.add(os.path.normpath(full))
        elif os.path.exists(path):
            # a file named explicitly is taken whatever its extension: a bad one fails as its own job
            if not glob or _glob_match(path.replace(os.sep, "/"), os.path.basename(path), glob):
                found.add(os.path.normpath(path))
        else:
            raise ManifestError(f"{given}: no such file or folder", hint="check the path (folders are searched too)")
    if not found:
        exts = " ".join(sorted(VIDEO_EXTENSIONS))
        raise ManifestError(
            f"no videos found in {', '.join(paths)}" + (f" matching {glob!r}" if glob else ""),
            hint=f"folder scans pick up files ending in {exts}" + ("; check --glob" if glob else ""),
        )
    return [Job(derive_id(v, question), v, question) for v in sorted(found)]


def _split_options(value: Any, bad: Callable[[str, str], None]) -> tuple[str, ...] | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    hint = 'options are a JSON list ["a cat", "a dog"] or, in CSV, "a cat|a dog"'
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                bad(f"options are not a valid JSON list ({e.msg})", hint)
        else:
            value = [part.strip() for part in text.split("|")]
    if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) and v != "" for v in value):
        bad("options must be a list of non-empty strings", hint)
    options = [str(v).strip() for v in value]
    if not 2 <= len(options) <= len(LETTERS):
        bad(f"{len(options)} options; multiple choice needs 2 to {len(LETTERS)}", hint)
    return strip_letter_labels(options)


def strip_letter_labels(options: Sequence[str]) -> tuple[str, ...]:
    """Drop "A. " / "(A) " / "A) " prefixes when every option carries its own letter (Video-MME style data)."""
    pattern = re.compile(r"^\(?([A-Z])[.):]\s*(.*)$", re.S)
    matches = [pattern.match(o) for o in options]
    if all(m and m.group(1) == LETTERS[i] and m.group(2).strip() for i, m in enumerate(matches)):
        return tuple(m.group(2).strip() for m in matches)
    return tuple(options)


def _job_from_row(row: dict, line: int, path: str, base: str, default_question: str | None) -> Job:
    def bad(message: str, hint: str) -> None:
        raise ManifestError(f"{path} line {line}: {message}", hint=hint)

    if None in row:  # csv.DictReader puts surplus cells under the key None
        bad("more cells than header columns", "quote cells that contain commas")
    video = row.get("video")
    if not isinstance(video, str) or not video.strip():
        bad("missing 'video'", "every row needs a video path (relative paths resolve against the manifest's folder)")
    question = row.get("question")
    if question in (None, "") and default_question:
        question = default_question
    if not isinstance(question, str) or not question.strip():
        bad("missing 'question'", "every row needs a question")
    options = _split_options(row.get("options"), bad)
    answer = row.get("answer")
    if answer == "":
        answer = None
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        answer = str(answer)
    if answer is not None and not isinstance(answer, str):
        bad(f"answer must be a string, not {type(answer).__name__}", "give the expected letter or text")
    if options and answer is not None and expected_letter(answer, options) is None:
        bad(
            f"answer {answer!r} is neither an option letter nor one of the options",
            f"use a letter A-{LETTERS[len(options) - 1]} or the exact text of an option",
        )
    video = video.strip()
    job_id = row.get("id")
    if job_id in (None, ""):
        job_id = derive_id(video, question, options)
    elif isinstance(job_id, (str, int)) and not isinstance(job_id, bool):
        job_id = str(job_id).strip()
    else:
        bad("id must be a string or an integer", "or leave it out: ids then derive from the video and question")
    extra = {}
    for key, value in row.items():
        if key in MANIFEST_FIELDS or value in (None, ""):
            continue
        if key in RESERVED:
            bad(f"field {key!r} is reserved for the output record", "rename that column")
        extra[key] = value
    resolved = os.path.expanduser(video)
    if not os.path.isabs(resolved):
        resolved = os.path.normpath(os.path.join(base, resolved))
    return Job(job_id, resolved, question, options, answer, extra)


def _manifest_rows(path: Path) -> Iterable[tuple[int, Any]]:
    """(line number, row) pairs; JSONL rows are whatever the line parses to, CSV rows are dicts of strings."""
    suffix = path.suffix.lower()
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            if suffix in (".jsonl", ".ndjson"):
                for n, text in enumerate(f, 1):
                    if not text.strip():
                        continue
                    try:
                        yield n, json.loads(text)
                    except json.JSONDecodeError as e:
                        raise ManifestError(
                            f"{path} line {n}: not valid JSON ({e.msg}, column {e.colno})",
                            hint='each line is one object: {"video": "a.mp4", "question": "..."}',
                        ) from e
            elif suffix == ".csv":
                reader = csv.DictReader(f)
                header = [h.strip() for h in (reader.fieldnames or [])]
                if "video" not in header:
                    raise ManifestError(
                        f"{path} line 1: the header has no 'video' column",
                        hint="the first row names the columns: video,question[,id,options,answer,...]",
                    )
                reader.fieldnames = header
                for row in reader:
                    yield reader.line_num, {k: (v.strip() if isinstance(v, str) else v) for k, v in row.items()}
            else:
                raise ManifestError(f"{path}: unknown manifest format {suffix!r}", hint="use a .jsonl or .csv file")
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ManifestError(f"cannot read manifest {path}: {e}", hint="a UTF-8 .jsonl or .csv file") from e


def jobs_from_manifest(path: str, default_question: str | None = None) -> list[Job]:
    """Jobs from a .jsonl / .csv manifest; every row is checked before any model work (ManifestError + line)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ManifestError(f"{path}: no such manifest", hint="a .jsonl or .csv file with video and question fields")
    jobs: list[Job] = []
    first_line: dict[str, int] = {}
    for line, row in _manifest_rows(p):
        if not isinstance(row, dict):
            raise ManifestError(
                f"{path} line {line}: expected a JSON object, got {type(row).__name__}",
                hint='each line is one object: {"video": "a.mp4", "question": "..."}',
            )
        job = _job_from_row(row, line, str(path), str(p.parent), default_question)
        if job.id in first_line:
            raise ManifestError(
                f"{path} line {line}: duplicate id {job.id!r} (first on line {first_line[job.id]})",
                hint="give each row a unique id (rows without one get <video>#<hash of the question>)",
            )
        first_line[job.id] = line
        jobs.append(job)
    if not jobs:
        raise ManifestError(f"{path}: no jobs in the manifest", hint="add one row per (video, question)")
    return jobs


# ------------------------------------------------------------------------------------------------------ answers
def build_prompt(question: str, options: Sequence[str] | None) -> str:
    """The question as the model sees it; multiple choice as lmms-eval asks LLaVA-OneVision (Video-MME style)."""
    if not options:
        return question
    lines = [question.strip()] + [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)] + [MC_INSTRUCTION]
    return "\n".join(lines)


def normalize_text(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed: "The cat." == "the  cat"."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if unicodedata.category(c).startswith(("P", "S")) else c for c in text)
    return " ".join(text.split())


def expected_letter(answer: str, options: Sequence[str]) -> str | None:
    """The expected option's letter from a letter ("B", "(B)", "b.") or from the option's text."""
    letter = re.fullmatch(r"\s*\(?([A-Za-z])[.):]?\s*", answer)
    if letter and letter.group(1).upper() in LETTERS[: len(options)]:
        return letter.group(1).upper()
    target = normalize_text(answer)
    for i, option in enumerate(options):
        if normalize_text(option) == target:
            return LETTERS[i]
    return None


_ANSWER_PREFIX = re.compile(
    r"^\s*(?:the\s+)?(?:best\s+|correct\s+|final\s+)?(?:answer|option|choice)(?:\s+is)?\s*[:：]?\s*", re.I
)


def parse_choice(text: str, options: Sequence[str]) -> str | None:
    """The predicted letter: a lone letter ("b", "(C)"); a leading "B" / "(B)" / "B." (after an "The answer is"
    prefix); the answer equal to (or containing exactly one) option's text; else the first standalone valid capital
    letter that is not the article "A" ("A man walks ..."). None when nothing matches."""
    valid = LETTERS[: len(options)]
    stripped = _ANSWER_PREFIX.sub("", text.strip())
    alone = re.fullmatch(r"\(?([A-Za-z])[.):]?", stripped)  # a lone letter, any case: "b", "(c)", "D."
    if alone:
        return alone.group(1).upper() if alone.group(1).upper() in valid else None
    lead = re.match(r"^\(?([A-Z])\)?(?:[.):,]|\s*$|\s+[-–]|\s+\S)", stripped)
    if lead and lead.group(1) in valid:
        rest = stripped[lead.end(1) :]
        # "A man ..." is an article, not a choice; "A. man" / "(A) man" / "A" alone are choices
        if not (lead.group(1) in ("A", "I") and re.match(r"^\s+[a-z]", rest) and not stripped.startswith("(")):
            return lead.group(1)
    norm = normalize_text(stripped)
    texts = [normalize_text(o) for o in options]
    for i, option in enumerate(texts):
        if option and norm == option:
            return valid[i]
    contained = [i for i, option in enumerate(texts) if option and re.search(rf"\b{re.escape(option)}\b", norm)]
    if len(contained) == 1:
        return valid[contained[0]]
    for m in re.finditer(r"(?<![A-Za-z])([A-Z])(?![A-Za-z])", stripped):
        if m.group(1) in valid and not (m.group(1) in ("A", "I") and re.match(r"\s+[a-z]", stripped[m.end() :])):
            return m.group(1)
    return None


def score(job: Job, answer_text: str) -> dict[str, Any]:
    """Record fields for a job with an expected answer: predicted letter (multiple choice) and ``correct``."""
    if job.answer is None:
        return {}
    if job.options:
        predicted = parse_choice(answer_text, job.options)
        return {"predicted": predicted, "correct": predicted == expected_letter(job.answer, job.options)}
    return {"correct": normalize_text(answer_text) == normalize_text(job.answer)}


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
    return f"vq:{record.get('video')}\n{record.get('question')}"


def _job_keys(job: Job) -> tuple[str, str]:
    return "id:" + job.id, f"vq:{job.video}\n{job.question}"


def _read_records(path: str, truncate_partial: bool = False, keep_raw: bool = True) -> list[_Record]:
    """Records of a JSONL output; a trailing line without its newline (killed mid-write) is ignored or cut away.
    ``keep_raw=False`` drops the lines themselves (enough to find finished jobs; a fraction of the memory)."""
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
        slim_keys = ("id", "status", "video", "question", "expected", "correct", "retention") + GROUP_FIELDS
        slim = {k: record[k] for k in slim_keys if k in record}
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
    folder = os.path.dirname(os.path.abspath(output))
    if os.path.isdir(output):
        raise ManifestError(f"--output {output} is a folder", hint="give a file name, e.g. results.jsonl")
    if not os.path.isdir(folder):
        raise ManifestError(f"the output folder {folder} does not exist", hint=f"create it: mkdir -p {folder}")
    if not os.access(folder, os.W_OK) or (os.path.exists(output) and not os.access(output, os.W_OK)):
        raise ManifestError(f"cannot write {output}", hint="choose a writable location for --output")


# ------------------------------------------------------------------------------------------------------- summary
def accuracy(records: Iterable[dict]) -> dict[str, Any] | None:
    """Accuracy over records with an expected answer (failed jobs count as wrong), overall and per task/category."""
    scored = [r for r in records if r.get("expected") is not None]
    if not scored:
        return None

    def tally(rs: list[dict]) -> dict[str, Any]:
        n_correct = sum(1 for r in rs if r.get("correct") is True)
        n_failed = sum(1 for r in rs if r.get("status") != "ok")
        return {"accuracy": n_correct / len(rs), "n_correct": n_correct, "n_scored": len(rs), "n_failed": n_failed}

    overall = tally(scored)
    out: dict[str, Any] = {"overall": overall.pop("accuracy"), **overall, "by_group": {}}
    for group in GROUP_FIELDS:
        names = sorted({str(r[group]) for r in scored if r.get(group) is not None})
        if names:
            out["by_group"][group] = {n: tally([r for r in scored if str(r.get(group)) == n]) for n in names}
    return out


def _write_summary(output: str, records: list[_Record]) -> tuple[dict | None, str | None]:
    slims = [r.slim for r in records]
    acc = accuracy(slims)
    if acc is None:
        return None, None
    retentions = [r["retention"] for r in slims if r.get("status") == "ok" and isinstance(r.get("retention"), float)]
    data = {
        "output": output,
        "n_records": len(slims),
        "n_ok": sum(1 for r in slims if r.get("status") == "ok"),
        "n_error": sum(1 for r in slims if r.get("status") != "ok"),
        "mean_retention": sum(retentions) / len(retentions) if retentions else None,
        "accuracy": acc,
    }
    path = summary_path_for(output)
    _write_atomic(path, (json.dumps(data, indent=2) + "\n").encode())
    return acc, path


@dataclass
class BatchSummary:
    n_total: int  # jobs given
    n_done: int  # answered in this run (rank 0 of several: by every rank)
    n_failed: int  # failed in this run (their records say why)
    n_skipped: int  # already in the output
    mean_retention: float | None  # over this run's answered jobs
    mean_time_s: float | None  # wall time per job in this process, model load excluded
    accuracy: dict | None  # over every record in the output, when answers are known
    output: str
    summary_path: str | None  # <output stem>.summary.json, written when answers are known
    rank: int = 0
    world_size: int = 1


class BatchView(Protocol):
    """Progress sink (render.BatchProgress); every method is optional."""

    def start(self, n_total: int, n_skipped: int) -> None: ...
    def status(self, text: str) -> None: ...
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
    job: Job
    encoded: EncodedVideo
    compressed: CompressedVideo
    prompt: str
    share_s: float  # this job's share of the video's decode + vision + SCC wall time


def _base_record(job: Job) -> dict[str, Any]:
    record: dict[str, Any] = {"id": job.id, "status": "ok", "video": job.video, "question": job.question}
    if job.options:
        record["options"] = list(job.options)
    if job.answer is not None:
        record["expected"] = job.answer
    return record


def _error_record(job: Job, e: Exception) -> dict[str, Any]:
    record = _base_record(job)
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


def _ok_record(job: Job, answer: Any, prompt: str, n_rows: int) -> dict[str, Any]:
    record = _base_record(job)
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

    def __init__(self, vlm: VisionLanguageModel, profile: Profile, batch_size: int, emit: Callable[[dict], None]):
        from scissor_cli import pipeline

        self.vlm, self.profile, self.batch_size, self.emit = vlm, profile, batch_size, emit
        self.pipeline = pipeline
        self.cache = None
        if profile.model.cache:
            from scissor_cli.cache import FeatureCache

            self.cache = FeatureCache()
        self.queue: list[_Row] = []

    def add_video(self, video: str, jobs: list[Job], on_status: Callable[[str], None]) -> None:
        t0 = time.perf_counter()
        try:
            encoded = self.pipeline.encode_video(self.vlm, video, self.profile, on_status=on_status, cache=self.cache)
            compressed = self.pipeline.compress_video(encoded, self.profile)
        except Exception as e:
            for job in jobs:
                self.emit(_error_record(job, e))
            return
        share_s = (time.perf_counter() - t0) / len(jobs)
        for job in jobs:
            self.queue.append(_Row(job, encoded, compressed, build_prompt(job.question, job.options), share_s))
        while len(self.queue) >= self.batch_size:
            self.flush(self.batch_size)

    def flush(self, n: int | None = None) -> None:
        n = len(self.queue) if n is None else n
        rows, self.queue = self.queue[:n], self.queue[n:]
        if len(rows) == 1:
            self._generate_one(rows[0])
        elif rows:
            try:
                generated = self.vlm.generate([(r.compressed.tokens, r.prompt) for r in rows], self.profile.generation)
            except Exception:
                # one bad row must not fail its batch-mates: answer them one at a time, each failing on its own
                for row in rows:
                    self._generate_one(row)
                return
            self._emit_rows(rows, generated)

    def _generate_one(self, row: _Row) -> None:
        try:
            generated = self.vlm.generate([(row.compressed.tokens, row.prompt)], self.profile.generation)
        except Exception as e:
            self.emit(_error_record(row.job, e))
            return
        self._emit_rows([row], generated)

    def _emit_rows(self, rows: list[_Row], generated: Any) -> None:
        # make_answers takes one video's rows with their slice of the batch's outputs
        start = 0
        while start < len(rows):
            stop = start
            while stop < len(rows) and rows[stop].encoded is rows[start].encoded:
                stop += 1
            part = replace(
                generated,
                texts=generated.texts[start:stop],
                n_prompt_tokens=list(generated.n_prompt_tokens[start:stop]),
                **{k: list(getattr(generated, k)[start:stop]) for k in ("n_new_tokens", "token_ids")
                   if len(getattr(generated, k, []) or []) == len(rows)},
            )  # fmt: skip
            video_rows = rows[start:stop]
            try:
                answers = self.pipeline.make_answers(
                    self.vlm, video_rows[0].encoded, video_rows[0].compressed,
                    [r.job.question for r in video_rows], part, self.profile,
                )  # fmt: skip
            except Exception as e:
                for row in video_rows:
                    self.emit(_error_record(row.job, e))
            else:
                for row, ans in zip(video_rows, answers, strict=True):
                    self.emit(_ok_record(row.job, ans, row.prompt, len(rows)))
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
    rank: int | None = None,
    world_size: int | None = None,
) -> BatchSummary:
    """Answer ``jobs``, appending one record per job to ``output`` (or this rank's part file); see the module doc.

    ``load_model`` is called once, only when this process has pending jobs. ``rank``/``world_size`` default to the
    RANK/WORLD_SIZE environment (torchrun, accelerate launch). Raises ManifestError for an unusable output."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise OptionError(f"batch size {batch_size!r} is out of range", hint="--batch-size must be an integer >= 1")
    env_rank, env_world = dist_env()
    rank = env_rank if rank is None else rank
    world_size = env_world if world_size is None else world_size
    _check_output(output)
    ids: set[str] = set()
    for job in jobs:
        if job.id in ids:
            raise ManifestError(f"duplicate job id {job.id!r}", hint="every job needs its own id")
        ids.add(job.id)

    group = _Group(rank, world_size, BARRIER_TIMEOUT_S)
    try:
        return _run(load_model, list(jobs), output, profile, overwrite, batch_size, view, rank, world_size, group)
    finally:
        group.close()


def _run(
    load_model: Callable[[], VisionLanguageModel],
    jobs: list[Job],
    output: str,
    profile: Profile,
    overwrite: bool,
    batch_size: int,
    view: BatchView | None,
    rank: int,
    world_size: int,
    group: _Group,
) -> BatchSummary:
    target = output if world_size == 1 else part_path(output, rank, world_size)
    # Phase 1: every rank reads the same files (nobody writes records before the barrier).
    if overwrite:
        if rank == 0:
            for path in [output, summary_path_for(output), *_part_files(output)]:
                if os.path.exists(path) and path not in {part_path(output, r, world_size) for r in range(world_size)}:
                    os.remove(path)
        open(target, "wb").close()  # each rank empties its own part (or the output when alone)
        existing: list[_Record] = []
    else:
        if world_size == 1:
            _merge_parts(output)  # leftovers of a killed multi-process run
        _read_records(target, truncate_partial=True)  # only this rank writes `target`
        existing = [r for p in [output, *_part_files(output)] for r in _read_records(p, keep_raw=False)]
    finished = {r.key for r in existing if r.ok}
    pending = [j for j in jobs if not any(k in finished for k in _job_keys(j))]
    n_skipped = len(jobs) - len(pending)

    by_video: dict[str, list[Job]] = {}
    for job in pending:
        by_video.setdefault(job.video, []).append(job)
    # whole videos per rank, so one rank encodes each video once
    my_videos = list(by_video)[rank::world_size]
    my_jobs = [job for v in my_videos for job in by_video[v]]
    group.barrier()

    _notify(view, "start", len(my_jobs) + n_skipped, n_skipped)
    my_records: list[dict] = []
    t_work = None
    if my_jobs:
        _notify(view, "status", "loading the model")
        vlm = load_model()
        from scissor_cli.pipeline import resolve_profile

        resolved = resolve_profile(vlm, profile)
        fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:

            def emit(record: dict) -> None:
                _append_line(fd, record)
                my_records.append(record)
                _notify(view, "job_done", record)

            t_work = time.perf_counter()
            runner = _Runner(vlm, resolved, batch_size, emit)
            for i, video in enumerate(my_videos, 1):
                name = os.path.basename(video)
                prefix = f"[{i}/{len(my_videos)}] {name}"
                _notify(view, "status", prefix)
                runner.add_video(video, by_video[video], lambda text, p=prefix: _notify(view, "status", f"{p}: {text}"))
            runner.flush()
            t_work = time.perf_counter() - t_work
        finally:
            os.close(fd)

    group.barrier()  # every rank has written its part
    summary = BatchSummary(
        n_total=len(jobs),
        n_done=sum(1 for r in my_records if r["status"] == "ok"),
        n_failed=sum(1 for r in my_records if r["status"] != "ok"),
        n_skipped=n_skipped,
        mean_retention=_mean(r.get("retention") for r in my_records if r["status"] == "ok"),
        mean_time_s=t_work / len(my_records) if t_work is not None and my_records else None,
        accuracy=None,
        output=output if rank == 0 else target,
        summary_path=None,
        rank=rank,
        world_size=world_size,
    )
    if rank != 0:
        return summary

    if world_size > 1:
        _notify(view, "status", "merging part files")
    final = _merge_parts(output)
    if world_size > 1:  # count every rank's work of this run
        pending_keys = {_job_keys(j)[0] for j in pending}
        run_records = [r.slim for r in final if r.key in pending_keys]
        summary.n_done = sum(1 for r in run_records if r.get("status") == "ok")
        summary.n_failed = len(run_records) - summary.n_done
        summary.mean_retention = _mean(r.get("retention") for r in run_records if r.get("status") == "ok")
    summary.accuracy, summary.summary_path = _write_summary(output, final)
    return summary


def _mean(values: Iterable[Any]) -> float | None:
    xs = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(xs) / len(xs) if xs else None


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

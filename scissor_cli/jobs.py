"""Batch jobs: folders and manifests -> ``Job`` lists, every row checked before any model loads.

    jobs = jobs_from_paths(["videos/"], ["What is happening?", "Who is there?"])   # every question, every video
    jobs = jobs_from_manifest("jobs.csv")        # .jsonl / .ndjson, .json (an array), .csv or .tsv

A malformed row raises ``ManifestError`` naming the file and the line (item, for a JSON array); a missing or broken
video is not a manifest error (that job fails on its own when it runs).
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scissor_cli.choices import LETTERS, PROMPT_PRESETS, expected_letter, strip_letter_labels
from scissor_cli.errors import ManifestError

MANIFEST_FIELDS = ("id", "video", "question", "options", "answer", "prompt")
MANIFEST_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv"}
MANIFEST_HINT = "a .jsonl, .json (array), .csv or .tsv file with video and question fields"
# Record fields a manifest's extra column may not overwrite.
RESERVED = frozenset(
    {"status", "error", "error_type", "hint", "traceback", "expected", "predicted", "correct", "batch_rows", "level"}
    | {"tokens", "retention", "tau", "tau_temporal", "epsilon", "frames", "timestamps", "timings_s", "tflops"}
    | {"model", "device", "dtype", "cache_hit", "note", "profile", "config", "config_hash"}
)


@dataclass(frozen=True)
class Job:
    id: str  # unique within a run; the resume key
    video: str  # path (manifest-relative paths already resolved)
    question: str  # as asked; multiple choice adds the lettered options to the prompt
    options: tuple[str, ...] | None = None  # multiple-choice candidates, lettered A, B, ...
    answer: str | None = None  # expected answer: a letter or an option's text, or free text for exact match
    extra: dict = field(default_factory=dict)  # other manifest fields (task, category, ...), copied to the record
    prompt: str | None = None  # multiple-choice prompt preset (choices.PROMPT_PRESETS); None: the run's


def derive_id(video: str, question: str, options: Sequence[str] | None = None, prompt: str | None = None) -> str:
    """``<video>#<8 hex>``: readable, and different questions about one video get different ids (so does the same
    question asked with another prompt preset)."""
    text = question if not options else question + "\x00" + "\x00".join(options)
    if prompt is not None:
        text += "\x00prompt=" + prompt
    return f"{video}#{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def _glob_match(rel: str, name: str, pattern: str) -> bool:
    # '*' in fnmatch also crosses '/', so '*cat*' and 'sub/*.mp4' both do what people expect
    return fnmatch.fnmatch(rel, pattern) or fnmatch.fnmatch(name, pattern)


def jobs_from_paths(paths: Sequence[str], question: str | Sequence[str], glob: str | None = None) -> list[Job]:
    """One job per (video, question) for every video file under ``paths`` (folders searched recursively, hidden
    entries skipped): videos sorted, each video's questions in the order given (repeats dropped)."""
    from scissor_cli.video import VIDEO_EXTENSIONS

    questions = list(dict.fromkeys([question] if isinstance(question, str) else question))
    if not questions or any(not q or not q.strip() for q in questions):
        raise ManifestError("a question is empty", hint='pass --question "What is happening in this video?"')
    from scissor_cli.video import is_url

    found: set[str] = set()
    for given in paths:
        path = os.path.expanduser(given)
        if is_url(given):
            found.add(given)  # streamed by ffmpeg; an unreachable address fails as its own job
        elif given == "-":
            raise ManifestError("batch cannot read a video from stdin (-)", hint="save it to a file and pass the file")
        elif os.path.isdir(path):
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
    return [Job(derive_id(v, q), v, q) for v in sorted(found) for q in questions]


def _split_options(value: Any, bad: Callable[[str, str], None]) -> tuple[str, ...] | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    hint = 'options are a JSON list ["a cat", "a dog"] or, in CSV/TSV, "a cat|a dog"'
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


def _job_from_row(row: dict, where: str, base: str, default_question: str | None) -> Job:
    def bad(message: str, hint: str) -> None:
        raise ManifestError(f"{where}: {message}", hint=hint)

    if None in row:  # csv.DictReader puts surplus cells under the key None
        bad("more cells than header columns", "quote cells that contain commas (or tabs, in a .tsv)")
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
    prompt = row.get("prompt")
    if prompt in (None, ""):
        prompt = None
    elif not isinstance(prompt, str) or prompt.strip().lower() not in PROMPT_PRESETS:
        bad(f"prompt {prompt!r} is not a prompt preset", f"use one of: {', '.join(PROMPT_PRESETS)}")
    else:
        prompt = prompt.strip().lower()
    video = video.strip()
    job_id = row.get("id")
    if job_id in (None, ""):
        job_id = derive_id(video, question, options, prompt)
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
    from scissor_cli.video import is_url

    if video == "-":
        bad("a video cannot be stdin (-) in a manifest", "save it to a file and name the file")
    resolved = video if is_url(video) else os.path.expanduser(video)
    if not is_url(resolved) and not os.path.isabs(resolved):
        resolved = os.path.normpath(os.path.join(base, resolved))
    return Job(job_id, resolved, question, options, answer, extra, prompt)


def _table_rows(f: Any, path: Path, delimiter: str) -> Iterable[tuple[str, Any]]:
    reader = csv.DictReader(f, delimiter=delimiter)
    header = [h.strip() for h in (reader.fieldnames or [])]
    if "video" not in header:
        sep = "," if delimiter == "," else "<tab>"
        raise ManifestError(
            f"{path} line 1: the header has no 'video' column",
            hint=f"the first row names the columns: video{sep}question[{sep}id{sep}options{sep}answer...]",
        )
    reader.fieldnames = header
    for row in reader:
        yield f"line {reader.line_num}", {k: (v.strip() if isinstance(v, str) else v) for k, v in row.items()}


def _manifest_rows(path: Path) -> Iterable[tuple[str, Any]]:
    """("line N" or "item N", row) pairs; JSON rows are whatever they parse to, CSV/TSV rows are dicts of strings."""
    kind = MANIFEST_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ManifestError(f"{path}: unknown manifest format {path.suffix!r}", hint=f"use {MANIFEST_HINT}")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            if kind == "jsonl":
                for n, text in enumerate(f, 1):
                    if not text.strip():
                        continue
                    try:
                        yield f"line {n}", json.loads(text)
                    except json.JSONDecodeError as e:
                        raise ManifestError(
                            f"{path} line {n}: not valid JSON ({e.msg}, column {e.colno})",
                            hint='each line is one object: {"video": "a.mp4", "question": "..."}',
                        ) from e
            elif kind == "json":
                try:
                    data = json.load(f)
                except json.JSONDecodeError as e:
                    raise ManifestError(
                        f"{path} line {e.lineno}: not valid JSON ({e.msg}, column {e.colno})",
                        hint='a .json manifest is one array of objects: [{"video": "a.mp4", "question": "..."}]',
                    ) from e
                if not isinstance(data, list):
                    raise ManifestError(
                        f"{path}: expected a JSON array of jobs, got {type(data).__name__}",
                        hint='a .json manifest is one array of objects: [{"video": "a.mp4", "question": "..."}]',
                    )
                for n, row in enumerate(data, 1):
                    yield f"item {n}", row
            else:
                yield from _table_rows(f, path, "," if kind == "csv" else "\t")
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ManifestError(f"cannot read manifest {path}: {e}", hint=f"use {MANIFEST_HINT}, UTF-8") from e


def jobs_from_manifest(path: str, default_question: str | None = None) -> list[Job]:
    """Jobs from a .jsonl / .json / .csv / .tsv manifest; every row is checked before any model work."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise ManifestError(f"{path} is a folder, not a manifest", hint=f"pass {MANIFEST_HINT}; for a folder of "
                            "videos give it as a path: scissor batch FOLDER -q QUESTION")  # fmt: skip
    if not p.is_file():
        raise ManifestError(f"{path}: no such manifest", hint=MANIFEST_HINT)
    jobs: list[Job] = []
    first_seen: dict[str, str] = {}
    for where, row in _manifest_rows(p):
        if not isinstance(row, dict):
            raise ManifestError(
                f"{path} {where}: expected a JSON object, got {type(row).__name__}",
                hint='each job is one object: {"video": "a.mp4", "question": "..."}',
            )
        job = _job_from_row(row, f"{path} {where}", str(p.parent), default_question)
        if job.id in first_seen:
            raise ManifestError(
                f"{path} {where}: duplicate id {job.id!r} (first on {first_seen[job.id]})",
                hint="give each row a unique id (rows without one get <video>#<hash of the question>)",
            )
        first_seen[job.id] = where
        jobs.append(job)
    if not jobs:
        raise ManifestError(f"{path}: no jobs in the manifest", hint="add one row per (video, question)")
    return jobs

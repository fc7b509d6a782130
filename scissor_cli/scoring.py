"""Scoring: the multiple-choice prompt, parsing the model's choice, accuracy and the summary of an output's records.

    prompt = build_prompt("What does the cat do?", ("sleeps", "eats"))   # the default template
    prompt = build_prompt("What does the cat do?", ("sleeps", "eats"), "mvbench")   # lmms-eval's MVBench template
    score(job, "B. eats")                                              # {"predicted": "B", "correct": True}
    summarize(records)                                                 # n_ok, mean_retention, accuracy, levels...

Standard library only: summaries of big outputs are computed without torch.
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from scissor_cli.jobs import Job

LETTERS = string.ascii_uppercase
# lmms-eval's post prompt for LLaVA-OneVision multiple-choice video benchmarks (Video-MME, NExT-QA, ...)
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
GROUP_FIELDS = ("task", "category")  # manifest fields accuracy is broken down by


# Multiple-choice prompt presets. The four benchmark presets reproduce the text lmms-eval 0.7.2 builds for each
# task with its default model arguments (doc_to_text + the task YAML's pre/post prompt), so accuracies are
# comparable with numbers published from lmms-eval runs.
DEFAULT_PRESET = "default"
PROMPT_PRESETS = ("default", "videomme", "mvbench", "egoschema", "nextqa", "plain")
# Video-MME's fixed instruction line (lmms-eval keeps "(A, B, C, or D)" whatever the number of options)
VIDEOMME_INSTRUCTION = (
    "Select the best answer to the following multiple-choice question based on the video and the subtitles. "
    "Respond with only the letter (A, B, C, or D) of the correct option."
)
MVBENCH_POST = "Only give the best option.\n"  # every MVBench sub-task's post_prompt


def _lettered(options: Sequence[str], style: str = "{letter}. {option}") -> list[str]:
    return [style.format(letter=LETTERS[i], option=o) for i, o in enumerate(options)]


def build_prompt(question: str, options: Sequence[str] | None, preset: str | None = None) -> str:
    """The question as the model sees it. Without options: the question as written, whatever the preset. With
    options, by ``preset`` (None: ``default``):

    * ``default``: question, "A. x" lines, then lmms-eval's "Answer with the option's letter ..." line
      (the template LLaVA-OneVision's video evaluations use; identical to ``egoschema`` up to the question's
      surrounding whitespace);
    * ``videomme``: Video-MME's instruction line, the question, the "A. x" lines, a blank line, the letter line;
    * ``mvbench``: "Question:<question>", "Option:", "(A) x" lines, "Only give the best option." and a newline;
    * ``egoschema``: the question, the "A. x" lines, the letter line;
    * ``nextqa``: the stripped question and stripped "A. x" lines, no instruction (NExT-QA's MC task has none);
    * ``plain``: the question exactly as written (options are used for scoring only: for data whose question
      already lists its options)."""
    preset = DEFAULT_PRESET if preset is None else preset
    if preset not in PROMPT_PRESETS:
        raise ValueError(f"unknown prompt preset {preset!r}")  # callers validate; this is a bug
    if not options or preset == "plain":
        return question
    if preset == "videomme":
        return "\n".join([VIDEOMME_INSTRUCTION, question, *_lettered(options), "", MC_INSTRUCTION])
    if preset == "mvbench":
        return (
            "Question:"
            + question
            + "\nOption:\n"
            + "".join(f"({LETTERS[i]}) {o}\n" for i, o in enumerate(options))
            + MVBENCH_POST
        )
    if preset == "egoschema":
        return "\n".join([question, *_lettered(options), MC_INSTRUCTION])
    if preset == "nextqa":
        return "\n".join([question.strip(), *_lettered([o.strip() for o in options])])
    return "\n".join([question.strip(), *_lettered(options), MC_INSTRUCTION])


def prompt_template(preset: str | None = None) -> str:
    """The multiple-choice prompt's shape, derived from ``build_prompt``; part of a batch run's ``config``, so
    changing the template makes old records another configuration."""
    return build_prompt("{question}", ("{option 1}", "{option 2}"), preset)


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


def strip_letter_labels(options: Sequence[str]) -> tuple[str, ...]:
    """Drop "A. " / "(A) " / "A) " prefixes when every option carries its own letter (Video-MME style data)."""
    pattern = re.compile(r"^\(?([A-Z])[.):]\s*(.*)$", re.S)
    matches = [pattern.match(o) for o in options]
    if all(m and m.group(1) == LETTERS[i] and m.group(2).strip() for i, m in enumerate(matches)):
        return tuple(m.group(2).strip() for m in matches)
    return tuple(options)


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


def mean(values: Iterable[Any]) -> float | None:
    """Mean of the finite numbers among ``values`` (None and NaN skipped); None when there are none."""
    xs = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    return sum(xs) / len(xs) if xs else None


def summarize(records: Sequence[dict]) -> dict[str, Any]:
    """What ``<output>.summary.json``, ``batch --json`` and the terminal summary report: counts, mean retention
    and accuracy over ``records`` (every record of an output, one per job and level; earlier runs' included), and
    for a sweep (records carrying ``level``) one row per level (``level_rows``)."""
    ok = [r for r in records if r.get("status") == "ok"]
    out = {
        "n_records": len(records),
        "n_ok": len(ok),
        "n_error": len(records) - len(ok),
        "mean_retention": mean(r.get("retention") for r in ok),
        "accuracy": accuracy(records),
    }
    if any(isinstance(r.get("level"), dict) for r in records):
        groups: dict[tuple, list[dict]] = {}
        for r in records:
            groups.setdefault(level_key(record_level(r)), []).append(r)
        out["levels"] = level_rows([(level_from_key(k), rs) for k, rs in sorted(groups.items(), key=level_order)])
    return out


# ------------------------------------------------------------------------------------------------ levels (sweeps)
SWEEP_AXES = ("retention", "tokens", "tau")


def level_text(level: dict | None) -> str:
    """``{"retention": 0.1}`` -> ``retention=0.1`` (the part after ``@`` in a sweep record's id)."""
    if not level:
        return "?"
    ((axis, value),) = level.items()
    return f"{axis}={value:g}" if isinstance(value, (int, float)) else f"{axis}={value}"


def level_key(level: dict | None) -> tuple:
    if not level:
        return ("", 0.0)
    ((axis, value),) = level.items()
    return (str(axis), float(value) if isinstance(value, (int, float)) else 0.0)


def level_from_key(key: tuple) -> dict | None:
    if not key[0]:
        return None
    return {key[0]: int(key[1]) if key[0] == "tokens" else key[1]}


def level_order(item: tuple) -> tuple:
    # axes in SWEEP_AXES order, each from the most to the least kept (the paper's table: 100 % first)
    (axis, value), _ = item
    return (SWEEP_AXES.index(axis) if axis in SWEEP_AXES else len(SWEEP_AXES), axis, -value)


def record_level(record: dict) -> dict | None:
    """A record's sweep level: its ``level`` field, else read from its run's ``config`` (a single-level run):
    compression off -> ``{"retention": 1.0}``, a retention or token budget, else the threshold (tau) used."""
    level = record.get("level")
    if isinstance(level, dict) and len(level) == 1:
        return level
    config = record.get("config")
    compression = config.get("compression") if isinstance(config, dict) else None
    if not isinstance(compression, dict):
        return None
    if compression.get("enabled") is False:
        return {"retention": 1.0}
    for axis in ("retention", "tokens"):
        if compression.get(axis) is not None:
            return {axis: compression[axis]}
    tau = compression.get("tau") if compression.get("tau") is not None else record.get("tau")
    return {"tau": tau} if isinstance(tau, (int, float)) else None


def answer_time_s(record: dict) -> float | None:
    """The time one answer cost beyond the video's shared decode + vision tower: SCC plus its share of the
    ``generate`` call (prefill + generation split evenly between the call's ``batch_rows``)."""
    t = record.get("timings_s")
    if record.get("status") != "ok" or not isinstance(t, dict):
        return None
    rows = record.get("batch_rows") or 1
    llm = mean([t.get("prefill")]) or 0.0
    llm += mean([t.get("generation")]) or 0.0
    return (mean([t.get("compression")]) or 0.0) + llm / rows


def _nested(record: dict, key: str, sub: str) -> Any:
    value = record.get(key)
    return value.get(sub) if isinstance(value, dict) else None


def level_rows(groups: Sequence[tuple[Any, Sequence[dict]]]) -> list[dict[str, Any]]:
    """One summary row per (label, records) group: n, n_ok, n_error, accuracy (as ``accuracy``), mean retention,
    mean visual tokens to the LLM (``tokens.final``), mean estimated prefill TFLOPs (``tflops.after``), mean time
    per answer (``answer_time_s``) and ``relative_accuracy``: accuracy / the uncompressed group's accuracy (the
    group whose every answer kept all visual tokens, retention 1.0), when there is one."""
    rows = []
    for label, records in groups:
        ok = [r for r in records if r.get("status") == "ok"]
        rows.append(
            {
                "level": label,
                "n": len(records),
                "n_ok": len(ok),
                "n_error": len(records) - len(ok),
                "accuracy": accuracy(records),
                "mean_retention": mean(r.get("retention") for r in ok),
                "mean_visual_tokens": mean(_nested(r, "tokens", "final") for r in ok),
                "mean_prefill_tflops": mean(_nested(r, "tflops", "after") for r in ok),
                "mean_answer_s": mean(answer_time_s(r) for r in ok),
                "relative_accuracy": None,
            }
        )
    uncompressed = [
        row for row, (_, rs) in zip(rows, groups, strict=True)
        if row["n_ok"] and all(r.get("retention") == 1.0 for r in rs if r.get("status") == "ok")
    ]  # fmt: skip
    base = uncompressed[0]["accuracy"] if uncompressed else None
    if base and base["overall"] > 0:
        for row in rows:
            if row["accuracy"]:
                row["relative_accuracy"] = row["accuracy"]["overall"] / base["overall"]
    return rows

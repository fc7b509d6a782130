"""Scoring: the multiple-choice prompt, parsing the model's choice, accuracy and the summary of an output's records.

    prompt = build_prompt("What does the cat do?", ("sleeps", "eats"))   # lmms-eval's Video-MME style
    score(job, "B. eats")                                              # {"predicted": "B", "correct": True}
    summarize(records)                                                 # n_ok, mean_retention, accuracy, ...

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


def build_prompt(question: str, options: Sequence[str] | None) -> str:
    """The question as the model sees it; multiple choice as lmms-eval asks LLaVA-OneVision (Video-MME style)."""
    if not options:
        return question
    lines = [question.strip()] + [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)] + [MC_INSTRUCTION]
    return "\n".join(lines)


def prompt_template() -> str:
    """The multiple-choice prompt's shape, derived from ``build_prompt``; part of a batch run's ``config``, so
    changing the template makes old records another configuration."""
    return build_prompt("{question}", ("{option 1}", "{option 2}"))


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
    and accuracy over ``records`` (every record of an output, one per job; earlier runs' included)."""
    ok = [r for r in records if r.get("status") == "ok"]
    return {
        "n_records": len(records),
        "n_ok": len(ok),
        "n_error": len(records) - len(ok),
        "mean_retention": mean(r.get("retention") for r in ok),
        "accuracy": accuracy(records),
    }

"""Scoring: a record's predicted letter and ``correct``, accuracy and the summary of an output's records (the
prompt and the letter parsing are ``choices``, the sweep levels ``sweep``).

    score(job, "B. eats")                                              # {"predicted": "B", "correct": True}
    summarize(records)                                                 # n_ok, mean_retention, accuracy, levels...

Standard library only: summaries of big outputs are computed without torch.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from scissor_cli.choices import expected_letter, normalize_text, parse_choice
from scissor_cli.sweep import level_from_key, level_key, level_order, record_level

if TYPE_CHECKING:
    from scissor_cli.jobs import Job

GROUP_FIELDS = ("task", "category")  # manifest fields accuracy is broken down by


def score(job: Job, answer_text: str) -> dict[str, Any]:
    """Record fields for a job with an expected answer: predicted letter (multiple choice) and ``correct``."""
    if job.answer is None:
        return {}
    if job.options:
        predicted = parse_choice(answer_text, job.options)
        return {"predicted": predicted, "correct": predicted == expected_letter(job.answer, job.options)}
    return {"correct": normalize_text(answer_text) == normalize_text(job.answer)}


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

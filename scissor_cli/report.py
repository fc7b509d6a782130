"""``scissor report``: the table (and a plot) of one or more batch outputs, without the model and without torch.

    records = read_results(["sweep.jsonl"])              # every file's final records (one per id)
    report = build_report(records, by="level")           # one row per level (or per profile)
    print(to_markdown(report))                           # to_csv / to_json too; plot(report, "out.png")

Standard library only, except ``plot`` (matplotlib, the optional ``plot`` extra, imported when called).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from scissor_cli.errors import ManifestError, OptionError
from scissor_cli.scoring import level_rows
from scissor_cli.sweep import level_from_key, level_key, level_order, level_text, record_level

GROUP_BY = ("level", "profile")
FORMATS = ("table", "markdown", "csv", "json")
PLOT_SUFFIXES = (".png", ".pdf", ".svg")
PLOT_HINT = "pip install 'scissor-cli[plot]'   (or: pip install matplotlib)"


@dataclass(frozen=True)
class Report:
    by: str  # "level" or "profile"
    files: tuple[str, ...]
    labels: tuple[str, ...]  # one per row: "retention=0.1", or "<profile name> <config hash>[ @ <level>]"
    levels: tuple[dict | None, ...]  # each row's level ({"retention": 0.1}), None where its records differ
    rows: tuple[dict[str, Any], ...]  # scoring.level_rows, in the table's order
    scored: bool  # some record has an expected answer: the accuracy columns are shown


# ------------------------------------------------------------------------------------------------------ reading
def read_results(paths: Sequence[str]) -> list[dict]:
    """Every record of the given batch outputs, one per (config, id) as batch's own rule keeps them: the latest
    ok record, else the latest error. A trailing line without its newline (a run killed mid-write) is ignored.
    Raises ManifestError naming the file (and line) for a missing file or a line that is not a JSON object."""
    if not paths:
        raise OptionError("no results to report", hint="give one or more batch outputs: scissor report results.jsonl")
    records: dict[tuple, dict] = {}
    for path in paths:
        try:
            with open(os.path.expanduser(path), "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise ManifestError(f"{path}: no such file", hint="give the JSONL file scissor batch -o wrote") from None
        except (IsADirectoryError, PermissionError, OSError) as e:
            raise ManifestError(f"cannot read {path}: {e}", hint="give the JSONL file scissor batch -o wrote") from e
        end = data.rfind(b"\n") + 1
        n_records = 0
        for n, raw in enumerate(data[:end].splitlines(), 1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                record = None
            if not isinstance(record, dict) or "status" not in record:
                raise ManifestError(
                    f"{path} line {n} is not a batch record (a JSON object with a status)",
                    hint="scissor report reads the JSONL files scissor batch writes (not the .summary.json)",
                )
            n_records += 1
            key = (path, record.get("config_hash"), record.get("id") or (record.get("video"), record.get("question")))
            key = key + (level_text(record["level"]),) if isinstance(record.get("level"), dict) else key
            if key not in records or record.get("status") == "ok" or records[key].get("status") != "ok":
                records.pop(key, None)  # a retry's record takes the place of the error it replaces
                records[key] = record
        if not n_records:
            raise ManifestError(f"{path} has no records", hint="run scissor batch into it first")
    return list(records.values())


# ------------------------------------------------------------------------------------------------------ grouping
def _profile_label(records: Sequence[dict], digest: Any) -> str:
    names = [r["profile"].get("name") for r in records if isinstance(r.get("profile"), dict)]
    name = next((n for n in names if n), "?")
    return f"{name} {digest}" if digest else str(name)


def build_report(records: Sequence[dict], by: str = "level", files: Sequence[str] = ()) -> Report:
    """Group ``records`` by sweep level (``sweep.record_level``: the record's ``level``, or its run's budget /
    threshold) or by profile (one row per configuration, and per level within a sweep), one summary row each."""
    if by not in GROUP_BY:
        raise OptionError(f"--by {by}: cannot group by that", hint=f"use one of: {', '.join(GROUP_BY)}")
    groups: dict[Any, list[dict]] = {}
    if by == "level":
        for r in records:
            groups.setdefault(level_key(record_level(r)), []).append(r)
        order = sorted(groups.items(), key=level_order)
        labels = [level_text(level_from_key(k)) for k, _ in order]
    else:
        for r in records:
            level = r.get("level")
            groups.setdefault((r.get("config_hash"), level_text(level) if isinstance(level, dict) else ""), []).append(
                r
            )
        order = list(groups.items())  # first appearance: the order of the files given
        labels = [_profile_label(rs, d) + (f" @ {lvl}" if lvl else "") for (d, lvl), rs in order]
    rows = level_rows([(label, rs) for label, (_, rs) in zip(labels, order, strict=True)])
    levels = []
    for _, rs in order:
        found = {level_key(record_level(r)) for r in rs}
        levels.append(level_from_key(found.pop()) if len(found) == 1 else None)
    scored = any(r.get("expected") is not None for r in records)
    return Report(by, tuple(files), tuple(labels), tuple(levels), tuple(rows), scored)


def _groups(report: Report) -> list[tuple[str, str]]:
    return sorted(
        {(g, n) for r in report.rows if r["accuracy"] for g, v in r["accuracy"]["by_group"].items() for n in v}
    )


# ------------------------------------------------------------------------------------------------------ formats
def _columns(report: Report) -> list[str]:
    cols = [report.by, "n", "failed"]
    if report.scored:
        cols += ["accuracy", *(f"{g}={n}" for g, n in _groups(report)), "vs 100 %"]
    return cols + ["retention", "visual tokens", "prefill TFLOPs", "s / answer"]


def _pct(x: float | None) -> str:
    return "" if x is None else f"{x * 100:.1f}"


def _cells(report: Report, label: str, row: dict) -> list[str]:
    cells = [label, str(row["n"]), str(row["n_error"])]
    if report.scored:
        acc = row["accuracy"]
        cells.append(_pct(acc["overall"]) if acc else "")
        for g, n in _groups(report):
            v = acc["by_group"].get(g, {}).get(n) if acc else None
            cells.append(_pct(v["accuracy"]) if v else "")
        cells.append(_pct(row["relative_accuracy"]))
    num = {
        "mean_retention": _pct(row["mean_retention"]),
        "mean_visual_tokens": "" if row["mean_visual_tokens"] is None else f"{row['mean_visual_tokens']:.0f}",
        "mean_prefill_tflops": "" if row["mean_prefill_tflops"] is None else f"{row['mean_prefill_tflops']:.3g}",
        "mean_answer_s": "" if row["mean_answer_s"] is None else f"{row['mean_answer_s']:.2f}",
    }
    return cells + list(num.values())


def to_markdown(report: Report) -> str:
    """A GitHub-flavoured Markdown table; accuracy, retention and "vs 100 %" in percent."""
    cols = _columns(report)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(["---"] + ["---:"] * (len(cols) - 1)) + "|"]
    for label, row in zip(report.labels, report.rows, strict=True):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in _cells(report, label, row)) + " |")
    return "\n".join(lines) + "\n"


def to_csv(report: Report) -> str:
    """One line per row, unrounded fractions (accuracy 0.5, not 50.0 %)."""
    groups = _groups(report)
    header = [report.by, "n", "n_error"]
    if report.scored:
        header += ["accuracy", *(f"accuracy:{g}={n}" for g, n in groups), "relative_accuracy"]
    header += ["mean_retention", "mean_visual_tokens", "mean_prefill_tflops", "mean_answer_s"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for label, row in zip(report.labels, report.rows, strict=True):
        line: list[Any] = [label, row["n"], row["n_error"]]
        if report.scored:
            acc = row["accuracy"]
            line.append(acc["overall"] if acc else "")
            for g, n in groups:
                v = acc["by_group"].get(g, {}).get(n) if acc else None
                line.append(v["accuracy"] if v else "")
            line.append("" if row["relative_accuracy"] is None else row["relative_accuracy"])
        for key in ("mean_retention", "mean_visual_tokens", "mean_prefill_tflops", "mean_answer_s"):
            line.append("" if row[key] is None else row[key])
        writer.writerow(line)
    return buf.getvalue()


def to_json(report: Report) -> dict[str, Any]:
    return {
        "by": report.by,
        "files": list(report.files),
        "rows": [
            {**row, "label": label, "level": level}
            for label, level, row in zip(report.labels, report.levels, report.rows, strict=True)
        ],
    }


# ------------------------------------------------------------------------------------------------------ plot
def check_plot_path(path: str) -> None:
    """Before any reading: a supported suffix and an existing, writable folder; matplotlib importable."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in PLOT_SUFFIXES:
        raise OptionError(f"--plot {path} must end in {', '.join(PLOT_SUFFIXES)}", hint="e.g. --plot sweep.png")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise OptionError(f"--plot: folder {folder} does not exist or is not writable", hint="pick another path")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise OptionError("--plot needs matplotlib, which is not installed", hint=PLOT_HINT) from None


def plot(report: Report, path: str) -> None:
    """Accuracy vs mean retention (overall and one line per task/category, the uncompressed level's accuracy as a
    dashed line), and a second panel of visual tokens and estimated prefill TFLOPs vs mean retention. Without
    expected answers, only the second panel."""
    check_plot_path(path)
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    points = sorted(
        ((row["mean_retention"], row) for row in report.rows if row["mean_retention"] is not None),
        key=lambda p: p[0],
    )
    if not points:
        raise OptionError("nothing to plot: no record has a retention", hint="every job failed? check the records")
    x = [p[0] * 100 for p in points]
    rows = [p[1] for p in points]
    panels = 2 if report.scored else 1
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.2), squeeze=False)
    if report.scored:
        ax = axes[0][0]
        overall = [r["accuracy"]["overall"] * 100 if r["accuracy"] else float("nan") for r in rows]
        ax.plot(x, overall, "o-", color="black", linewidth=2, label="overall")
        for g, n in _groups(report):
            ys = []
            for r in rows:
                v = r["accuracy"]["by_group"].get(g, {}).get(n) if r["accuracy"] else None
                ys.append(v["accuracy"] * 100 if v else float("nan"))
            ax.plot(x, ys, "o-", linewidth=1, alpha=0.8, label=f"{g}={n}")
        base = [r for r in rows if r["relative_accuracy"] == 1.0 and r["mean_retention"] == 1.0]
        if base:
            ax.axhline(base[0]["accuracy"]["overall"] * 100, linestyle="--", color="grey", label="uncompressed")
        ax.set_xlabel("visual tokens kept (mean retention, %)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title("accuracy vs retention")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax = axes[0][panels - 1]
    tokens = [r["mean_visual_tokens"] if r["mean_visual_tokens"] is not None else float("nan") for r in rows]
    ax.plot(x, tokens, "o-", color="tab:blue", label="visual tokens")
    ax.set_xlabel("visual tokens kept (mean retention, %)")
    ax.set_ylabel("visual tokens to the LLM (mean)", color="tab:blue")
    ax.grid(alpha=0.3)
    twin = ax.twinx()
    tflops = [r["mean_prefill_tflops"] if r["mean_prefill_tflops"] is not None else float("nan") for r in rows]
    twin.plot(x, tflops, "s--", color="tab:red", label="prefill TFLOPs (est.)")
    twin.set_ylabel("estimated prefill TFLOPs (mean)", color="tab:red")
    ax.set_title("cost vs retention")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

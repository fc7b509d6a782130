"""``scissor report``: tables of batch outputs equal to numbers recomputed from the records, errors counted as
failed, runs with different profiles, the formats, the plot, and no torch import."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import test_batch
from test_batch import fake_profile, read_jsonl
from test_sweep import LevelVLM

from scissor_cli.batch import Sweep, run_batch
from scissor_cli.errors import ManifestError, OptionError
from scissor_cli.jobs import jobs_from_manifest

clips, folder, isolated, fake_cli = test_batch.clips, test_batch.folder, test_batch.isolated, test_batch.fake_cli
LEVELS = (1.0, 0.5, 0.25)


def report(*args):
    from typer.testing import CliRunner

    from scissor_cli.cli import app

    return CliRunner().invoke(app, ["report", *map(str, args)])


@pytest.fixture
def sweep_file(folder, tmp_path) -> Path:
    """A 3-level sweep of 4 multiple-choice jobs (one on a broken file) with tasks and categories."""
    rows = [{"video": "a.mp4", "question": "Q1", "options": ["x", "y"], "answer": "A", "task": "t1", "category": "c"},
            {"video": "b.mp4", "question": "Q2", "options": ["x", "y"], "answer": "B", "task": "t1"},
            {"video": "sub/c.mp4", "question": "Q3", "options": ["x", "y"], "answer": "A", "task": "t2"},
            {"video": "bad.mp4", "question": "Q4", "options": ["x", "y"], "answer": "A", "task": "t2"}]  # fmt: skip
    man = folder / "jobs.jsonl"
    man.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "sweep.jsonl"
    run_batch(lambda: LevelVLM(threshold=6), jobs_from_manifest(str(man)), str(out), fake_profile(),
              sweep=Sweep("retention", LEVELS))  # fmt: skip
    return out


def recompute(records: list[dict], level: dict) -> dict:
    """The report's numbers for one level, computed here by hand from the records."""
    rs = [r for r in records if r.get("level") == level]
    ok = [r for r in rs if r["status"] == "ok"]
    scored = [r for r in rs if r.get("expected") is not None]

    def avg(xs):
        return sum(xs) / len(xs)

    return {
        "n": len(rs),
        "n_error": len(rs) - len(ok),
        "accuracy": sum(r.get("correct") is True for r in scored) / len(scored),
        "t2": avg([r.get("correct") is True for r in scored if r.get("task") == "t2"]),
        "mean_retention": avg([r["retention"] for r in ok]),
        "mean_visual_tokens": avg([r["tokens"]["final"] for r in ok]),
        "mean_prefill_tflops": avg([r["tflops"]["after"] for r in ok]),
        "mean_answer_s": avg(
            [
                r["timings_s"]["compression"]
                + (r["timings_s"]["prefill"] + r["timings_s"]["generation"]) / r["batch_rows"]
                for r in ok
            ]
        ),  # fmt: skip
    }


def test_report_numbers_equal_numbers_recomputed_from_the_records(sweep_file):
    records = read_jsonl(sweep_file)
    result = report(sweep_file, "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert [r["level"] for r in rows] == [{"retention": v} for v in LEVELS]
    base = recompute(records, {"retention": 1.0})["accuracy"]
    assert base > 0
    for row in rows:
        want = recompute(records, row["level"])
        assert row["n"] == want["n"] == 4 and row["n_error"] == want["n_error"] == 1, "the broken file counts as failed"
        assert row["accuracy"]["overall"] == pytest.approx(want["accuracy"])
        assert row["accuracy"]["by_group"]["task"]["t2"]["accuracy"] == pytest.approx(want["t2"])
        for key in ("mean_retention", "mean_visual_tokens", "mean_prefill_tflops", "mean_answer_s"):
            assert row[key] == pytest.approx(want[key]), key
        assert row["relative_accuracy"] == pytest.approx(want["accuracy"] / base)
    assert rows[1]["accuracy"]["overall"] < rows[0]["accuracy"]["overall"], "the fake model loses answers at 50 %"

    # the same numbers in CSV (fractions) and Markdown (percent)
    result = report(sweep_file, "--format", "csv")
    table = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [t["level"] for t in table] == ["retention=1", "retention=0.5", "retention=0.25"]
    for t, row in zip(table, rows, strict=True):
        assert float(t["accuracy"]) == pytest.approx(row["accuracy"]["overall"])
        assert float(t["accuracy:task=t2"]) == pytest.approx(row["accuracy"]["by_group"]["task"]["t2"]["accuracy"])
        assert float(t["mean_visual_tokens"]) == pytest.approx(row["mean_visual_tokens"])
        assert int(t["n_error"]) == 1
    result = report(sweep_file, "--format", "markdown")
    lines = result.stdout.splitlines()
    assert lines[0].startswith("| level | n | failed | accuracy |") and len(lines) == 2 + len(LEVELS)
    assert f"| {rows[0]['accuracy']['overall'] * 100:.1f} |" in lines[2]
    # the terminal table (rich) shows every level
    result = report(sweep_file)
    assert all(f"retention={v:g}" in result.stdout for v in LEVELS) and "task=t2" in result.stdout


def test_report_keeps_one_record_per_job_and_ignores_a_partial_line(sweep_file, tmp_path):
    records = read_jsonl(sweep_file)
    failed = next(r for r in records if r["status"] != "ok" and r["level"] == {"retention": 1.0})
    fixed = {**next(r for r in records if r["status"] == "ok" and r["level"] == {"retention": 1.0}),
             "id": failed["id"], "video": failed["video"], "correct": True, "expected": "A", "task": "t2"}  # fmt: skip
    with open(sweep_file, "a") as f:
        f.write(json.dumps(fixed) + "\n" + '{"id": "half')  # a retry that succeeded, then a killed write
    rows = json.loads(report(sweep_file, "--format", "json").stdout)["rows"]
    assert rows[0]["n"] == 4 and rows[0]["n_error"] == 0, "the retry replaces the error it fixed"


def test_report_two_runs_with_different_profiles(fake_cli, folder, tmp_path):
    man = folder / "jobs.jsonl"
    man.write_text(json.dumps({"video": "a.mp4", "question": "Q?"}) + "\n" + json.dumps({"video": "b.mp4",
                   "question": "Q?"}) + "\n")  # fmt: skip
    for name in ("off", "r50"):
        assert fake_cli("--manifest", man, "-o", f"{name}.jsonl", "--profile", name).exit_code == 0
    files = [tmp_path / "off.jsonl", tmp_path / "r50.jsonl"]
    by_level = json.loads(report(*files, "--format", "json").stdout)["rows"]
    assert [r["level"] for r in by_level] == [{"retention": 1.0}, {"retention": 0.5}]
    assert [r["n"] for r in by_level] == [2, 2] and by_level[0]["mean_retention"] == 1.0
    assert all(r["accuracy"] is None for r in by_level), "no expected answers: tokens and time only"
    by_profile = json.loads(report(*files, "--by", "profile", "--format", "json").stdout)["rows"]
    hashes = [read_jsonl(f)[0]["config_hash"] for f in files]
    assert [r["label"] for r in by_profile] == [f"off {hashes[0]}", f"r50 {hashes[1]}"]
    assert by_profile[1]["mean_visual_tokens"] <= 8 < by_profile[0]["mean_visual_tokens"]
    md = report(*files, "--format", "markdown").stdout
    assert "accuracy" not in md and md.splitlines()[0].startswith("| level | n | failed | retention |")
    if importlib.util.find_spec("matplotlib") is not None:  # without answers: the cost panel alone
        assert report(*files, "--plot", tmp_path / "cost.png").exit_code == 0
        assert (tmp_path / "cost.png").read_bytes()[:4] == b"\x89PNG"


def test_report_plot_writes_a_png(sweep_file, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "sweep.png"
    result = report(sweep_file, "--plot", png)
    assert result.exit_code == 0, result.output
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_report_without_matplotlib_says_how_to_install_it(sweep_file, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    result = report(sweep_file, "--plot", tmp_path / "x.png")
    assert result.exit_code == OptionError.exit_code and "matplotlib" in result.stderr, result.output
    assert "pip install 'scissor-cli[plot]'" in result.stderr and not (tmp_path / "x.png").exists()
    assert result.stdout == "", "nothing is reported before the bad option stops it"


def test_report_bad_input(sweep_file, tmp_path):
    cases = [
        ([tmp_path / "missing.jsonl"], ManifestError, "no such file"),
        ([sweep_file, "--format", "xml"], OptionError, "unknown format"),
        ([sweep_file, "--by", "video"], OptionError, "cannot group"),
        ([sweep_file, "--plot", tmp_path / "x.jpg"], OptionError, "must end in"),
        ([sweep_file, "--plot", tmp_path / "nope" / "x.png"], OptionError, "does not exist"),
    ]
    summary = tmp_path / "sweep.summary.json"
    cases.append(([summary], ManifestError, "line 1 is not a batch record"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    cases.append(([empty], ManifestError, "has no records"))
    for args, error, words in cases:
        result = report(*args)
        assert result.exit_code == error.exit_code, (args, result.output)
        assert words in result.stderr and "hint:" in result.stderr and "Traceback" not in result.output, args


def test_report_imports_no_torch(sweep_file):
    code = (
        "import sys\n"
        "from scissor_cli.cli import app\n"
        f"for args in (['report', {str(sweep_file)!r}], ['report', {str(sweep_file)!r}, '--format', 'csv']):\n"
        "    try:\n"
        "        app(args)\n"
        "    except SystemExit as e:\n"
        "        assert e.code in (0, None), (args, e.code)\n"
        "heavy = [m for m in ('torch', 'transformers', 'decord', 'numpy') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout, f"report imported heavy modules: {out.stdout.splitlines()[-1]}"


def test_report_help_shows_examples():
    result = report("--help")
    assert result.exit_code == 0 and "Examples" in result.output and "scissor report" in result.output
    assert "--format" in result.output and "--plot" in result.output

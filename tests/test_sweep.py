"""Retention sweeps in batch mode (one decode + one vision tower pass per video for every level, one record per job
and level, resume per (job, level), the per-level summary) and the prompt presets in a run (their text:
test_scoring.py). Most tests use ``FakeVLM`` from test_batch; one runs the CLI on the tiny random checkpoint and the
sample clip."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import test_batch
from test_batch import TESTS_DIR, FakeVLM, fake_profile, read_jsonl, wait_for_records

from scissor_cli.batch import Sweep, config_hash, run_batch, run_config, sweep_from_flags
from scissor_cli.choices import prompt_template
from scissor_cli.errors import ManifestError, OptionError
from scissor_cli.jobs import Job, jobs_from_manifest, jobs_from_paths

# test_batch's fixtures, shared: the clips (made once per module), a fresh copy of them, the cache/env isolation and
# the in-process CLI with the fake model
clips, folder, isolated, fake_cli = test_batch.clips, test_batch.folder, test_batch.isolated, test_batch.fake_cli
SAMPLE = TESTS_DIR.parent / "samples" / "bigbuckbunny.mp4"
LEVELS = (1.0, 0.5, 0.25)


def good_jobs(folder: Path, question: str = "Q?") -> list[Job]:
    return [j for j in jobs_from_paths([str(folder)], question) if "bad" not in j.video]


class CountingDecode:
    """Wraps scissor_cli.video.sample_frames to count decodes per video."""

    def __init__(self, monkeypatch):
        import scissor_cli.video as video_io

        self.calls: list[str] = []
        real = video_io.sample_frames

        def counted(path, *args, **kwargs):
            self.calls.append(str(path))
            return real(path, *args, **kwargs)

        monkeypatch.setattr(video_io, "sample_frames", counted)


# --------------------------------------------------------------------------------------------------- sweeps
def test_sweep_decodes_and_encodes_each_video_once(folder, tmp_path, monkeypatch):
    decodes = CountingDecode(monkeypatch)
    vlm = FakeVLM()
    jobs = good_jobs(folder, "Q?") + [Job("x2", str(folder / "a.mp4"), "Another?")]
    out = tmp_path / "r.jsonl"
    summary = run_batch(lambda: vlm, jobs, str(out), fake_profile(), batch_size=8, sweep=Sweep("retention", LEVELS))
    records = read_jsonl(out)
    assert len(records) == len(jobs) * len(LEVELS) == summary.n_done
    assert vlm.n_encoded == 4, "one vision tower pass per video, whatever the number of levels and questions"
    assert sorted(decodes.calls) == sorted({j.video for j in jobs}), "one decode per video"
    by_id = {r["id"]: r for r in records}
    for job in jobs:
        for value in LEVELS:
            r = by_id[f"{job.id}@retention={value:g}"]
            assert r["level"] == {"retention": value} and r["status"] == "ok"
            n_original = r["tokens"]["original"]
            assert r["tokens"]["final"] <= max(1, int(value * n_original)), (value, r["tokens"])
            if value == 1.0:
                assert r["tokens"]["final"] == n_original and r["retention"] == 1.0 and r["tau"] is None
            else:
                assert r["tokens"]["final"] < n_original
                assert r["profile"]["compression"]["retention"] == value
    # a video's levels (and questions) share generate calls: 2 questions x 3 levels of a.mp4 fit in one batch of 8
    assert max(vlm.generate_rows) == 8 and sum(vlm.generate_rows) == len(records)
    assert len({r["config_hash"] for r in records}) == 1 and records[0]["config"]["sweep"] == "retention"


def test_tokens_and_tau_sweeps(folder, tmp_path):
    jobs = good_jobs(folder)[:2]
    out = tmp_path / "t.jsonl"
    run_batch(FakeVLM, jobs, str(out), fake_profile(), sweep=Sweep("tokens", (12, 6)))
    for r in read_jsonl(out):
        assert r["level"]["tokens"] in (12, 6) and r["tokens"]["final"] <= r["level"]["tokens"]
        assert r["id"].endswith(f"@tokens={r['level']['tokens']}")
    out = tmp_path / "tau.jsonl"
    run_batch(FakeVLM, jobs, str(out), fake_profile(), sweep=Sweep("tau", (0.99, 0.5)))
    records = read_jsonl(out)
    assert {r["tau"] for r in records} == {0.99, 0.5}
    finals = {r["level"]["tau"]: r["tokens"]["final"] for r in records if r["video"] == jobs[0].video}
    assert finals[0.5] <= finals[0.99], "a lower tau merges more"


def test_more_levels_resume_only_the_missing_ones(folder, tmp_path):
    jobs = good_jobs(folder)
    out = tmp_path / "r.jsonl"
    run_batch(FakeVLM, jobs, str(out), fake_profile(), sweep=Sweep("retention", (1.0, 0.5)))
    first = out.read_bytes()
    vlm = FakeVLM()
    summary = run_batch(lambda: vlm, jobs, str(out), fake_profile(), sweep=Sweep("retention", (1.0, 0.5, 0.25)))
    assert summary.n_skipped == 2 * len(jobs) and summary.n_done == len(jobs)
    assert out.read_bytes().startswith(first), "earlier levels' records kept as they were"
    new = read_jsonl(out)[len(jobs) * 2 :]
    assert {json.dumps(r["level"]) for r in new} == {'{"retention": 0.25}'}
    assert vlm.n_encoded == 4, "only videos with a missing level are encoded again, once each"
    # the same sweep again: nothing to do, the model is not even loaded
    loads = []
    summary = run_batch(lambda: loads.append(1) or FakeVLM(), jobs, str(out), fake_profile(),
                        sweep=Sweep("retention", (0.5, 0.25)))  # fmt: skip
    assert loads == [] and summary.n_done == 0 and summary.n_skipped == 2 * len(jobs)
    levels = summary.totals["levels"]
    assert [row["level"] for row in levels] == [{"retention": 1.0}, {"retention": 0.5}, {"retention": 0.25}]
    assert all(row["n"] == len(jobs) for row in levels), "the summary covers every level in the output"


def test_sweep_output_refuses_other_settings_and_a_single_level_run(folder, tmp_path):
    jobs = good_jobs(folder)[:1]
    out = tmp_path / "r.jsonl"
    run_batch(FakeVLM, jobs, str(out), fake_profile(), sweep=Sweep("retention", (1.0, 0.5)))
    with pytest.raises(OptionError, match="sampling.n_frames"):
        run_batch(FakeVLM, jobs, str(out), fake_profile().override(sampling={"n_frames": 3}),
                  sweep=Sweep("retention", (1.0, 0.5)))  # fmt: skip
    with pytest.raises(OptionError, match="sweep"):
        run_batch(FakeVLM, jobs, str(out), fake_profile().override(compression={"retention": 0.5}))
    with pytest.raises(OptionError, match="sweep"):
        run_batch(FakeVLM, jobs, str(out), fake_profile(), sweep=Sweep("tokens", (4,)))
    # the config of a sweep does not depend on its levels, nor on the profile's own budget
    base = run_config(fake_profile(), Sweep("retention", (1.0, 0.5)))
    assert base == run_config(fake_profile().override(compression={"tokens": 7}), Sweep("retention", (0.1,)))
    assert config_hash(base) != config_hash(run_config(fake_profile()))


SWEEP_DRIVER = """
import json, sys
sys.path.insert(0, {tests!r})
from test_batch import FakeVLM, fake_profile
from scissor_cli.batch import Sweep, jobs_from_paths, run_batch

folder, out, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])
jobs = [j for j in jobs_from_paths([folder], "Q?") if "bad" not in j.video]
run_batch(lambda: FakeVLM(delay_s=delay), jobs, out, fake_profile(), batch_size=1,
          sweep=Sweep("retention", (1.0, 0.5, 0.25)))
"""


def test_sigkill_mid_sweep_then_resume_adds_only_missing_levels(folder, tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(textwrap.dedent(SWEEP_DRIVER.format(tests=str(TESTS_DIR))))
    out = tmp_path / "r.jsonl"
    proc = subprocess.Popen([sys.executable, str(driver), str(folder), str(out), "0.5"],
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    wait_for_records(proc, out, 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()
    before = read_jsonl(out)
    assert 2 <= len(before) < 12, len(before)
    with open(out, "ab") as f:
        f.write(b'{"id": "half')  # as if the kill had landed inside a write

    jobs = good_jobs(folder)
    vlm = FakeVLM()
    summary = run_batch(lambda: vlm, jobs, str(out), fake_profile(), sweep=Sweep("retention", (1.0, 0.5, 0.25)))
    assert summary.n_skipped == len(before) and summary.n_done == 12 - len(before)
    ids = [r["id"] for r in read_jsonl(out)]
    assert sorted(ids) == sorted(f"{j.id}@retention={v:g}" for j in jobs for v in (1.0, 0.5, 0.25))
    assert vlm.n_encoded == len({r["video"] for r in read_jsonl(out)[len(before) :]})


class LevelVLM(FakeVLM):
    """Answers "A" when it sees more than ``threshold`` visual tokens, else "B" (accuracy that falls with retention)."""

    def __init__(self, threshold: int):
        super().__init__()
        self.threshold = threshold

    def generate(self, requests, gen):
        out = super().generate(requests, gen)
        out.texts = ["A" if t.shape[0] > self.threshold else "B" for t, _ in requests]
        out.prefill_s, out.generation_s = 0.01 * sum(t.shape[0] for t, _ in requests), 0.5  # a call's, not a row's
        return out


def test_summary_has_one_row_per_level_with_relative_accuracy(folder, tmp_path):
    rows = [{"video": "a.mp4", "question": "Q1", "options": ["x", "y"], "answer": "A", "task": "t1"},
            {"video": "b.mp4", "question": "Q2", "options": ["x", "y"], "answer": "A", "task": "t2"},
            {"video": "bad.mp4", "question": "Q3", "options": ["x", "y"], "answer": "A", "task": "t2"}]  # fmt: skip
    man = folder / "jobs.jsonl"
    man.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "r.jsonl"
    summary = run_batch(lambda: LevelVLM(threshold=10), jobs_from_manifest(str(man)), str(out), fake_profile(),
                        sweep=Sweep("retention", LEVELS))  # fmt: skip
    levels = summary.totals["levels"]
    assert [r["level"] for r in levels] == [{"retention": v} for v in LEVELS]
    full, half, quarter = levels
    assert full["n"] == 3 and full["n_error"] == 1 and full["accuracy"]["overall"] == pytest.approx(2 / 3)
    assert full["accuracy"]["by_group"]["task"]["t2"]["accuracy"] == 0.5, "the failed job counts as wrong"
    assert half["accuracy"]["overall"] == 0 and half["relative_accuracy"] == 0 and full["relative_accuracy"] == 1
    assert full["mean_visual_tokens"] == 16 and half["mean_visual_tokens"] <= 8 and quarter["mean_retention"] <= 0.25
    assert full["mean_prefill_tflops"] > half["mean_prefill_tflops"] > 0
    assert all(r["mean_answer_s"] is not None for r in levels)
    on_disk = json.loads((tmp_path / "r.summary.json").read_text())
    assert on_disk["levels"] == json.loads(json.dumps(levels))


# ------------------------------------------------------------------------------------------------------ CLI
def test_cli_two_lists_and_bad_lists_exit_2(fake_cli, folder):
    for args, words in (
        (["--retention", "1,0.5", "--tokens", "10,20"], "both lists"),
        (["--tau", "0.9,0.8", "--retention", "0.5,0.1"], "both lists"),
        (["--retention", "1,x"], "not a number"),
        (["--tokens", "10,2.5"], "not an integer"),
        (["--retention", "1,,0.5"], "empty value"),
        (["--retention", "1,1.5"], "compression.retention"),
        (["--retention", "1,0.5", "--no-compress"], "contradicts"),
        (["--prompt", "mmbench"], "no such preset"),
    ):
        result = fake_cli(folder / "a.mp4", "-q", "Q?", *args)
        assert result.exit_code == 2, (args, result.output)
        assert words in result.stderr and "Traceback" not in result.output, (args, result.stderr)
    assert fake_cli.loads == []


def test_cli_sweep_summary_table_and_single_values_still_work(fake_cli, folder, tmp_path):
    result = fake_cli(folder / "a.mp4", folder / "b.mp4", "-q", "Q?", "--retention", "1,0.5,0.25", "-o", "s.jsonl")
    assert result.exit_code == 0, result.output
    assert "by level" in result.stdout and "retention=0.25" in result.stdout, result.stdout
    assert len(read_jsonl(tmp_path / "s.jsonl")) == 6 and len(fake_cli.loads) == 1
    assert "ok " in result.stderr and "a.mp4 @ retention=0.25" in result.stderr, "progress lines name the level"
    result = fake_cli(folder / "a.mp4", "-q", "Q?", "--retention", "0.5", "-o", "one.jsonl")
    assert result.exit_code == 0, result.output
    (record,) = read_jsonl(tmp_path / "one.jsonl")
    assert "level" not in record and "@" not in record["id"] and record["config"]["compression"]["retention"] == 0.5


def test_sweep_from_flags_keeps_the_single_values():
    sweep, singles = sweep_from_flags("1,0.5,0.5", None, "0.8")
    assert sweep == Sweep("retention", (1.0, 0.5)) and singles == {"retention": None, "tokens": None, "tau": 0.8}
    assert sweep_from_flags("0.5", None, None) == (None, {"retention": 0.5, "tokens": None, "tau": None})


def test_cli_sweep_on_tiny_checkpoint_and_sample_clip(tiny_hf_dir, tmp_path, monkeypatch):
    """The real model path: one vision tower call for the sample clip and every level within its budget."""
    from typer.testing import CliRunner

    import scissor_cli.model
    from scissor_cli.cli import app

    calls = []
    real = scissor_cli.model.VisionLanguageModel.encode

    def counted(self, frames, **kw):
        calls.append(frames.shape[0])
        return real(self, frames, **kw)

    monkeypatch.setattr(scissor_cli.model.VisionLanguageModel, "encode", counted)
    out = tmp_path / "s.jsonl"
    args = ["batch", str(SAMPLE), "-q", "What happens?", "-o", str(out), "--model", str(tiny_hf_dir), "--frames", "4",
            "--max-new-tokens", "3", "--no-cache", "--retention", "1,0.5,0.1,0.05", "--json"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(calls) == 1, f"the vision tower ran {len(calls)} times"
    records = read_jsonl(out)
    assert len(records) == 4
    for r in records:
        budget = max(1, int(r["level"]["retention"] * r["tokens"]["original"] + 1e-9))
        assert r["tokens"]["final"] <= budget and r["status"] == "ok"
    assert [row["n"] for row in json.loads(result.stdout)["levels"]] == [1, 1, 1, 1]


# ------------------------------------------------------------------------------------------------ prompt presets
def test_prompt_preset_per_run_and_per_manifest_row(folder, tmp_path):
    rows = [{"id": "r", "video": "a.mp4", "question": "Q1", "options": ["x", "y"], "answer": "A"},
            {"id": "m", "video": "a.mp4", "question": "Q2", "options": ["x", "y"], "answer": "A",
             "prompt": "MVBench"}]  # fmt: skip
    man = folder / "jobs.jsonl"
    man.write_text("".join(json.dumps(r) + "\n" for r in rows))
    jobs = jobs_from_manifest(str(man))
    assert [j.prompt for j in jobs] == [None, "mvbench"]
    out = tmp_path / "r.jsonl"
    run_batch(lambda: FakeVLM(answers={"Question:Q2": "A"}), jobs, str(out), fake_profile(), prompt="nextqa")
    by_id = {r["id"]: r for r in read_jsonl(out)}
    assert by_id["r"]["prompt"] == "Q1\nA. x\nB. y", "the run's preset"
    assert by_id["m"]["prompt"].startswith("Question:Q2\nOption:\n(A) x") and by_id["m"]["correct"] is True
    assert by_id["r"]["config"]["prompt_template"] == prompt_template("nextqa")
    with pytest.raises(OptionError, match="prompt_template"):
        run_batch(FakeVLM, jobs, str(out), fake_profile(), prompt="videomme")
    with pytest.raises(OptionError, match="unknown prompt preset"):
        run_batch(FakeVLM, jobs, str(tmp_path / "x.jsonl"), fake_profile(), prompt="mmbench")
    man.write_text(json.dumps({**rows[0], "prompt": "mmbench"}) + "\n")
    with pytest.raises(ManifestError, match="line 1: prompt 'mmbench' is not a prompt preset"):
        jobs_from_manifest(str(man))
    # a derived id changes with the row's preset: the same question asked two ways are two jobs
    man.write_text(json.dumps({"video": "a.mp4", "question": "Q"}) + "\n"
                   + json.dumps({"video": "a.mp4", "question": "Q", "prompt": "plain"}) + "\n")  # fmt: skip
    assert len({j.id for j in jobs_from_manifest(str(man))}) == 2


# ------------------------------------------------------------------------------------------------ inspect --sweep
def test_inspect_sweep_takes_the_same_lists(tiny_hf_dir):
    from typer.testing import CliRunner

    from scissor_cli.cli import app

    def run(*args):
        result = CliRunner().invoke(app, ["inspect", str(SAMPLE), "--model", str(tiny_hf_dir), "--frames", "4",
                                          "--no-cache", *args])  # fmt: skip
        return result

    result = run("--sweep", "--retention", "1,0.5,0.1", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["sweep"]
    assert [r["level"] for r in rows] == [{"retention": 1.0}, {"retention": 0.5}, {"retention": 0.1}]
    original = json.loads(result.stdout)["tokens"]["original"]
    assert rows[0]["final"] == original and rows[0]["tau"] is None
    for r in rows[1:]:
        assert r["final"] <= int(r["level"]["retention"] * original) and r["tau"] is not None
    result = run("--tokens", "40,20", "--json")  # a list sweeps without --sweep too
    rows = json.loads(result.stdout)["sweep"]
    assert [r["level"] for r in rows] == [{"tokens": 40}, {"tokens": 20}] and all(
        r["final"] <= r["level"]["tokens"] for r in rows
    )
    result = run("--sweep", "--tau", "0.95,0.5", "--json")
    rows = json.loads(result.stdout)["sweep"]
    assert [r["tau"] for r in rows] == [0.95, 0.5] and "level" not in rows[0]
    result = run("--retention", "1,0.1")
    assert result.exit_code == 0 and "tokens by budget" in result.stdout and "retention=0.1" in result.stdout
    result = run("--retention", "1,0.1", "--tau", "0.9,0.8")
    assert result.exit_code == 2 and "both lists" in result.stderr


def test_resume_checks_each_records_level(folder, tmp_path):
    """The config leaves the levels out, so a record of the sweep's config without a proper level is refused."""
    jobs = good_jobs(folder)[:1]
    out = tmp_path / "r.jsonl"
    sweep = Sweep("retention", (1.0, 0.5))
    run_batch(FakeVLM, jobs, str(out), fake_profile(), sweep=sweep)
    records = read_jsonl(out)
    loads = []
    for level in (None, {"tokens": 8}, {"retention": "half"}):
        edited = {**records[1], "id": "extra"}
        edited.pop("level")
        if level is not None:
            edited["level"] = level
        out.write_text("".join(json.dumps(r) + "\n" for r in [records[0], edited]))
        with pytest.raises(OptionError, match="'extra' has level"):
            run_batch(lambda: loads.append(1) or FakeVLM(), jobs, str(out), fake_profile(), sweep=sweep)
        assert loads == []


def test_ctrl_c_right_after_a_write_counts_that_record(folder, tmp_path, monkeypatch):
    """Ctrl-C landing after a record's line was written (during its fsync) still counts it as saved."""
    import scissor_cli.batch.runner as batch_mod
    from scissor_cli.errors import Interrupted

    real = batch_mod._append_line

    def write_then_interrupt(fd, record):
        real(fd, record)
        raise KeyboardInterrupt

    monkeypatch.setattr(batch_mod, "_append_line", write_then_interrupt)
    jobs = good_jobs(folder)[:2]
    out = tmp_path / "r.jsonl"
    with pytest.raises(Interrupted) as e:
        run_batch(FakeVLM, jobs, str(out), fake_profile(), batch_size=1, sweep=Sweep("retention", (1.0, 0.5)))
    assert "1 of 4 jobs are saved" in e.value.message and "(1 in this run)" in e.value.message, e.value.message
    assert len(read_jsonl(out)) == 1

"""Batch mode: records and failures, resume (incl. SIGKILL), accuracy, batching, two processes, and the CLI command
(job sources and manifests: test_jobs.py; prompts and scoring: test_scoring.py). Most tests use ``FakeVLM``
(deterministic, instant) on real tiny videos; the batched == unbatched check and the CLI tests use the tiny random
checkpoint."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from scissor_cli.batch import config_hash, part_path, run_batch, run_config, summary_path_for
from scissor_cli.choices import (
    MC_INSTRUCTION,
    build_prompt,
)
from scissor_cli.devices import dtype_name
from scissor_cli.errors import ManifestError, OptionError, VideoError
from scissor_cli.jobs import Job, jobs_from_manifest, jobs_from_paths
from scissor_cli.options import ModelOptions, Profile, SamplingOptions

TESTS_DIR = Path(__file__).resolve().parent


# ------------------------------------------------------------------------------------------------------- fakes
@dataclass
class FakeOutput:
    texts: list[str]
    n_prompt_tokens: list[int]
    prefill_s: float = 0.0
    generation_s: float = 0.0
    n_new_tokens: list[int] = field(default_factory=list)
    token_ids: list[list[int]] = field(default_factory=list)


class FakeVLM:
    """The VisionLanguageModel surface batch mode uses. Answers: ``answers[question's first line]`` if given, else
    "<K> tokens: <first line>". A question containing "boom" makes ``generate`` raise (an unexpected error)."""

    name, revision, newline = "fake", None, False
    default_tau = default_epsilon = None
    tokens_per_frame, hidden_size, n_layers, ffn_size = 4, 8, 2, 16

    def __init__(self, answers: dict[str, str] | None = None, delay_s: float = 0.0):
        import torch

        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.answers, self.delay_s = answers or {}, delay_s
        self.n_encoded = 0
        self.generate_rows: list[int] = []

    def encode(self, frames):
        import torch

        self.n_encoded += 1
        x = torch.from_numpy(frames).float().permute(0, 3, 1, 2) / 255  # [F, 3, H, W]
        tokens = torch.nn.functional.adaptive_avg_pool2d(x, (2, 2)).flatten(2).transpose(1, 2)  # [F, 4, 3]
        n = tokens.shape[0]
        position = torch.arange(4.0).expand(n, 4).unsqueeze(-1)
        return torch.cat([tokens, torch.ones(n, 4, 1), position, tokens**2], -1)  # [F, 4, 8]

    def check_question(self, question, *, reserve=0, history=(), what="the question"):
        """VisionLanguageModel.check_question's contract with a context of 10,000 characters."""
        if len(question) + reserve > 10_000:
            raise OptionError(f"{what} is {len(question):,} characters; the fake context holds 10,000")
        return len(question)

    def generate(self, requests, gen):
        self.generate_rows.append(len(requests))
        if self.delay_s:
            time.sleep(self.delay_s)
        texts = []
        for tokens, question in requests:
            first = question.splitlines()[0]
            if "boom" in first:
                raise RuntimeError("the fake model exploded")
            texts.append(self.answers.get(first, f"{tokens.shape[0]} tokens: {first}"))
        return FakeOutput(texts, [t.shape[0] + len(q.split()) for t, q in requests])


def fake_profile(**sampling) -> Profile:
    return Profile(sampling=SamplingOptions(n_frames=4, **sampling), model=ModelOptions(model="fake", cache=False))


class RecordingView:
    def __init__(self):
        self.started, self.notes, self.statuses, self.records = None, [], [], []

    def start(self, n_total, n_skipped):
        self.started = (n_total, n_skipped)

    def note(self, text):
        self.notes.append(text)

    def status(self, text):
        self.statuses.append(text)

    def job_done(self, record):
        self.records.append(record)


def stamped(record: dict, profile: Profile | None = None) -> dict:
    """A hand-written record carrying the config a run with ``profile`` (default ``fake_profile()``) records."""
    config = run_config(profile or fake_profile())
    return {**record, "config_hash": config_hash(config), "config": config}


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def wait_for_records(proc, out: Path, n: int, timeout: float = 90.0) -> None:
    """Wait until ``out`` holds ``n`` complete lines while ``proc`` still runs (a kill or Ctrl-C then lands mid-run)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.read_bytes().count(b"\n") >= n:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the run ended before it was stopped: {proc.stderr.read().decode()[-2000:]}"


def make_clip(path: Path, pattern: str = "testsrc", seconds: float = 1.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", f"{pattern}=size=64x48:rate=10"]
        + ["-t", str(seconds), "-pix_fmt", "yuv420p", str(path)],
        check=True,
        timeout=60,
    )
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    """Four decodable clips (two in a sub folder) and one corrupt file, made once."""
    d = tmp_path_factory.mktemp("clips")
    out = {
        "a": make_clip(d / "a.mp4", "testsrc"),
        "b": make_clip(d / "b.mp4", "testsrc2"),
        "c": make_clip(d / "sub" / "c.mp4", "rgbtestsrc"),
        "d": make_clip(d / "sub" / "d.mp4", "smptebars"),
    }
    bad = d / "bad.mp4"
    bad.write_bytes(os.urandom(4096))
    out["bad"] = bad
    return out


@pytest.fixture
def folder(clips, tmp_path) -> Path:
    """A fresh copy of the clips: tests may break or fix files in it."""
    d = tmp_path / "videos"
    for src in clips.values():
        dst = d / src.relative_to(src.parent.parent if src.parent.name == "sub" else src.parent)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())
    (d / ".hidden.mp4").write_bytes(b"not scanned")
    (d / "notes.txt").write_text("not a video")
    return d


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("SCISSOR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SCISSOR_DEBUG"):
        monkeypatch.delenv(var, raising=False)


# ----------------------------------------------------------------------------------------------------- running
def test_bad_file_among_good_ones_is_isolated(folder, tmp_path):
    jobs = jobs_from_paths([str(folder)], "What happens?")
    out = tmp_path / "out" / "results.jsonl"
    out.parent.mkdir()
    view = RecordingView()
    vlm = FakeVLM()
    summary = run_batch(lambda: vlm, jobs, str(out), fake_profile(), batch_size=2, view=view)

    records = read_jsonl(out)
    assert [r["id"] for r in view.records] == [r["id"] for r in records], "view sees records as they are written"
    assert sorted(r["id"] for r in records) == sorted(j.id for j in jobs)
    bad = [r for r in records if r["status"] == "error"]
    assert len(bad) == 1 and bad[0]["video"].endswith("bad.mp4"), records
    assert bad[0]["error"] and bad[0]["hint"] and bad[0]["error_type"] == VideoError.__name__
    ok = [r for r in records if r["status"] == "ok"]
    for r in ok:
        assert r["answer"] == f"{r['tokens']['final']} tokens: What happens?", r
        assert r["tokens"]["original"] == 4 * 4 and 0 < r["retention"] <= 1 and r["model"] == "fake"
        assert "profile" in r and "timings_s" in r and r["batch_rows"] in (1, 2)
    assert (summary.n_total, summary.n_done, summary.n_failed, summary.n_skipped) == (5, 4, 1, 0)
    assert summary.mean_retention == pytest.approx(sum(r["retention"] for r in ok) / 4)
    assert summary.mean_time_s > 0 and summary.accuracy is None
    assert view.started == (5, 0) and any("loading" in s for s in view.notes)
    assert vlm.n_encoded == 4 and vlm.generate_rows == [2, 2], "4 good videos, batch_size 2"


def test_shared_encoding_and_batch_isolation(folder, tmp_path):
    a, b = str(folder / "a.mp4"), str(folder / "b.mp4")
    jobs = [Job(f"a{i}", a, f"Question {i}?") for i in range(3)]
    jobs += [Job("boom", b, "boom?"), Job("b1", b, "Fine?")]
    vlm = FakeVLM()
    out = tmp_path / "r.jsonl"
    summary = run_batch(lambda: vlm, jobs, str(out), fake_profile(), batch_size=4)
    assert vlm.n_encoded == 2, "one encoding per video, however many questions"
    # [a0 a1 a2 boom] fails as a batch -> 4 single calls, then [b1]
    assert vlm.generate_rows == [4, 1, 1, 1, 1, 1], vlm.generate_rows
    records = {r["id"]: r for r in read_jsonl(out)}
    assert records["boom"]["status"] == "error" and records["boom"]["error"].startswith("RuntimeError: the fake")
    assert "SCISSOR_DEBUG=1" in records["boom"]["hint"] and "traceback" not in records["boom"]
    assert all(records[k]["status"] == "ok" for k in ("a0", "a1", "a2", "b1"))
    assert (summary.n_done, summary.n_failed) == (4, 1)


def test_debug_records_traceback(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("SCISSOR_DEBUG", "1")
    out = tmp_path / "r.jsonl"
    run_batch(FakeVLM, [Job("x", str(folder / "a.mp4"), "boom")], str(out), fake_profile())
    assert "RuntimeError" in read_jsonl(out)[0]["traceback"]


def test_resume_skips_ok_retries_errors_and_keeps_one_record_per_job(folder, tmp_path, clips):
    jobs = jobs_from_paths([str(folder)], "What happens?")
    out = tmp_path / "r.jsonl"
    first = run_batch(FakeVLM, jobs, str(out), fake_profile())
    assert (first.n_done, first.n_failed) == (4, 1)

    loads = []
    again = run_batch(lambda: loads.append(1) or FakeVLM(), jobs, str(out), fake_profile())
    assert (again.n_done, again.n_failed, again.n_skipped) == (0, 1, 4), "only the errored job is retried"

    (folder / "bad.mp4").write_bytes(clips["a"].read_bytes())  # the user fixes the file
    fixed = run_batch(FakeVLM, jobs, str(out), fake_profile())
    assert (fixed.n_done, fixed.n_failed, fixed.n_skipped) == (1, 0, 4)
    records = read_jsonl(out)
    assert sorted(r["id"] for r in records) == sorted(j.id for j in jobs), "one record per job after retries"
    assert all(r["status"] == "ok" for r in records)

    view = RecordingView()
    loads.clear()
    done = run_batch(lambda: loads.append(1) or FakeVLM(), jobs, str(out), fake_profile(), view=view)
    assert (done.n_done, done.n_skipped) == (0, 5) and view.started == (5, 5)
    assert loads == [], "nothing pending: the model is not loaded"

    fresh = run_batch(FakeVLM, jobs[:2], str(out), fake_profile(), overwrite=True)
    assert (fresh.n_done, fresh.n_skipped) == (2, 0) and len(read_jsonl(out)) == 2, "--overwrite starts fresh"


def test_records_without_id_match_by_video_and_question(folder, tmp_path):
    job = Job("new-id", str(folder / "a.mp4"), "Q?")
    out = tmp_path / "r.jsonl"
    out.write_text(json.dumps(stamped({"status": "ok", "video": job.video, "question": "Q?", "answer": "x"})) + "\n")
    assert run_batch(FakeVLM, [job], str(out), fake_profile()).n_skipped == 1


def test_partial_trailing_line_is_cut_away(folder, tmp_path):
    jobs = jobs_from_paths([str(folder / "a.mp4"), str(folder / "b.mp4")], "Q?")
    out = tmp_path / "r.jsonl"
    run_batch(FakeVLM, jobs[:1], str(out), fake_profile())
    with open(out, "ab") as f:
        f.write(b'{"id": "' + jobs[1].id.encode() + b'", "status": "ok", "answ')  # killed mid-write
    summary = run_batch(FakeVLM, jobs, str(out), fake_profile())
    assert (summary.n_done, summary.n_skipped) == (1, 1), "the half-written job is not counted as finished"
    assert [r["id"] for r in read_jsonl(out)] == [j.id for j in jobs]


def test_output_problems_raise_manifest_error(folder, tmp_path):
    jobs = [Job("x", str(folder / "a.mp4"), "Q?")]
    with pytest.raises(ManifestError, match="does not exist") as e:
        run_batch(FakeVLM, jobs, str(tmp_path / "missing" / "r.jsonl"), fake_profile())
    assert "mkdir" in e.value.hint
    with pytest.raises(ManifestError, match="is a folder"):
        run_batch(FakeVLM, jobs, str(tmp_path), fake_profile())
    out = tmp_path / "notes.jsonl"
    out.write_text("just some text\n")
    with pytest.raises(ManifestError, match="not a scissor batch output") as e:
        run_batch(FakeVLM, jobs, str(out), fake_profile())
    assert "--overwrite" in e.value.hint
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ManifestError, match="cannot write"):
            run_batch(FakeVLM, jobs, str(locked / "r.jsonl"), fake_profile())


def test_accuracy_overall_and_per_task(folder, tmp_path):
    rows = [
        {"id": "mc-right", "video": "a.mp4", "question": "Color?", "options": ["red", "blue"], "answer": "B",
         "task": "color"},
        {"id": "mc-text", "video": "a.mp4", "question": "Shape?", "options": ["round", "square"], "answer": "square",
         "task": "shape"},
        {"id": "mc-wrong", "video": "b.mp4", "question": "Size?", "options": ["big", "small"], "answer": "A",
         "task": "shape"},
        {"id": "exact", "video": "b.mp4", "question": "Count?", "answer": "Three.", "task": "count"},
        {"id": "failed", "video": "bad.mp4", "question": "Count?", "answer": "THREE", "task": "count"},
        {"id": "free", "video": "b.mp4", "question": "Describe."},
    ]  # fmt: skip
    man = folder / "jobs.jsonl"
    man.write_text("".join(json.dumps(r) + "\n" for r in rows))
    answers = {"Color?": "B. blue", "Shape?": "It is square.", "Size?": "small", "Count?": "three"}
    out = tmp_path / "results.jsonl"
    summary = run_batch(lambda: FakeVLM(answers), jobs_from_manifest(str(man)), str(out), fake_profile())

    records = {r["id"]: r for r in read_jsonl(out)}
    assert records["mc-right"]["prompt"] == build_prompt("Color?", ("red", "blue"))
    assert records["mc-right"]["question"] == "Color?" and records["mc-right"]["options"] == ["red", "blue"]
    assert (records["mc-right"]["predicted"], records["mc-right"]["correct"]) == ("B", True)
    assert (records["mc-text"]["predicted"], records["mc-text"]["correct"]) == ("B", True)
    assert (records["mc-wrong"]["predicted"], records["mc-wrong"]["correct"]) == ("B", False)
    assert records["exact"]["correct"] is True and records["exact"]["expected"] == "Three."
    assert records["failed"]["status"] == "error" and records["failed"]["correct"] is False
    assert records["failed"]["task"] == "count", "extra manifest fields are kept on error records too"
    assert "correct" not in records["free"] and "expected" not in records["free"]

    acc = summary.accuracy
    assert (acc["overall"], acc["n_correct"], acc["n_scored"], acc["n_failed"]) == (3 / 5, 3, 5, 1)
    by_task = acc["by_group"]["task"]
    assert {k: (v["n_correct"], v["n_scored"]) for k, v in by_task.items()} == {
        "color": (1, 1),
        "count": (1, 2),
        "shape": (1, 2),
    }
    assert summary.summary_path == str(tmp_path / "results.summary.json") == summary_path_for(str(out))
    saved = json.loads(Path(summary.summary_path).read_text())
    assert saved["accuracy"] == acc and saved["n_records"] == 6 and saved["n_error"] == 1

    # a resumed run's summary covers every record in the output, not only its own jobs
    (folder / "bad.mp4").write_bytes((folder / "a.mp4").read_bytes())
    again = run_batch(lambda: FakeVLM(answers), jobs_from_manifest(str(man)), str(out), fake_profile())
    assert (again.n_done, again.n_skipped) == (1, 5)
    assert (again.accuracy["n_correct"], again.accuracy["n_scored"], again.accuracy["n_failed"]) == (4, 5, 0)


def test_batched_answers_equal_unbatched_on_tiny_checkpoint(tiny_hf_dir, folder, tmp_path):
    from scissor_cli.model import load_model

    model = ModelOptions(model=str(tiny_hf_dir), dtype="float32")
    profile = Profile(sampling=SamplingOptions(n_frames=4), model=model)
    profile = profile.override(generation={"max_new_tokens": 8})
    vlm = load_model(profile.model)
    jobs = [j for j in jobs_from_paths([str(folder)], "What is happening?") if "bad" not in j.video]
    jobs += [Job("extra", jobs[0].video, "Describe the video in detail.")]
    answers, prefilled = {}, {}
    for batch_size in (1, 4):
        out = tmp_path / f"b{batch_size}.jsonl"
        summary = run_batch(lambda: vlm, jobs, str(out), profile, batch_size=batch_size)
        assert summary.n_done == len(jobs)
        records = read_jsonl(out)
        assert {r["batch_rows"] for r in records} == ({1} if batch_size == 1 else {4, 1})
        answers[batch_size] = {r["id"]: r["answer"] for r in records}
        same = [r for r in records if r["video"] == jobs[0].video]
        prefilled[batch_size] = sum(r["prefill_tokens"] for r in same)
        visual = same[0]["tokens"]["final"]
    assert answers[1] == answers[4], "left-padded batched generation must answer like one call per question"
    assert prefilled[4] < prefilled[1] - visual, "two questions about one video in a batch: its prefix once"
    assert len(set(answers[1].values())) > 1, "the random model should not give one answer to everything"


# ------------------------------------------------------------------------------------------- other processes
DRIVER = """
import json, sys
sys.path.insert(0, {tests!r})
from test_batch import FakeVLM, RecordingView, fake_profile
from scissor_cli.batch import jobs_from_paths, run_batch

folder, out, delay, report = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
view = RecordingView()
s = run_batch(lambda: FakeVLM(delay_s=delay), jobs_from_paths([folder], "Q?"), out, fake_profile(), batch_size=1,
              view=view)
json.dump({{"n_done": s.n_done, "n_failed": s.n_failed, "n_skipped": s.n_skipped, "output": s.output,
           "ids": [r["id"] for r in view.records]}}, open(report, "w"))
"""


def write_driver(tmp_path) -> Path:
    path = tmp_path / "driver.py"
    path.write_text(textwrap.dedent(DRIVER.format(tests=str(TESTS_DIR))))
    return path


def test_sigkill_mid_run_then_resume(folder, tmp_path):
    driver = write_driver(tmp_path)
    out = tmp_path / "r.jsonl"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(driver), str(folder), str(out), "1.0", str(tmp_path / "rep.json")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    wait_for_records(proc, out, 1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()
    n_before = len(read_jsonl(out))
    assert 1 <= n_before < 5, n_before
    with open(out, "ab") as f:
        f.write(b'{"id": "half')  # as if the kill had landed inside a write

    jobs = jobs_from_paths([str(folder)], "Q?")
    summary = run_batch(FakeVLM, jobs, str(out), fake_profile())
    assert summary.n_skipped == n_before and summary.n_done + summary.n_failed == 5 - n_before
    ids = [r["id"] for r in read_jsonl(out)]
    assert sorted(ids) == sorted(j.id for j in jobs), "every job exactly once"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(driver, folder, out, tmp_path, world_size=2, tag="run") -> list[dict]:
    port = free_port()
    procs = []
    for rank in range(world_size):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank)}
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), SCISSOR_BATCH_BARRIER_S="120")
        report = tmp_path / f"{tag}-{rank}.json"
        cmd = [sys.executable, str(driver), str(folder), str(out), "0", str(report)]
        procs.append((subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT), report))
    reports = []
    for proc, report in procs:
        text = proc.communicate(timeout=180)[0].decode()
        assert proc.returncode == 0, text[-3000:]
        reports.append(json.loads(report.read_text()))
    return reports


def test_two_processes_shard_merge_and_resume(folder, tmp_path, clips):
    driver = write_driver(tmp_path)
    out = tmp_path / "r.jsonl"
    (folder / "bad.mp4").unlink()
    # a part file left by an earlier killed 3-process run: its job counts as done and is merged at the end
    a_job = jobs_from_paths([str(folder / "a.mp4")], "Q?")[0]
    leftover = {"id": a_job.id, "status": "ok", "video": a_job.video, "question": "Q?", "answer": "from before"}
    Path(part_path(str(out), 2, 3)).write_text(json.dumps(stamped(leftover)) + "\n")

    r0, r1 = run_ranks(driver, folder, out, tmp_path)
    jobs = jobs_from_paths([str(folder)], "Q?")
    assert set(r0["ids"]).isdisjoint(r1["ids"]) and r0["ids"] and r1["ids"], "each rank answers its own share"
    assert sorted(r0["ids"] + r1["ids"] + [a_job.id]) == sorted(j.id for j in jobs)
    assert r0["n_skipped"] == r1["n_skipped"] == 1
    assert r0["n_done"] == 3 and r1["n_done"] == len(r1["ids"]), "rank 0 reports every rank's work"
    assert r0["output"] == str(out) and r1["output"] == part_path(str(out), 1, 2)
    records = read_jsonl(out)
    assert sorted(r["id"] for r in records) == sorted(j.id for j in jobs), "merged: every job exactly once"
    assert not list(tmp_path.glob("r.jsonl.part-*")), "merged part files are removed"

    for name in ("e", "f"):
        make_clip(folder / "new" / f"{name}.mp4", "testsrc")
    s0, s1 = run_ranks(driver, folder, out, tmp_path, tag="resume")
    assert sorted(s0["ids"] + s1["ids"]) == sorted(j.id for j in jobs_from_paths([str(folder / "new")], "Q?"))
    assert s0["n_skipped"] == 4 and s0["n_done"] == 2
    assert len(read_jsonl(out)) == 6 and not list(tmp_path.glob("r.jsonl.part-*"))
    assert not list(tmp_path.glob("*.lock")), "each rank locked what it wrote and removed its lock file"


# -------------------------------------------------------------------------------------------------------- CLI
def test_cli_batch_folder_and_manifest(tiny_hf_dir, folder, tmp_path):
    from typer.testing import CliRunner

    from scissor_cli.cli import app

    def run(*args):
        return CliRunner().invoke(app, ["batch", *map(str, args)])

    common = ["--model", tiny_hf_dir, "--frames", "2", "--max-new-tokens", "4"]
    out = tmp_path / "r.jsonl"
    result = run(folder, "-q", "What is happening?", "-o", out, *common)
    assert result.exit_code == 1, f"a failed job exits 1:\n{result.output}"
    records = read_jsonl(out)
    assert len(records) == 5 and sum(r["status"] == "error" for r in records) == 1

    (folder / "bad.mp4").write_bytes((folder / "a.mp4").read_bytes())  # fixed: the errored job is retried
    result = run(folder, "-q", "What is happening?", "-o", out, *common)
    assert result.exit_code == 0, result.output
    assert "4 of 5 jobs already in the output" in result.output, result.output
    assert [r["status"] for r in read_jsonl(out)] == ["ok"] * 5, "one record per job, the error replaced"

    man = folder / "jobs.csv"
    man.write_text("video,question,options,answer,task\na.mp4,Which?,x|y,A,t1\nb.mp4,Which?,x|y,y,t2\n")
    summary_file = tmp_path / "m.summary.json"
    result = run("--manifest", man, "-o", tmp_path / "m.jsonl", "--batch-size", "2", *common)
    assert result.exit_code == 0, result.output
    assert json.loads(summary_file.read_text())["accuracy"]["n_scored"] == 2

    bad = folder / "bad.jsonl"
    bad.write_text('{"video": "a.mp4"}\n')
    result = run("--manifest", bad, "-o", tmp_path / "x.jsonl", *common)
    assert result.exit_code == ManifestError.exit_code and "line 1" in result.stderr, result.output
    result = run(folder, "-o", tmp_path / "x.jsonl", *common)
    assert result.exit_code == 2, "a usage error (no question) exits 2"


# ------------------------------------------------------------------------------------ CLI with the fake model
@pytest.fixture
def fake_cli(monkeypatch, tmp_path):
    """``scissor batch ...`` in process with ``load_model`` replaced by FakeVLM (instant, deterministic); returns
    ``run(*args) -> Result`` and records each load in ``run.loads``. Runs in ``tmp_path`` (a stray file named "-"
    would land there)."""
    from typer.testing import CliRunner

    import scissor_cli.model
    from scissor_cli.cli import app

    loads = []
    monkeypatch.setattr(scissor_cli.model, "load_model", lambda opts, **kw: loads.append(opts) or FakeVLM())
    monkeypatch.chdir(tmp_path)

    def run(*args):
        return CliRunner().invoke(app, ["batch", *map(str, args), "--model", "fake", "--frames", "4", "--no-cache"])

    run.loads = loads
    return run


def file_bytes(*paths) -> dict:
    return {str(p): Path(p).read_bytes() for p in paths}


# ------------------------------------------------------------------- 1. an output that is an input is refused
@pytest.mark.parametrize("overwrite", [False, True])
def test_output_resolving_to_an_input_is_refused_untouched(folder, tmp_path, overwrite):
    man = folder / "jobs.jsonl"
    man.write_text(json.dumps({"video": "a.mp4", "question": "Q?"}) + "\n")
    (tmp_path / "link.jsonl").symlink_to(man)
    os.link(man, tmp_path / "hard.jsonl")
    array = folder / "r.summary.json"  # a .json manifest that r.jsonl's summary file would replace
    array.write_text(json.dumps([{"video": "b.mp4", "question": "Q?"}]))
    jobs = jobs_from_manifest(str(man)) + [Job("b", str(folder / "b.mp4"), "Q?")]
    before = file_bytes(man, array, folder / "a.mp4", folder / "b.mp4")
    loads = []
    cases = [
        (str(man), [str(man)], "is the manifest"),
        (os.path.relpath(man), [str(man)], "is the manifest"),  # another spelling of the same file
        (str(folder / "." / "jobs.jsonl"), [str(man)], "is the manifest"),
        (str(tmp_path / "link.jsonl"), [str(man)], "is the manifest"),  # through a symlink
        (str(tmp_path / "hard.jsonl"), [str(man)], "is the manifest"),  # a hard link
        (str(folder / "a.mp4"), [str(man)], "is a video of the job list"),
        (str(folder / "sub" / ".." / "b.mp4"), [], "is a video of the job list"),
        (str(folder / "r.jsonl"), [str(array)], "writes its summary to"),
    ]
    for output, inputs, words in cases:
        with pytest.raises(ManifestError) as e:
            run_batch(lambda: loads.append(1) or FakeVLM(), jobs, output, fake_profile(), overwrite=overwrite,
                      inputs=inputs)  # fmt: skip
        assert words in e.value.message and "\n" not in e.value.message, e.value.message
        assert e.value.hint and "-o" in e.value.hint
        assert file_bytes(man, array, folder / "a.mp4", folder / "b.mp4") == before, f"{output} was touched"
    assert loads == [] and not (folder / "r.jsonl").exists()


def test_cli_output_equal_to_manifest_exits_6_and_keeps_it(fake_cli, folder):
    man = folder / "jobs.jsonl"
    man.write_text(json.dumps({"video": "a.mp4", "question": "Q?"}) + "\n")
    before = man.read_bytes()
    for extra in ([], ["--overwrite"]):
        result = fake_cli("--manifest", man, "-o", man, *extra)
        assert result.exit_code == ManifestError.exit_code, result.output
        assert "is the manifest" in result.stderr and "Traceback" not in result.output
        assert man.read_bytes() == before and fake_cli.loads == []


# ------------------------------------------------------------------------- 2. one output, one configuration
def test_records_carry_config_and_hash(folder, tmp_path):
    out = tmp_path / "r.jsonl"
    profile = fake_profile().override(compression={"retention": 0.5}, generation={"temperature": 0.7, "seed": 3})
    run_batch(FakeVLM, [Job("x", str(folder / "a.mp4"), "Q?"), Job("boom", str(folder / "a.mp4"), "boom?")],
              str(out), profile)  # fmt: skip
    records = read_jsonl(out)
    assert {r["status"] for r in records} == {"ok", "error"}, "error records carry the config too"
    for r in records:
        config = r["config"]
        assert r["config_hash"] == config_hash(config) == config_hash(run_config(profile))
        assert len(r["config_hash"]) == 12 and int(r["config_hash"], 16) >= 0
        assert config["sampling"]["n_frames"] == 4 and config["compression"]["retention"] == 0.5
        assert config["generation"] == {"max_new_tokens": 128, "temperature": 0.7, "top_p": 1.0, "seed": 3}
        dtype = dtype_name(profile.model.device, profile.model.dtype)
        assert config["model"] == {"model": "fake", "revision": None, "newline": None, "dtype": dtype}, (
            "no device/cache; the dtype as resolved"
        )
        assert "{question}" in config["prompt_template"] and MC_INSTRUCTION in config["prompt_template"]
    summary = json.loads(Path(summary_path_for(str(out))).read_text())
    assert summary["config_hash"] == records[0]["config_hash"] and summary["config"] == records[0]["config"]


def test_resume_with_other_settings_stops_before_loading(folder, tmp_path):
    jobs = jobs_from_paths([str(folder / "a.mp4"), str(folder / "b.mp4")], "Q?")
    out = tmp_path / "r.jsonl"
    run_batch(FakeVLM, jobs[:1], str(out), fake_profile())
    before = out.read_bytes()
    loads = []
    changed = fake_profile().override(sampling={"n_frames": 8}, compression={"retention": 0.05})
    with pytest.raises(OptionError) as e:
        run_batch(lambda: loads.append(1) or FakeVLM(), jobs, str(out), changed)
    message = e.value.message
    assert e.value.exit_code == 2 and loads == [] and out.read_bytes() == before, "stopped before any work"
    assert "sampling.n_frames: 4 in the output, 8 now" in message, message
    assert "compression.retention: null in the output, 0.05 now" in message, message
    assert "\n" not in message and "-o" in e.value.hint and "--overwrite" in e.value.hint

    # settings that do not change an answer do not block a resume: device, dtype spelled out, cache, batch size
    resolved = dtype_name("auto", "auto")
    same = fake_profile().override(model={"device": "auto", "dtype": resolved, "cache": True, "offline": True})
    resumed = run_batch(FakeVLM, jobs, str(out), same, batch_size=3)
    assert (resumed.n_done, resumed.n_skipped) == (1, 1)
    fresh = run_batch(FakeVLM, jobs, str(out), changed, overwrite=True)
    assert fresh.n_done == 2 and {r["config_hash"] for r in read_jsonl(out)} == {config_hash(run_config(changed))}


def test_resume_with_another_resolved_dtype_is_refused(folder, tmp_path, monkeypatch):
    from scissor_cli import devices

    jobs = jobs_from_paths([str(folder / "a.mp4"), str(folder / "b.mp4")], "Q?")
    out = tmp_path / "r.jsonl"
    cpu = fake_profile().override(model={"device": "cpu"})  # dtype auto
    monkeypatch.setattr(devices, "cpu_bf16_support", lambda: (False, "emulated"))
    run_batch(FakeVLM, jobs[:1], str(out), cpu)
    assert read_jsonl(out)[0]["config"]["model"]["dtype"] == "float32"
    monkeypatch.setattr(devices, "cpu_bf16_support", lambda: (True, "native"))  # the same flags on a bf16 CPU
    with pytest.raises(OptionError) as e:
        run_batch(FakeVLM, jobs, str(out), cpu)
    assert 'model.dtype: "float32" in the output, "bfloat16" now' in e.value.message, e.value.message
    pinned = cpu.override(model={"dtype": "float32"})
    resumed = run_batch(FakeVLM, jobs, str(out), pinned)
    assert (resumed.n_done, resumed.n_skipped) == (1, 1), "--dtype float32 resumes the float32 output there"


def test_resume_into_records_without_config_is_refused(folder, tmp_path):
    job = Job("x", str(folder / "a.mp4"), "Q?")
    out = tmp_path / "r.jsonl"
    out.write_text(json.dumps({"id": "x", "status": "ok", "video": job.video, "question": "Q?"}) + "\n")
    with pytest.raises(OptionError, match="1 record without a 'config'") as e:
        run_batch(FakeVLM, [job], str(out), fake_profile())
    assert "--overwrite" in e.value.hint


def test_cli_resume_with_changed_settings_exits_2_naming_both_values(fake_cli, folder):
    first = fake_cli(folder / "a.mp4", "-q", "Q?", "-o", "r.jsonl")
    assert first.exit_code == 0, first.output
    result = fake_cli(folder / "a.mp4", folder / "b.mp4", "-q", "Q?", "-o", "r.jsonl", "--retention", "0.05",
                      "--max-new-tokens", "7")  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "compression.retention: null in the output, 0.05 now" in result.stderr, result.stderr
    assert "generation.max_new_tokens: 128 in the output, 7 now" in result.stderr, result.stderr
    assert len(fake_cli.loads) == 1, "the second run stopped before loading the model"


# ----------------------------------------------------------------- 3. summary numbers: every record, the same
def test_summary_covers_every_record_and_matches_the_file(fake_cli, folder):
    assert fake_cli(folder / "sub", "-q", "Q?", "-o", "r.jsonl").exit_code == 0
    result = fake_cli(folder / "a.mp4", folder / "sub", "-q", "Q?", "-o", "r.jsonl")
    assert result.exit_code == 0, result.output
    records = read_jsonl("r.jsonl")
    saved = json.loads(Path("r.summary.json").read_text())
    mean_all = sum(r["retention"] for r in records) / len(records)
    this_run = [r["retention"] for r in records if r["video"].endswith("a.mp4")]
    assert abs(mean_all - this_run[0]) > 0.0005, "test data: this run's retention must differ from the mean"
    assert saved["mean_retention"] == pytest.approx(mean_all) and saved["n_records"] == 3
    assert f"mean retention {mean_all * 100:.1f} %" in " ".join(result.stdout.split()), result.stdout
    assert "records 3: 3 ok, 0 failed" in " ".join(result.stdout.split()), result.stdout
    assert "this run 1 done, 0 failed, 2 already in the output" in " ".join(result.stdout.split()), result.stdout


def test_json_summary_on_stdout_equals_the_summary_file(fake_cli, folder):
    assert fake_cli(folder / "sub", "-q", "Q?", "-o", "r.jsonl").exit_code == 0
    result = fake_cli(folder, "-q", "Q?", "-o", "r.jsonl", "--json")
    assert result.exit_code == 1, "the bad video fails its job"
    data = json.loads(result.stdout)  # the whole of stdout is one JSON object
    saved = json.loads(Path("r.summary.json").read_text())
    this_run = data.pop("this_run")
    assert this_run.pop("mean_time_s") > 0
    assert this_run == {"n_jobs": 5, "n_done": 2, "n_failed": 1, "n_skipped": 2}
    assert data.pop("summary_path") == "r.summary.json"
    assert data == saved and (saved["n_ok"], saved["n_error"]) == (4, 1)
    result = fake_cli(folder, "-q", "Q?", "-o", "-", "--json")
    assert result.exit_code == 2 and "stdout" in result.stderr


# ------------------------------------------------------------------------ 4. -q repeated: every question
def test_repeated_question_asks_every_question_of_every_video(fake_cli, folder):
    jobs = jobs_from_paths([str(folder / "a.mp4"), str(folder / "sub")], ["First?", "Second?", "First?"])
    assert [(os.path.basename(j.video), j.question) for j in jobs] == [
        (v, q) for v in ("a.mp4", "c.mp4", "d.mp4") for q in ("First?", "Second?")
    ], "videos sorted, each with every question once"
    vlm = FakeVLM()
    summary = run_batch(lambda: vlm, jobs, "lib.jsonl", fake_profile())
    assert summary.n_done == 6 and vlm.n_encoded == 3, "one encoding per video shared by its questions"

    result = fake_cli(folder / "a.mp4", folder / "b.mp4", "-q", "First?", "-q", "Second?", "-o", "r.jsonl")
    assert result.exit_code == 0, result.output
    asked = sorted((os.path.basename(r["video"]), r["question"]) for r in read_jsonl("r.jsonl"))
    assert asked == [("a.mp4", "First?"), ("a.mp4", "Second?"), ("b.mp4", "First?"), ("b.mp4", "Second?")]
    man = folder / "jobs.jsonl"
    man.write_text(json.dumps({"video": "a.mp4", "question": "Q?"}) + "\n")
    assert fake_cli("--manifest", man, "-q", "Other?", "-o", "m.jsonl").exit_code == 2, "-q with a manifest"


# ---------------------------------------------------------------------------------------- 5. Ctrl-C in batch
CLI_DRIVER = """
import sys
sys.path.insert(0, {tests!r})
import scissor_cli.model
from test_batch import FakeVLM
scissor_cli.model.load_model = lambda opts, **kw: FakeVLM(delay_s=float(sys.argv[1]))
from scissor_cli.cli import app
app(sys.argv[2:], prog_name="scissor")
"""


def test_ctrl_c_says_how_many_jobs_are_saved(folder, tmp_path):
    (folder / "bad.mp4").unlink()
    driver = tmp_path / "cli_driver.py"
    driver.write_text(textwrap.dedent(CLI_DRIVER.format(tests=str(TESTS_DIR))))
    out = tmp_path / "r.jsonl"
    args = ["batch", str(folder), "-q", "Q?", "-o", str(out), "--model", "fake", "--frames", "4", "--no-cache",
            "--batch-size", "1"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, str(driver), "0.7", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    wait_for_records(proc, out, 1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    stderr = stderr.decode()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    line = [x for x in stderr.splitlines() if "interrupted" in x]
    assert len(line) == 1 and "rerun the same command to continue" in line[0], stderr
    assert line[0].startswith("interrupted: ") and line[0].count("interrupted") == 1, line[0]
    saved = int(re.search(r"(\d+) of 4 jobs are saved in", line[0]).group(1))
    assert saved == len([r for r in read_jsonl(out) if r["status"] == "ok"]) >= 1, (line, read_jsonl(out))
    again = run_batch(FakeVLM, jobs_from_paths([str(folder)], "Q?"), str(out), fake_profile())
    assert again.n_skipped == saved and again.n_done == 4 - saved, "rerunning continues"


def test_output_dash_into_a_closed_pipe_ends_quietly(folder, tmp_path):
    """`scissor batch ... -o - | head -1`: the reader leaves after one record; the run ends with exit 0, no error."""
    (folder / "bad.mp4").unlink()
    driver = tmp_path / "cli_driver.py"
    driver.write_text(textwrap.dedent(CLI_DRIVER.format(tests=str(TESTS_DIR))))
    args = f"batch {folder} -q Q? -o - --model fake --frames 4 --no-cache --batch-size 1"
    script = f"set -o pipefail; {sys.executable} {driver} 0.05 {args} | head -1"
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "error" not in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert len(out.stdout.splitlines()) == 1 and json.loads(out.stdout)["status"] == "ok"


# ---------------------------------------------------------------------------- 7. progress off a terminal
def test_progress_lines_off_a_terminal_and_quiet(fake_cli, folder):
    result = fake_cli(folder, "-q", "Q?", "-o", "r.jsonl")
    assert result.exit_code == 1, result.output
    lines = [x for x in result.stderr.splitlines() if x.startswith("[")]
    assert len(lines) == 5, result.stderr
    ok = [x for x in lines if re.fullmatch(r"\[\d/5\] ok \S+\.mp4 \(\d+\.\d s\)", x)]
    assert len(ok) == 4 and lines[0].startswith("[1/5] ") and lines[-1].startswith("[5/5] "), lines
    assert any(re.match(r"\[\d/5\] error \S+bad\.mp4: ", x) for x in lines), lines
    assert "eta" not in result.stderr and "━" not in result.stderr, "no bar off a terminal"

    quiet = fake_cli(folder, "-q", "Other?", "-o", "q.jsonl", "--quiet")
    assert quiet.exit_code == 1 and not [x for x in quiet.stderr.splitlines() if x.startswith("[")], quiet.stderr
    assert len(read_jsonl("q.jsonl")) == 5

    (folder / "bad.mp4").unlink()
    again = fake_cli(folder, "-q", "Q?", "-o", "r.jsonl")
    assert again.exit_code == 0, again.output
    assert "0/0" not in again.stderr and "eta" not in again.stderr, again.stderr
    assert "4 of 4 jobs already in the output" in again.stderr


def test_progress_line_times_split_a_generate_call_between_its_rows(monkeypatch):
    import io
    import types

    from rich.console import Console

    from scissor_cli import render

    buffer, clock = io.StringIO(), [0.0]
    monkeypatch.setattr(render, "err", Console(file=buffer, width=200, highlight=False))
    monkeypatch.setattr(render, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    with render.BatchProgress(live=False) as view:
        view.start(5, 0)
        view.note("loading the model")
        clock[0] = 30.0  # the model load is not a job's time
        view.status("[1/2] a.mp4")
        clock[0] = 34.0
        for _ in range(4):  # one generate call of 4 rows
            view.job_done({"status": "ok", "video": "a.mp4", "batch_rows": 4})
        clock[0] = 36.5
        view.job_done({"status": "ok", "video": "b.mp4", "batch_rows": 1})
    lines = buffer.getvalue().splitlines()
    assert lines == ["loading the model"] + [f"[{i}/5] ok a.mp4 (1.0 s)" for i in range(1, 5)] + [
        "[5/5] ok b.mp4 (2.5 s)"
    ], lines


def test_live_bar_on_a_terminal_only_with_pending_jobs(monkeypatch):
    import io

    from rich.console import Console

    from scissor_cli import render

    def shown(n_total, n_skipped, n_done):
        buffer = io.StringIO()
        monkeypatch.setattr(render, "err", Console(file=buffer, force_terminal=True, width=120, highlight=False))
        with render.BatchProgress() as view:
            view.start(n_total, n_skipped)
            for _ in range(n_done):
                view.job_done({"status": "ok", "video": "a.mp4"})
        return buffer.getvalue()

    assert "eta" in shown(3, 1, 1) and "1/2" in shown(3, 1, 1), "a bar on a terminal"
    nothing = shown(3, 3, 0)
    assert "eta" not in nothing and "0/0" not in nothing and "3 of 3 jobs already" in nothing


def test_records_on_stdout_stay_on_stdout_under_a_live_bar(monkeypatch, capsys):
    """`scissor batch ... -o - | jq` on a terminal: the bar (stderr) must not capture the records written to stdout."""
    import io

    from rich.console import Console

    from scissor_cli import render
    from scissor_cli.batch import runner

    buffer = io.StringIO()
    monkeypatch.setattr(render, "err", Console(file=buffer, force_terminal=True, width=120, highlight=False))
    with render.BatchProgress() as view:
        view.start(2, 0)
        runner._write_stdout({"id": "x", "status": "ok"})
        view.job_done({"status": "ok", "video": "a.mp4"})
    assert json.loads(capsys.readouterr().out) == {"id": "x", "status": "ok"}
    assert '"id"' not in buffer.getvalue()


# ------------------------------------------------------------------------------------- 10. -o - and -o x.csv
def test_output_dash_streams_jsonl_to_stdout(fake_cli, folder, tmp_path):
    result = fake_cli(folder, "-q", "Q?", "-o", "-")
    assert result.exit_code == 1, result.output
    records = [json.loads(x) for x in result.stdout.splitlines()]
    assert len(records) == 5 and sum(r["status"] == "ok" for r in records) == 4
    assert all(r["config_hash"] for r in records)
    assert "cannot be resumed" in result.stderr and "batch summary" in result.stderr, result.stderr
    assert not (tmp_path / "-").exists() and not list(tmp_path.glob("*.summary.json"))


@pytest.mark.parametrize("name", ["out.csv", "OUT.TSV"])
def test_table_output_is_refused_with_a_hint(fake_cli, folder, tmp_path, name):
    result = fake_cli(folder, "-q", "Q?", "-o", name)
    assert result.exit_code == ManifestError.exit_code, result.output
    assert "batch writes JSONL" in result.stderr and "jq" in result.stderr
    assert not (tmp_path / name).exists() and fake_cli.loads == []


# ---------------------------------------------------------------------------------- 11. manifest formats
def test_urls_are_jobs_and_stdin_is_refused(folder, tmp_path):
    """http(s) URLs in a manifest or on the command line are streamed by ffmpeg like ask's; an unreachable one fails
    as its own job; `-` (stdin) cannot be a batch video."""
    import functools
    import http.server
    import threading

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/a.mp4"
        (tmp_path / "m.jsonl").write_text(
            json.dumps({"video": url, "question": "Q?", "id": "web"})
            + "\n"
            + json.dumps({"video": f"http://127.0.0.1:{closed}/a.mp4", "question": "Q?", "id": "down"})
            + "\n"
        )
        jobs = jobs_from_manifest(str(tmp_path / "m.jsonl"))
        assert [j.video for j in jobs][0] == url, "a URL is not a path relative to the manifest"
        run_batch(FakeVLM, jobs, str(tmp_path / "r.jsonl"), fake_profile())
        by_id = {r["id"]: r for r in read_jsonl(tmp_path / "r.jsonl")}
        assert by_id["web"]["status"] == "ok" and by_id["web"]["video"] == url, by_id["web"]
        assert by_id["down"]["status"] == "error" and "cannot be reached" in by_id["down"]["error"], by_id["down"]
        assert [j.video for j in jobs_from_paths([url, str(folder / "a.mp4")], "Q?")][-1] == url
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(ManifestError, match="stdin"):
        jobs_from_paths(["-"], "Q?")
    (tmp_path / "s.jsonl").write_text(json.dumps({"video": "-", "question": "Q?"}) + "\n")
    with pytest.raises(ManifestError, match="stdin"):
        jobs_from_manifest(str(tmp_path / "s.jsonl"))


def test_manifest_that_is_a_folder_says_so(fake_cli, folder):
    with pytest.raises(ManifestError, match="is a folder, not a manifest") as e:
        jobs_from_manifest(str(folder))
    assert "scissor batch FOLDER" in e.value.hint
    result = fake_cli("--manifest", folder, "-o", "r.jsonl")
    assert result.exit_code == ManifestError.exit_code and "is a folder" in result.stderr, result.output


# ------------------------------------------------------------------------------------ the feature cache's folder
def test_run_batch_writes_features_to_the_folder_it_is_given(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("SCISSOR_CACHE_DIR", str(tmp_path / "env"))
    profile = replace(fake_profile(), model=ModelOptions(model="fake", cache=True))
    jobs = [Job("a", str(folder / "a.mp4"), "Q?")]
    run_batch(FakeVLM, jobs, str(tmp_path / "r.jsonl"), profile, cache_dir=tmp_path / "given")
    assert len(list((tmp_path / "given").glob("*.safetensors"))) == 1, "the features go to the folder given"
    assert not (tmp_path / "env").exists(), "not to a folder found again from the environment"


def test_cli_batch_caches_in_the_configs_cache_dir(tiny_hf_dir, folder, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from scissor_cli.cli import app

    config = tmp_path / "config.yaml"
    config.write_text(f"cache_dir: {tmp_path / 'mine'}\n")
    monkeypatch.setenv("SCISSOR_CONFIG", str(config))
    monkeypatch.delenv("SCISSOR_CACHE_DIR")
    args = [folder / "a.mp4", "-q", "Q?", "-o", tmp_path / "r.jsonl", "--model", tiny_hf_dir, "--frames", "2",
            "--max-new-tokens", "2", "--decode-workers", "0"]  # fmt: skip
    result = CliRunner().invoke(app, ["batch", *map(str, args)])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "mine").glob("*.safetensors"))) == 1, "the config's cache_dir holds the features"

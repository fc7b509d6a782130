"""Issue 19, batch output and signals: one writer per output (a lock naming the other run's PID), a job that kills
its process twice gets an error record, SIGTERM/SIGHUP end every command like Ctrl-C, a full disk is one line,
--overwrite replaces only scissor's files, records stay short whatever the text. Real subprocesses where the
point is another process (a lock held, a kill -9, a signal); ``FakeVLM`` and real tiny clips otherwise."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import test_batch
from test_batch import TESTS_DIR, FakeVLM, fake_profile, read_jsonl, stamped, wait_for_records, write_driver

from scissor_cli.batch import journal_path, part_path, records, run_batch, safety, summary_path_for
from scissor_cli.errors import ManifestError, OptionError
from scissor_cli.jobs import Job, jobs_from_paths

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
# test_batch's fixtures: real tiny clips (a fresh copy per test), the isolated environment, `scissor batch` in process
clips, folder, isolated, fake_cli = test_batch.clips, test_batch.folder, test_batch.isolated, test_batch.fake_cli


def stray_files(folder: Path) -> list[str]:
    """What a run must not leave behind: temporary rewrites and lock files."""
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or p.name.endswith(".lock"))


# ------------------------------------------------------------------------------------------- 1. one writer
def test_second_run_on_the_same_output_is_refused_naming_the_pid(folder, tmp_path, fake_cli):
    (folder / "bad.mp4").unlink()
    out = tmp_path / "r.jsonl"
    first = subprocess.Popen([sys.executable, str(write_driver(tmp_path)), str(folder), str(out), "1.0",
                              str(tmp_path / "rep.json")], env=ENV, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)  # fmt: skip
    try:
        wait_for_records(first, out, 1)
        loads = []
        jobs = jobs_from_paths([str(folder)], "Q?")
        with pytest.raises(ManifestError, match=rf"another scissor batch run \(PID {first.pid}\)"):
            run_batch(lambda: loads.append(1) or FakeVLM(), jobs, str(out), fake_profile())
        with pytest.raises(ManifestError, match=str(first.pid)):  # --overwrite would delete its work: refused too
            run_batch(lambda: loads.append(1) or FakeVLM(), jobs, str(out), fake_profile(), overwrite=True)
        result = fake_cli(folder, "-q", "Q?", "-o", out)
        assert result.exit_code == ManifestError.exit_code, result.output
        assert f"PID {first.pid}" in result.stderr and len(result.stderr.strip().splitlines()) == 2, result.stderr
        assert loads == [] and fake_cli.loads == [], "refused before the model loads"
        assert not Path(summary_path_for(str(out))).exists(), "the refused run wrote no summary"
        ids = [r["id"] for r in read_jsonl(out)]
        assert len(ids) == len(set(ids)) >= 1, "the refused runs wrote no record"
    finally:
        first.send_signal(signal.SIGKILL)  # the kernel drops the flock with the process
        first.wait(timeout=30)
        first.stderr.close()
    summary = run_batch(FakeVLM, jobs, str(out), fake_profile())
    assert summary.n_skipped >= 1 and summary.n_skipped + summary.n_done == 4, "a new run proceeds and resumes"
    assert sorted(r["id"] for r in read_jsonl(out)) == sorted(j.id for j in jobs), "every job exactly once"
    assert stray_files(tmp_path) == [], "the lock file goes with the run that made it"


def test_each_rank_locks_its_own_part_file(folder, tmp_path):
    """Rank r of a torchrun job writes <output>.part-r-of-N: a second job's rank r is refused before it reads."""
    out = str(tmp_path / "r.jsonl")
    held = safety._lock(part_path(out, 1, 2), out)  # rank 1 of a running 2-process job
    try:
        loads = []
        with pytest.raises(ManifestError, match=rf"PID {os.getpid()}"):
            run_batch(lambda: loads.append(1), jobs_from_paths([str(folder)], "Q?"), out, fake_profile(),
                      rank=1, world_size=2)  # fmt: skip
        assert loads == [] and not os.path.exists(part_path(out, 1, 2))
    finally:
        safety._unlock(held)
    assert stray_files(tmp_path) == []


def test_a_lock_file_removed_between_open_and_flock_is_not_trusted(tmp_path, monkeypatch):
    """The unlink race: a run ending removes the lock file after another opened it; the other must lock anew."""
    out = str(tmp_path / "r.jsonl")
    lock_path = out + safety.LOCK_SUFFIX
    real_open, opened = os.open, []

    def open_then_vanish(path, *args, **kwargs):
        fd = real_open(path, *args, **kwargs)
        if path == lock_path and not opened:
            opened.append(fd)
            os.unlink(lock_path)  # as if the run holding it had just ended
        return fd

    monkeypatch.setattr(os, "open", open_then_vanish)
    lock = safety._lock(out, out)
    monkeypatch.undo()
    try:
        assert os.fstat(lock[0]).st_ino == os.stat(lock_path).st_ino, "locked the file the path names"
        assert Path(lock_path).read_text() == f"{os.getpid()}\n"
    finally:
        safety._unlock(lock)


# ---------------------------------------------------------------------------------- 2. a job that kills the run
KILLER_DRIVER = """
import json, os, signal, sys
sys.path.insert(0, {tests!r})
from test_batch import FakeVLM, fake_profile
import scissor_cli.pipeline as pipeline
from scissor_cli.batch import jobs_from_paths, run_batch

folder, out, report = sys.argv[1], sys.argv[2], sys.argv[3]
encode = pipeline.encode_video

def encode_or_die(vlm, video, *args, **kwargs):
    if os.path.basename(video) == "b.mp4":  # this video takes the process down, like the OOM killer would
        os.kill(os.getpid(), signal.SIGKILL)
    return encode(vlm, video, *args, **kwargs)

pipeline.encode_video = encode_or_die
s = run_batch(lambda: FakeVLM(), jobs_from_paths([folder], "Q?") + jobs_from_paths([folder], "Again?"), out,
              fake_profile(), batch_size=1)
json.dump({{"n_done": s.n_done, "n_failed": s.n_failed, "n_skipped": s.n_skipped}}, open(report, "w"))
"""


def test_a_job_that_killed_two_runs_gets_an_error_record_not_a_third_try(folder, tmp_path):
    (folder / "bad.mp4").unlink()
    driver = tmp_path / "killer.py"
    driver.write_text(textwrap.dedent(KILLER_DRIVER.format(tests=str(TESTS_DIR))))
    out, report = tmp_path / "r.jsonl", tmp_path / "rep.json"

    def run():
        cmd = [sys.executable, str(driver), str(folder), str(out), str(report)]
        return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)

    for attempt in (1, 2):
        proc = run()
        assert proc.returncode == -signal.SIGKILL, (attempt, proc.stderr[-2000:])
        assert [r["video"].endswith("a.mp4") for r in read_jsonl(out)] == [True, True], "a.mp4 done, then b died"
    proc = run()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(report.read_text()) == {"n_done": 4, "n_failed": 2, "n_skipped": 2}
    records = {r["id"]: r for r in read_jsonl(out)}
    assert len(records) == 8 and len(read_jsonl(out)) == 8, "one record per job"
    killed = [r for r in records.values() if r["status"] == "error"]
    assert {os.path.basename(r["video"]) for r in killed} == {"b.mp4"} and len(killed) == 2, killed
    for r in killed:
        assert r["error_type"] == "Killed" and "started 2 times and never finished" in r["error"], r
        assert "out of memory" in r["error"] and journal_path(str(out)) in r["hint"], r
    assert {os.path.basename(r["video"]) for r in records.values() if r["status"] == "ok"} == {"a.mp4", "c.mp4",
                                                                                                 "d.mp4"}  # fmt: skip
    summary = json.loads(Path(summary_path_for(str(out))).read_text())
    assert (summary["n_records"], summary["n_ok"], summary["n_error"]) == (8, 6, 2), summary

    from scissor_cli.report import build_report, read_results

    rows = build_report(read_results([str(out)]), by="level", files=[str(out)]).rows
    assert (sum(r["n"] for r in rows), sum(r["n_error"] for r in rows)) == (8, 2), "report reads the file as before"

    proc = run()  # a fourth run does not start b again either (starting it would kill this run)
    assert proc.returncode == 0 and json.loads(report.read_text())["n_failed"] == 2, proc.stderr[-2000:]
    assert len(read_jsonl(out)) == 8


def test_runs_that_end_without_dying_blame_no_job(tmp_path):
    path = str(tmp_path / "j.journal")
    died = safety._Journal(path, 0)
    died.started(["a", "b"])
    died.started(["c"])  # the step it died in
    os.close(died.fd)  # no end line: as after kill -9
    stopped = safety._Journal(path, 0)
    stopped.started(["c"])
    stopped.ended()  # Ctrl-C, an error, the end of the run
    with open(path, "ab") as f:
        f.write(b'{"run": "torn')  # a kill inside a write
    assert safety._crash_counts(path) == {"c": 1}
    safety._compact_journal(path, finished={"c"})
    assert not os.path.exists(path), "nothing left to blame: the journal goes"


# ------------------------------------------------------------------------------------------- 3. signals
SIGNAL_DRIVER = """
import os, sys, time
sys.path.insert(0, {tests!r})
marker, delay, sys.argv = sys.argv[1], float(sys.argv[2]), ["scissor", *sys.argv[3:]]
import scissor_cli.model
from test_batch import FakeVLM

def load_model(opts, **kwargs):
    if delay < 0:  # stay in the model load until a signal comes
        open(marker, "w").close()
        time.sleep(120)
    return FakeVLM(delay_s=delay)

scissor_cli.model.load_model = load_model
from scissor_cli.cli import main
main()
"""


def signal_driver(tmp_path) -> Path:
    path = tmp_path / "signal_driver.py"
    path.write_text(textwrap.dedent(SIGNAL_DRIVER.format(tests=str(TESTS_DIR))))
    return path


def marked_processes(mark: str) -> list[int]:
    """Processes whose environment carries ``mark`` (the driver's decode workers, their ffmpeg children)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if mark.encode() in Path(f"/proc/{pid}/environ").read_bytes():
                found.append(int(pid))
        except OSError:
            continue
    return found


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds leftover workers through /proc")
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)])
def test_batch_on_sigterm_and_sighup_saves_summarises_and_cleans_up(folder, tmp_path, signum, code):
    (folder / "bad.mp4").unlink()
    out = tmp_path / "r.jsonl"
    mark = f"SCISSOR_TEST_MARK={tmp_path}"
    args = ["batch", str(folder), "-q", "Q?", "-o", str(out), "--model", "fake", "--frames", "4", "--no-cache",
            "--batch-size", "1", "--decode-workers", "1"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, str(signal_driver(tmp_path)), "-", "0.7", *args],
                            env={**ENV, "SCISSOR_TEST_MARK": str(tmp_path)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    wait_for_records(proc, out, 1)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    stderr = stderr.decode()
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    lines = [x for x in stderr.splitlines() if "interrupted" in x]
    name = signal.Signals(signum).name
    assert len(lines) == 1 and lines[0].startswith(f"interrupted ({name}): "), stderr
    n_ok = len([r for r in read_jsonl(out) if r["status"] == "ok"])
    assert f"{n_ok} of 4 jobs are saved in {out}" in lines[0] and n_ok >= 1, (lines, read_jsonl(out))
    summary = json.loads(Path(summary_path_for(str(out))).read_text())
    assert summary["n_ok"] == n_ok and summary["n_records"] == len(read_jsonl(out)), "the summary is written"
    assert stray_files(tmp_path) == [], "no temporary or lock file is left"
    assert safety._crash_counts(journal_path(str(out))) == {}, "a run stopped by a signal did not die"
    deadline = time.monotonic() + 10
    while marked_processes(mark.split("=", 1)[1]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marked_processes(mark.split("=", 1)[1]) == [], "the decode workers were reaped"
    again = run_batch(FakeVLM, jobs_from_paths([str(folder)], "Q?"), str(out), fake_profile())
    assert again.n_skipped == n_ok and again.n_done == 4 - n_ok, "rerunning continues"


@pytest.mark.parametrize(
    "command, signum, code",
    [("ask", signal.SIGTERM, 143), ("inspect", signal.SIGHUP, 129), ("chat", signal.SIGTERM, 143),
     ("chat", signal.SIGHUP, 129)],
)  # fmt: skip
def test_ask_inspect_chat_end_on_sigterm_and_sighup_like_ctrl_c(clips, tmp_path, command, signum, code):
    spool = tmp_path / "tmp"
    spool.mkdir()
    marker = tmp_path / "loading"
    video = "-" if command != "chat" else str(clips["a"])  # ask and inspect read the video from stdin (spooled)
    args = {"ask": ["ask", video, "Q?"], "inspect": ["inspect", video], "chat": ["chat", video]}[command]
    with open(clips["a"] if command != "chat" else os.devnull, "rb") as stdin:  # chat: no questions come
        proc = subprocess.Popen([sys.executable, str(signal_driver(tmp_path)), str(marker), "-1", *args,
                                 "--model", "fake", "--frames", "4", "--no-cache"],
                                env={**ENV, "TMPDIR": str(spool)}, stdin=stdin, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.monotonic() + 90
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
    if command != "chat":
        assert [p.name for p in spool.iterdir()][0].startswith("scissor-stdin-"), "the video is spooled"
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
    stderr = stderr.decode()
    assert proc.returncode == code, stderr
    assert stderr.strip().splitlines()[-1] == f"interrupted ({signal.Signals(signum).name})", stderr
    assert "Traceback" not in stderr and stderr.count("interrupted") == 1, stderr
    assert list(spool.iterdir()) == [], "the stdin spool file is removed"


def test_an_ignored_sighup_stays_ignored():
    """`nohup scissor batch ...` must survive the terminal closing: only signals at their default are taken over."""
    code = (
        "import signal, sys\n"
        "signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
        "sys.argv = ['scissor']\n"
        "import scissor_cli.cli\n"
        "import scissor_cli.cli_process as p\n"
        "p._install_handlers()\n"
        "print(signal.getsignal(signal.SIGHUP) is signal.SIG_IGN, signal.getsignal(signal.SIGTERM) is p._on_sigint)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["True", "True"], out.stderr


# ------------------------------------------------------------------------------------------- 4. full disk
def failing_writes(monkeypatch, should_fail, code=errno.ENOSPC):
    """batch's writes to files for which ``should_fail(path, n_writes_so_far)`` is true write half, then fail."""
    real = records._write_all
    calls: dict[str, int] = {}

    def write_all(fd, data):
        path = os.readlink(f"/proc/self/fd/{fd}")
        calls[path] = calls.get(path, 0) + 1
        if should_fail(path, calls[path]):
            os.write(fd, data[: len(data) // 2])
            raise OSError(code, os.strerror(code))
        real(fd, data)

    for module in (records, safety):  # records: output lines, summaries, rewrites; safety: the journal
        monkeypatch.setattr(module, "_write_all", write_all)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="tells files apart through /proc/self/fd")
def test_full_disk_mid_run_is_one_line_keeps_whole_records_and_resumes(folder, tmp_path, monkeypatch, fake_cli):
    out = tmp_path / "r.jsonl"
    jobs = jobs_from_paths([str(folder)], "Q?")
    real_write_all = records._write_all
    failing_writes(monkeypatch, lambda path, n: path == str(out) and n == 3)
    with pytest.raises(ManifestError) as e:
        run_batch(FakeVLM, jobs, str(out), fake_profile(), batch_size=1)
    assert e.value.message.startswith(f"no space left on {safety._mount_point(str(out))} (")
    assert f"2 of 5 jobs are saved in {out}" in e.value.message and "rerun" in e.value.hint, e.value.message
    assert out.read_bytes().endswith(b"\n") and len(read_jsonl(out)) == 2, "the half-written record is cut away"
    assert stray_files(tmp_path) == [] and not Path(summary_path_for(str(out))).exists()
    assert safety._crash_counts(journal_path(str(out))) == {}, "a full disk is not a death"
    for module in (records, safety):
        monkeypatch.setattr(module, "_write_all", real_write_all)
    again = run_batch(FakeVLM, jobs, str(out), fake_profile())
    assert again.n_skipped == 2 and sorted(r["id"] for r in read_jsonl(out)) == sorted(j.id for j in jobs)

    # the CLI: one line, exit 6, never "internal error: OSError [Errno 28]"
    out2 = tmp_path / "r2.jsonl"
    failing_writes(monkeypatch, lambda path, n: path.endswith("r2.jsonl") and n == 2)
    result = fake_cli(folder, "-q", "Q?", "-o", out2)
    assert result.exit_code == ManifestError.exit_code, result.output
    assert result.stderr.count("error: no space left on ") == 1 and "internal error" not in result.stderr
    assert "Errno" not in result.stderr, result.stderr


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="tells files apart through /proc/self/fd")
def test_full_disk_in_the_final_rewrite_leaves_no_temporary_file(folder, tmp_path, monkeypatch):
    out = tmp_path / "r.jsonl"
    jobs = jobs_from_paths([str(folder)], "Q?")
    run_batch(FakeVLM, jobs, str(out), fake_profile())  # bad.mp4 fails: its retry below rewrites the file
    before = out.read_bytes()
    failing_writes(monkeypatch, lambda path, n: ".tmp-" in path)
    with pytest.raises(ManifestError, match=r"no space left on .* \(4 of 5 jobs are saved in "):
        run_batch(FakeVLM, jobs, str(out), fake_profile())
    assert stray_files(tmp_path) == [], "the .tmp-PID file of the failed rewrite is removed"
    assert out.read_bytes().startswith(before), "the output is whole (the retry's record appended)"


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="tells files apart through /proc/self/fd")
@pytest.mark.parametrize("code, words", [(errno.EROFS, "is a read-only file system"), (errno.EIO, "I/O error"),
                                         (errno.EDQUOT, "disk quota exceeded")])  # fmt: skip
def test_other_write_errors_get_a_clear_line(folder, tmp_path, monkeypatch, code, words):
    out = tmp_path / "r.jsonl"
    failing_writes(monkeypatch, lambda path, n: path.endswith(".journal"), code)
    with pytest.raises(ManifestError, match=words):
        run_batch(FakeVLM, jobs_from_paths([str(folder)], "Q?"), str(out), fake_profile())
    assert stray_files(tmp_path) == []


# ------------------------------------------------------------------------------------------- 5. --overwrite
@pytest.mark.parametrize(
    "name, text",
    [("notes.jsonl", '{"a": 1}\n'), ("notes.txt", "my notes\n"), ("notes.jsonl", '{"status": "ok"}\n')],
)
def test_overwrite_refuses_a_file_that_is_not_a_batch_output(fake_cli, folder, tmp_path, name, text):
    target = tmp_path / name
    target.write_text(text)
    result = fake_cli(folder, "-q", "Q?", "-o", target, "--overwrite")
    assert result.exit_code == ManifestError.exit_code, result.output
    assert f"--overwrite would replace {target}, which is not a scissor batch output (line 1" in result.stderr
    assert "rm " in result.stderr and fake_cli.loads == [], result.stderr
    assert target.read_text() == text, "untouched"


def test_overwrite_refuses_a_summary_path_that_is_not_a_summary(fake_cli, folder, tmp_path):
    (tmp_path / "r.summary.json").write_text('{"my": "data"}')
    result = fake_cli(folder, "-q", "Q?", "-o", tmp_path / "r.jsonl", "--overwrite")
    assert result.exit_code == ManifestError.exit_code and "r.summary.json" in result.stderr, result.output
    assert (tmp_path / "r.summary.json").read_text() == '{"my": "data"}'


def test_overwrite_replaces_scissor_outputs_and_empty_files(fake_cli, folder, tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    assert fake_cli(folder, "-q", "Q?", "-o", tmp_path / "empty.jsonl", "--overwrite").exit_code == 1
    out = tmp_path / "r.jsonl"
    assert fake_cli(folder, "-q", "Q?", "-o", out).exit_code == 1
    with open(out, "ab") as f:
        f.write(b'{"id": "half')  # a killed run's torn tail is still scissor's
    result = fake_cli(folder, "-q", "Q?", "-o", out, "--overwrite")
    assert result.exit_code == 1 and "5 of 5" not in result.output, result.output
    assert len(read_jsonl(out)) == 5


# ------------------------------------------------------------------------------------------- 6. short records
class QuotingVLM(FakeVLM):
    """Refuses a long question by quoting it whole, as a careless error message would (its context takes any
    length, so the refusal comes from generate, past the length check that names only lengths)."""

    def check_question(self, question, **kw):
        return len(question)

    def generate(self, requests, gen):
        for _, question in requests:
            if len(question) > 1000:
                raise OptionError(f"question {question!r} is too long", hint=f"shorten {question!r}")
        return super().generate(requests, gen)


def test_error_records_and_printed_lines_stay_short_whatever_the_text(folder, tmp_path, fake_cli, monkeypatch):
    huge = "Why? " + "x" * 1_000_000
    jobs = [Job("long", str(folder / "a.mp4"), huge, extra={"task": "t" * 50_000}), Job("ok", str(folder / "b.mp4"),
            "Q?")]  # fmt: skip
    out = tmp_path / "r.jsonl"
    run_batch(QuotingVLM, jobs, str(out), fake_profile())
    lines = out.read_bytes().splitlines()
    assert len(lines) == 2 and max(len(line) for line in lines) < 6000, [len(line) for line in lines]
    record = next(r for r in read_jsonl(out) if r["id"] == "long")
    assert record["question"] == huge[:200] + f"… ({len(huge)} characters)"
    assert record["error"].endswith(" characters)") and len(record["error"]) < 600, record["error"]
    assert len(record["hint"]) < 600 and record["task"].endswith("(50000 characters)")

    man = tmp_path / "jobs.jsonl"
    man.write_text(json.dumps({"id": "long", "video": str(folder / "a.mp4"), "question": huge}) + "\n")
    import scissor_cli.model

    monkeypatch.setattr(scissor_cli.model, "load_model", lambda opts, **kw: QuotingVLM())
    result = fake_cli("--manifest", man, "-o", tmp_path / "m.jsonl")
    assert result.exit_code == 1 and max(len(x) for x in result.stderr.splitlines()) < 1500, result.stderr[-500:]
    result = fake_cli(folder, "-q", "Q?", "-o", tmp_path / "p.jsonl", "--prompt", "p" * 100_000)
    assert result.exit_code == OptionError.exit_code and len(result.stderr) < 3000, len(result.stderr)
    assert re.search(r"\(1000\d\d characters\)", result.stderr.replace("\n", "")), result.stderr[-300:]


def test_ok_records_keep_their_text(folder, tmp_path):
    question = "Describe it. " + "y" * 5000  # long but real (a benchmark with subtitles): kept whole
    out = tmp_path / "r.jsonl"
    run_batch(FakeVLM, [Job("q", str(folder / "a.mp4"), question)], str(out), fake_profile())
    assert read_jsonl(out)[0]["question"] == question


def test_stamped_records_are_still_resumed(folder, tmp_path):
    """The journal and lock leave resume as it was: a finished record is skipped."""
    job = jobs_from_paths([str(folder / "a.mp4")], "Q?")[0]
    out = tmp_path / "r.jsonl"
    out.write_text(json.dumps(stamped({"id": job.id, "status": "ok", "video": job.video, "question": "Q?"})) + "\n")
    assert run_batch(FakeVLM, [job], str(out), fake_profile()).n_skipped == 1
    assert not os.path.exists(journal_path(str(out))), "nothing ran: no journal"

"""Decode-ahead (scissor_cli.prefetch): same records as inline decoding, errors stay with their video, a crashed
worker fails only its video, memory stays bounded (never more than n_workers videos ahead), cached videos are not
decoded, and Ctrl-C leaves no worker or ffmpeg process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from test_batch import FakeVLM, fake_profile, make_clip, read_jsonl

from scissor_cli.batch import run_batch
from scissor_cli.errors import OptionError, VideoError
from scissor_cli.jobs import jobs_from_paths
from scissor_cli.options import SamplingOptions
from scissor_cli.prefetch import CoreShare, Prefetcher, decode_ahead, default_decode_workers
from scissor_cli.video import sample_frames

TESTS_DIR = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("prefetch")
    out = {name: make_clip(d / f"{name}.mp4", name) for name in ("testsrc", "testsrc2", "smptebars", "rgbtestsrc")}
    bad = d / "bad.mp4"
    bad.write_bytes(os.urandom(4096))
    out["bad"] = bad
    return out


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("SCISSOR_CACHE_DIR", str(tmp_path / "cache"))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SCISSOR_DEBUG"):
        monkeypatch.delenv(var, raising=False)


def without_timings(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "timings_s"}


def test_default_workers_leave_one_core_for_the_model(monkeypatch):
    assert [default_decode_workers(n) for n in (1, 2, 3, 4, 16, 64)] == [1, 1, 2, 3, 8, 8]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_decode_workers() == 8
    for local, expected in (("2", 7), ("4", 3), ("8", 1), ("32", 1), ("junk", 8)):
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local)
        assert default_decode_workers() == expected, f"{local} processes share the 16 cores"
    # nothing to overlap: no worker processes at all
    assert decode_ahead(["a.mp4", "b.mp4"], fake_profile(), 0) is None
    assert decode_ahead(["a.mp4"], fake_profile(), 4) is None


def test_records_equal_inline_decoding_and_a_bad_file_fails_alone(videos, tmp_path):
    folder = videos["bad"].parent
    jobs = jobs_from_paths([str(folder)], ["Q?", "Another?"])
    inline, ahead = tmp_path / "inline.jsonl", tmp_path / "ahead.jsonl"
    s0 = run_batch(FakeVLM, jobs, str(inline), fake_profile(), decode_workers=0)
    s2 = run_batch(FakeVLM, jobs, str(ahead), fake_profile(), decode_workers=2)
    assert (s2.n_done, s2.n_failed) == (s0.n_done, s0.n_failed) == (8, 2)
    a, b = read_jsonl(inline), read_jsonl(ahead)
    assert [without_timings(r) for r in a] == [without_timings(r) for r in b], "decode-ahead changed a record"
    failed = [r for r in b if r["status"] == "error"]
    assert {r["video"] for r in failed} == {str(videos["bad"])}, failed
    assert failed[0]["error_type"] == "VideoError" and failed[0]["hint"], "the error keeps its class and hint"
    assert all(r["timings_s"]["decode"] > 0 for r in b if r["status"] == "ok"), "the worker's decode time is kept"


def test_resume_with_workers_answers_each_job_once(videos, tmp_path):
    folder = videos["bad"].parent
    jobs = jobs_from_paths([str(folder)], "Q?")
    out = tmp_path / "r.jsonl"
    first = run_batch(FakeVLM, jobs[:2], str(out), fake_profile(), decode_workers=2)
    again = run_batch(FakeVLM, jobs, str(out), fake_profile(), decode_workers=2)
    assert first.n_done + first.n_failed == 2 and again.n_skipped == first.n_done >= 1, (first, again)
    assert again.n_done + again.n_failed == len(jobs) - first.n_done, "errored jobs are retried, ok ones skipped"
    assert sorted(r["id"] for r in read_jsonl(out)) == sorted(j.id for j in jobs), "every job exactly once"


def test_frames_equal_inline_and_window_is_bounded(videos):
    order = [str(videos[n]) for n in ("testsrc", "testsrc2", "smptebars", "rgbtestsrc")] * 2
    sampling = SamplingOptions(n_frames=4)
    with Prefetcher(order, sampling, n_workers=2) as ahead:
        deadline = time.monotonic() + 60
        while ahead._in_flight() and time.monotonic() < deadline:  # let the workers finish what they were given
            ahead._collect(block=True)  # (n_ahead stays up until take(): decoded clips wait there)
        assert ahead.n_sent == 2, "no more videos are handed out than there are workers"
        for k, video in enumerate(order):
            clip, decode_s, resized = ahead.take(video)
            assert resized is None, "no resize_to: full frames"
            assert ahead.n_ahead <= 2 and ahead.n_sent <= k + 1 + 2, "more than n_workers videos ahead"
            expected = sample_frames(video, n_frames=4)
            assert clip.indices == expected.indices and np.array_equal(clip.frames, expected.frames), video
            assert decode_s > 0
        with pytest.raises(RuntimeError, match="out of order"):
            ahead.take(order[0])
    assert ahead.n_sent == len(order)


def test_bad_file_error_is_raised_for_its_video_only(videos):
    order = [str(videos["bad"]), str(videos["testsrc"])]
    with Prefetcher(order, SamplingOptions(n_frames=4), n_workers=1) as ahead:
        with pytest.raises(VideoError) as e:
            ahead.take(order[0])
        assert "bad.mp4" in e.value.message and e.value.hint, "message and hint survive the worker"
        clip, _, _ = ahead.take(order[1])
        assert clip.frames.shape[0] == 4


def test_a_worker_that_dies_fails_only_its_video_and_is_replaced(videos, tmp_path):
    slow = make_clip(tmp_path / "slow.mp4", "testsrc2", seconds=30.0)
    order = [str(slow), str(videos["testsrc"]), str(videos["smptebars"])]
    with Prefetcher(order, SamplingOptions(n_frames=32), n_workers=1) as ahead:
        (victim,) = ahead.pids
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(VideoError, match="decoder process was killed by signal 9") as e:
            ahead.take(order[0])
        assert "--decode-workers 0" in e.value.hint
        assert victim not in ahead.pids and len(ahead.pids) == 1, "the dead worker is replaced"
        for video in order[1:]:
            clip, _, _ = ahead.take(video)
            assert len(clip.indices) == 10
    assert not _alive(victim)


def test_cached_videos_are_not_decoded(videos, tmp_path):
    from scissor_cli.cache import FeatureCache

    folder = tmp_path / "v"
    folder.mkdir()
    for name in ("testsrc", "testsrc2", "smptebars"):
        (folder / f"{name}.mp4").write_bytes(videos[name].read_bytes())
    profile = fake_profile().override(model={"cache": True})
    jobs = jobs_from_paths([str(folder)], "Q?")
    run_batch(FakeVLM, jobs[:2], str(tmp_path / "warm.jsonl"), profile)  # two of three videos into the cache

    vlm = FakeVLM()
    ahead = decode_ahead([j.video for j in jobs], profile, 2, vlm, FeatureCache())
    try:
        taken = [ahead.take(j.video) for j in jobs]
    finally:
        ahead.close()
    assert taken[0] is None and taken[1] is None and taken[2] is not None, "cached videos must not be decoded"
    assert (ahead.n_sent, ahead.n_skipped) == (1, 2)

    out = tmp_path / "r.jsonl"
    run_batch(FakeVLM, jobs, str(out), profile, decode_workers=2)
    assert [r["cache_hit"] for r in read_jsonl(out)] == [True, True, False]


def test_out_of_range_workers_is_an_option_error(videos, tmp_path):
    jobs = jobs_from_paths([str(videos["testsrc"])], "Q?")
    for bad in (-1, 1.5, True):
        with pytest.raises(OptionError, match="--decode-workers"):
            run_batch(FakeVLM, jobs, str(tmp_path / "r.jsonl"), fake_profile(), decode_workers=bad)


# ---------------------------------------------------------------------------- resizing in the workers (real model)
def test_workers_resize_and_the_features_are_bit_identical(videos, tiny_hf_dir, tmp_path, monkeypatch):
    """With a real model the workers also resize the frames to its input size (one thread each); the vision tower's
    features, the records and the answers equal inline decoding's bit for bit, and the main process resizes
    nothing."""
    import torch

    from scissor_cli import model as model_module
    from scissor_cli.families import pixels  # where the LLaVA-OV encode resizes
    from scissor_cli.model import load_model
    from scissor_cli.options import ModelOptions, Profile
    from scissor_cli.pipeline import encode_video

    vlm = load_model(ModelOptions(model=str(tiny_hf_dir), device="cpu", dtype="float32"))
    profile = Profile(sampling=SamplingOptions(n_frames=12), model=ModelOptions(model=str(tiny_hf_dir), cache=False))
    order = [str(videos[n]) for n in ("testsrc", "testsrc2", "smptebars")]
    ahead = decode_ahead(order, profile, 2, vlm)
    try:
        assert ahead.resize_to == vlm.image_size
        resizes = []
        real_resize = pixels.resize_frames
        monkeypatch.setattr(pixels, "resize_frames", lambda *a: resizes.append(1) or real_resize(*a))
        for video in order:
            decoded = ahead.take(video)
            clip, decode_s, resized = decoded
            assert clip.frames is None and resized.dtype == np.uint8
            assert resized.shape == (len(clip.indices), 3, *vlm.image_size), resized.shape
            got = encode_video(vlm, video, profile, cache=None, decoded=decoded)
            assert not resizes, "the main process resized frames the workers had resized"
            want = encode_video(vlm, video, profile, cache=None)
            assert torch.equal(got.features, want.features), f"{video}: features differ"
            assert (got.indices, got.timestamps, got.note) == (want.indices, want.timestamps, want.note)
            resizes.clear()
    finally:
        ahead.close()

    monkeypatch.setattr(model_module, "load_model", lambda opts, **kw: vlm)
    jobs = jobs_from_paths(order, ["Q?", "Another?"])
    inline, worked = tmp_path / "inline.jsonl", tmp_path / "ahead.jsonl"
    run_batch(lambda: vlm, jobs, str(inline), profile, decode_workers=0)
    run_batch(lambda: vlm, jobs, str(worked), profile, decode_workers=2)
    a, b = read_jsonl(inline), read_jsonl(worked)
    assert all(r["status"] == "ok" for r in a + b), [r.get("error") for r in a + b]
    assert [without_timings(r) for r in a] == [without_timings(r) for r in b], "resizing in workers changed a record"


# ------------------------------------------------------------------------------------ cores: model vs decoders
@pytest.fixture
def two_threads(monkeypatch):
    """torch on 2 threads, and 2 cores for this process (whatever the machine has)."""
    import torch

    from scissor_cli import video_limits

    monkeypatch.setattr(video_limits, "available_cores", lambda: 2)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield torch
    torch.set_num_threads(before)


class _Busy:
    """A stand-in prefetcher whose ``n_decoding`` answers from a list (then its last value)."""

    def __init__(self, *counts: int):
        self.counts, self.calls = list(counts), 0

    def n_decoding(self) -> int:
        self.calls += 1
        return self.counts.pop(0) if len(self.counts) > 1 else self.counts[0]


def test_core_share_gives_busy_decoders_their_cores_and_takes_them_back(two_threads):
    torch = two_threads
    share = CoreShare(_Busy(1, 0, 5, 0))
    seen = []
    for _ in range(4):
        share()
        seen.append(torch.get_num_threads())
    assert seen == [1, 2, 1, 2], "threads = max(1, base - decoders busy), re-evaluated at every call"
    share.prefetcher = _Busy(1)
    share()
    torch.set_num_threads(1)  # something else changed the count: restore still puts base back
    share.threads = 2
    share.restore()
    assert torch.get_num_threads() == 2 and share.threads == 2


def test_core_share_counts_cores_not_threads(two_threads, monkeypatch):
    """torch often runs fewer threads than the cores (physical cores only, OMP_NUM_THREADS): a busy decoder on a
    core torch does not use takes nothing from it."""
    from scissor_cli import video_limits

    torch = two_threads
    monkeypatch.setattr(video_limits, "available_cores", lambda: 4)
    share, seen = CoreShare(_Busy(1, 2, 3, 4)), []
    for _ in range(4):
        share()
        seen.append(torch.get_num_threads())
    assert seen == [2, 2, 1, 1], "threads = min(base, cores - decoders busy), at least 1"


def test_n_decoding_counts_only_workers_still_decoding(videos, tmp_path):
    slow = make_clip(tmp_path / "slow.mp4", "testsrc2", seconds=30.0)
    with Prefetcher([str(slow), str(videos["testsrc"])], SamplingOptions(n_frames=32), n_workers=1) as ahead:
        assert ahead.n_decoding() == 1, "a worker that was just handed a video is decoding it"
        (worker,) = ahead._workers
        assert worker.conn.poll(60), "the decode did not finish"
        assert ahead.n_decoding() == 0 and ahead.n_ahead == 1, "done but not taken: holding its clip, not decoding"
        ahead.take(str(slow))
        assert ahead.n_decoding() == 1  # the slot went to the next video


class _ThreadsSeen(FakeVLM):
    """Calls ``on_step`` like the real model does before each step; records torch's threads at each step."""

    seen: list = []
    on_step = None

    def generate(self, requests, gen):
        import torch

        if self.on_step is not None:
            self.on_step()
        type(self).seen.append((torch.get_num_threads(), self.on_step is not None))
        return super().generate(requests, gen)


def test_batch_sizes_torch_threads_only_while_decoding_ahead(videos, tmp_path, monkeypatch, two_threads):
    torch = two_threads
    jobs = jobs_from_paths([str(videos[n]) for n in ("testsrc", "testsrc2", "smptebars")], "Q?")
    monkeypatch.setattr(_ThreadsSeen, "seen", [])
    run_batch(_ThreadsSeen, jobs, str(tmp_path / "inline.jsonl"), fake_profile(), batch_size=1,
              decode_workers=0)  # fmt: skip
    assert _ThreadsSeen.seen == [(2, False)] * 3, "inline decoding leaves torch's threads alone"

    monkeypatch.setattr(Prefetcher, "n_decoding", lambda self: 1)  # a decoder is always busy
    monkeypatch.setattr(_ThreadsSeen, "seen", [])
    holder = []
    run_batch(lambda: holder.append(_ThreadsSeen()) or holder[-1], jobs, str(tmp_path / "ahead.jsonl"),
              fake_profile(), batch_size=1, decode_workers=1)  # fmt: skip
    assert _ThreadsSeen.seen == [(1, True)] * 3, "one core left to the busy decoder"
    assert torch.get_num_threads() == 2 and holder[0].on_step is None, "threads and the hook restored after"


def test_the_model_calls_on_step_per_vision_chunk_and_per_generated_token(tiny_hf_dir, two_threads):
    """The real model re-sizes the pool as decoders start and finish, not once per video."""
    from scissor_cli.model import FRAMES_PER_CHUNK, load_model
    from scissor_cli.options import GenerationOptions, ModelOptions

    torch = two_threads
    vlm = load_model(ModelOptions(model=str(tiny_hf_dir), device="cpu", dtype="float32"))
    busy = _Busy(1, 1, 1, 0)  # chunk 1, chunk 2, prefill: busy; then every generation step: idle
    vlm.on_step = CoreShare(busy)
    forward, seen = vlm.hf_model.forward, []

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return forward(*args, **kwargs)

    vlm.hf_model.forward = spy
    frames = np.random.default_rng(0).integers(0, 255, (2 * FRAMES_PER_CHUNK, 98, 98, 3), dtype=np.uint8)
    tokens = vlm.encode(frames)
    assert busy.calls == 2, "one call per vision chunk"
    out = vlm.generate([(tokens[:, :4].reshape(-1, tokens.shape[-1]), "What is happening?")],
                       GenerationOptions(max_new_tokens=6, temperature=0.0))  # fmt: skip
    n_steps = len(seen)
    assert n_steps >= 2 and out.n_new_tokens[0] >= 2
    assert seen[0] == 1, "the prefill runs beside the busy decoder on one thread"
    assert seen[1:] == [2] * (n_steps - 1), "each step after a decoder finished gets both threads back"
    assert busy.calls >= 2 + n_steps, "called before the prefill and after every step"


# --------------------------------------------------------------------------------------------- Ctrl-C cleanup
CLI_DRIVER = """
import sys
sys.path.insert(0, {tests!r})
import scissor_cli.model
from test_batch import FakeVLM
scissor_cli.model.load_model = lambda opts, **kw: FakeVLM(delay_s=float(sys.argv[1]))
from scissor_cli.cli import app
if __name__ == "__main__":  # the decode workers are spawned: they import this file without running it
    app(sys.argv[2:], prog_name="scissor")
"""


def _children() -> dict[int, set[int]]:
    """{parent pid: child pids} of every process we can see."""
    tree: dict[int, set[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            tree.setdefault(ppid, set()).add(int(entry))
    return tree


def _descendants(pid: int) -> dict[int, str]:
    tree, found, todo = _children(), {}, [pid]
    while todo:
        for child in tree.get(todo.pop(), ()):
            try:
                found[child] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    """Running or a zombie (a process nobody reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "X"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc")
def test_ctrl_c_leaves_no_worker_or_ffmpeg_behind(tmp_path):
    folder = tmp_path / "gifs"
    for i in range(4):  # GIFs are decoded by ffmpeg (decord cannot): the workers have ffmpeg children
        path = folder / f"g{i}.gif"
        make_clip(path.with_suffix(".mp4"), "testsrc2", seconds=40.0)
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(path.with_suffix(".mp4")), str(path)],
                       check=True, timeout=120)  # fmt: skip
        path.with_suffix(".mp4").unlink()
    driver = tmp_path / "cli_driver.py"
    driver.write_text(textwrap.dedent(CLI_DRIVER.format(tests=str(TESTS_DIR))))
    out = tmp_path / "r.jsonl"
    args = ["batch", str(folder), "-q", "Q?", "-o", str(out), "--model", "fake", "--frames", "4", "--no-cache",
            "--batch-size", "1", "--decode-workers", "2"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, str(driver), "0.5", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    seen: dict[int, str] = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        seen.update(_descendants(proc.pid))
        if any("ffmpeg" in cmd for cmd in seen.values()) and len(_descendants(proc.pid)) >= 3:
            break  # two workers and at least one ffmpeg under them right now
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before Ctrl-C: {proc.stderr.read().decode()[-2000:]}"
    assert any("ffmpeg" in cmd for cmd in seen.values()), seen
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    stderr = stderr.decode()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    assert len([x for x in stderr.splitlines() if "interrupted" in x]) == 1, stderr
    left = {pid: cmd for pid, cmd in seen.items() if _alive(pid)}
    assert not {p: c for p, c in left.items() if "resource_tracker" not in c}, f"left after Ctrl-C: {left}"
    deadline = time.monotonic() + 5  # multiprocessing's resource tracker ends once it reads its pipe's end
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = {pid: cmd for pid, cmd in left.items() if _alive(pid)}
    assert not left, f"processes left after Ctrl-C: {left}"

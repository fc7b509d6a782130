"""Hostile video inputs (issue 19): the memory estimate and budget, decoding huge inputs at the model's size, files
that are not regular files, symlink loops, a --start past the real end, and ffmpeg stalls and signals.

The memory tests that decode run in a subprocess under an address-space cap (RLIMIT_AS), so a regression fails the
test instead of exhausting the machine."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from scissor_cli import video, video_limits
from scissor_cli.cli import app
from scissor_cli.errors import OptionError, ProfileError, VideoError
from scissor_cli.options import parse_memory_budget

TESTS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS_DIR))
from media import N_INDEX_FRAMES, huge_png, huge_screen_gif, make_media, read_index  # noqa: E402

pytestmark = pytest.mark.skipif(
    shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None, reason="needs the ffmpeg and ffprobe binaries"
)

REPO = TESTS_DIR.parent
LLAVA_OV = video.ModelInput((384, 384), 196, 896)  # llava-onevision-qwen2-0.5b: 384 px, 196 tokens of 896
GIB = 1 << 30


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    return make_media(tmp_path_factory.mktemp("media"))


def _info(width: int, height: int, n_frames: int = 1000, **kw) -> video.VideoInfo:
    fields = dict(path="/v.mp4", duration=n_frames / 25, fps=25.0, n_frames=n_frames, width=width, height=height)
    fields.update(rotation=0, codec="h264", backend="decord", is_image=False)
    fields.update(kw)
    return video.VideoInfo(**fields)


# ---------------------------------------------------------------------------------------------- memory: pure


def test_estimate_states_the_formula():
    est = video.estimate_memory(_info(1920, 1080), 32, LLAVA_OV)
    assert est.size == (1920, 1080)
    assert est.frames == 32 * 1080 * 1920 * 3
    assert est.decoder == 8 * 1920 * 1080
    assert est.model == 32 * (3 * 384 * 384 * 4 + 196 * 896 * 4)
    assert est.total == est.frames + est.decoder + est.model
    assert video.estimate_memory(_info(1920, 1080), 32).model == 0, "no model: frames and decoder only"


def test_ordinary_videos_keep_their_own_size():
    for (w, h), n in [((1920, 1080), 32), ((3840, 2160), 32), ((1280, 720), 256), ((96, 64), 4096)]:
        assert video.decode_size(_info(w, h), n, LLAVA_OV) == (w, h), (w, h, n)
    assert video.decode_size(_info(16000, 16000), 32, None) == (16000, 16000), "without a model nothing shrinks"


def test_huge_inputs_are_decoded_near_the_models_size():
    # twice the model's input where that fits the limit, the input itself where it does not; never below it
    assert video.decode_size(_info(16000, 16000), 32, LLAVA_OV) == (768, 768)
    assert video.decode_size(_info(16000, 16000, is_image=True), 1, LLAVA_OV) == (768, 768)
    assert video.decode_size(_info(1920, 1080), 1440, LLAVA_OV) == (384, 384)  # 8.7 GiB at full size
    assert video.decode_size(_info(16000, 300), 100, LLAVA_OV) == (768, 300), "a side already small stays"
    est = video.estimate_memory(_info(16000, 16000), 32, LLAVA_OV)
    assert est.frames == 32 * 768 * 768 * 3 and est.decoder == 8 * 16000 * 16000


def _qwen(family: str):
    """The published checkpoints' video bounds: Qwen2.5-VL 100,352..602,112 px a frame (patch 14, merge 2, LLM
    width 2048 for the 3B), Qwen3-VL 4,096..25,165,824 px a clip (patch 16, 3 DeepStack levels, 2560 for the 4B)."""
    from scissor_cli.families.qwen import QwenSettings

    mean = (0.5, 0.5, 0.5)
    if family == "qwen2_5_vl":
        return QwenSettings(100352, 602112, 14, 2, 2, mean, mean, False, 2048, 0, 1)
    return QwenSettings(4096, 25165824, 16, 2, 2, mean, mean, True, 2560, 3, 1)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_qwen_inputs_are_decoded_near_twice_their_own_size(family):
    """Qwen sizes each video itself: a huge one is decoded with its aspect kept near twice that size, never below
    it, at a size the model resizes to the same input (the same token grid) as the full-size frames."""
    import pickle

    s = _qwen(family)
    model = video.ModelInput(None, None, s.dim, s)
    assert pickle.loads(pickle.dumps(model)) == model, "decode-ahead workers receive it"
    for (w, h), n in [((1920, 1080), 32), ((3840, 2160), 32), ((96, 64), 4096)]:
        assert video.decode_size(_info(w, h), n, model) == (w, h), "ordinary videos keep their frames"
    # the last two: the plain scaled size of each would move Qwen2.5-VL's (first) or Qwen3-VL's grid
    for (w, h), n in [((7680, 4320), 32), ((3840, 2160), 64), ((16000, 16000), 32), ((16000, 300), 100),
                      ((1920, 1080), 1440), ((2000, 2904), 64), ((2331, 4857), 32)]:  # fmt: skip
        dw, dh = video.decode_size(_info(w, h), n, model)
        th, tw = s.frame_size(n, h, w)
        assert (dw, dh) != (w, h) and dw >= tw and dh >= th, ((w, h), n, (dw, dh), (tw, th))
        assert s.frame_size(n, dh, dw) == (th, tw), f"{(w, h)} x {n}: decoded at {(dw, dh)} the grid moved"
        if n * (2 * tw) * (2 * th) * 3 <= video_limits.FULL_SIZE_LIMIT_BYTES:
            assert 1.99 < min(dw / tw, dh / th) < 2.2, ((w, h), n, (dw, dh))  # one side at twice, aspect kept
        assert abs(dw / dh - w / h) / (w / h) < 0.05 or min(dw - tw, dh - th) < 2, "the aspect is kept"
    expect = {"qwen2_5_vl": (2016, 1134), "qwen3_vl": (2304, 1296)}[family]
    assert video.decode_size(_info(7680, 4320), 32, model) == expect


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_qwen_memory_estimate_counts_its_pixels_and_tokens(family):
    s = _qwen(family)
    model = video.ModelInput(None, None, s.dim, s)
    est = video.estimate_memory(_info(3840, 2160), 31, model)
    th, tw = s.frame_size(31, 2160, 3840)
    tokens = 16 * (th // (s.patch * 2)) * (tw // (s.patch * 2))  # 31 frames: 16 temporal patches
    assert s.n_tokens(31, 2160, 3840) == tokens
    assert est.model == 2 * 32 * 3 * th * tw * 4 + tokens * s.dim * (1 + s.n_deep) * 4
    assert est.total == est.frames + est.decoder + est.model
    with pytest.raises(VideoError, match="model step"):
        video.check_memory("v.mp4", est, est.frames + est.decoder + est.model // 2)


def test_the_model_input_of_each_family():
    """``ModelInput.of`` asks the family: Qwen's settings size each video, LLaVA-OV's input is its image size."""
    from scissor_cli.families import LLAVA_OV as LLAVA_FAMILY
    from scissor_cli.families import QWEN2_5_VL

    s = _qwen("qwen2_5_vl")
    qwen = type("V", (), dict(family=QWEN2_5_VL, family_settings=s, image_size=None, tokens_per_frame=None,
                              hidden_size=2048))()  # fmt: skip
    assert video.ModelInput.of(qwen) == video.ModelInput(None, None, 2048, s)
    plain = type("V", (), dict(family=LLAVA_FAMILY, image_size=(384, 384), tokens_per_frame=196, hidden_size=896))()
    assert video.ModelInput.of(plain) == LLAVA_OV


def test_memory_budget_values():
    assert parse_memory_budget("8G") == (8 * GIB, None)
    assert parse_memory_budget("512M") == (512 << 20, None)
    assert parse_memory_budget("1.5GiB") == (int(1.5 * GIB), None)
    assert parse_memory_budget("0.5") == (None, 0.5)
    assert parse_memory_budget(1) == (None, 1.0)
    for bad in ("2", "0", "-1G", "lots", "10K", "", "1.5.2G"):
        with pytest.raises(ValueError):
            parse_memory_budget(bad)


def test_budget_default_is_half_the_available_memory(monkeypatch):
    monkeypatch.setattr(video_limits, "available_memory", lambda: 4 * GIB)
    assert video.resolve_memory_budget(None) == 2 * GIB
    assert video.resolve_memory_budget("0.25") == GIB
    assert video.resolve_memory_budget("3G") == 3 * GIB
    monkeypatch.setattr(video_limits, "available_memory", lambda: None)
    assert video.resolve_memory_budget(None) is None, "unknown available memory: no limit"


def test_available_memory_counts_the_address_space_limit():
    code = textwrap.dedent(
        """
        import resource
        from scissor_cli import video
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, resource.RLIM_INFINITY))
        print(video.available_memory())
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=_env())
    assert out.returncode == 0, out.stderr
    assert 0 < int(out.stdout) < 3 << 30, "the cap, less what is already mapped"


def test_budget_flag_and_profile_key_are_validated(media, tmp_path, monkeypatch):
    monkeypatch.setenv("SCISSOR_PROFILES_DIR", str(tmp_path / "profiles"))
    r = CliRunner().invoke(app, ["inspect", str(media.index_mp4), "--video-only", "--memory-budget", "lots"])
    assert r.exit_code == OptionError.exit_code, r.output
    assert "--memory-budget" in r.stderr and "8G" in r.stderr and "Traceback" not in r.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("sampling:\n  memory_budget: 3\n")
    r = CliRunner().invoke(app, ["inspect", str(media.index_mp4), "--video-only", "--profile", str(bad)])
    assert r.exit_code == ProfileError.exit_code and "sampling.memory_budget" in r.stderr, r.output
    good = tmp_path / "good.yaml"
    good.write_text("sampling:\n  memory_budget: 2G\n")
    r = CliRunner().invoke(app, ["profiles", "show", str(good)])
    assert r.exit_code == 0 and "memory_budget: 2G" in r.stdout, r.output


# ----------------------------------------------------------------------------------------- memory: decoding


def test_a_video_over_the_budget_is_refused_before_decoding(media, monkeypatch):
    def no_decoding(*args, **kwargs):
        raise AssertionError("refused videos are not decoded")

    monkeypatch.setattr(video, "_decode_decord", no_decoding)
    monkeypatch.setattr(video, "_decode_ffmpeg", no_decoding)
    with pytest.raises(VideoError) as e:
        video.sample_frames(media.index_mp4, n_frames=8, model=LLAVA_OV, memory_budget="1M")
    assert e.value.exit_code == 4
    assert e.value.message.startswith(f"{media.index_mp4}: 8 frames at 96x64 need about ")
    assert "more than the memory budget of 1.0 MiB" in e.value.message and "model step" in e.value.message
    assert "--frames" in e.value.hint and "--memory-budget" in e.value.hint


def test_an_allocation_failure_while_decoding_is_a_video_error(media, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 22.9 GiB")

    for backend in ("_decode_decord", "_decode_ffmpeg"):
        monkeypatch.setattr(video, backend, out_of_memory)
    for path in (media.index_mp4, media.png):
        with pytest.raises(VideoError) as e:
            video.sample_frames(path, n_frames=4, memory_budget="1T")
        assert "out of memory while decoding" in e.value.message and "--frames" in e.value.hint


def test_ordinary_frames_are_unchanged_by_the_model_size(media):
    plain = video.sample_frames(media.index_mp4, n_frames=8)
    sized = video.sample_frames(media.index_mp4, n_frames=8, model=LLAVA_OV)
    assert sized.backend == plain.backend == "decord" and np.array_equal(sized.frames, plain.frames)
    assert sized.note == plain.note


def test_frames_past_the_limit_are_decoded_smaller_by_ffmpeg(media, monkeypatch):
    monkeypatch.setattr(video_limits, "FRAME_LIMIT_BYTES", 1000)  # the 96x64 index clip counts as huge
    small = video.ModelInput((24, 24), 4, 8)
    clip = video.sample_frames(media.index_mp4, n_frames=8, model=small)
    assert clip.frames.shape == (8, 48, 48, 3) and clip.backend == "ffmpeg"
    assert "decoded at 48x48 instead of 96x64 (memory)" in clip.note
    assert tuple(read_index(f) for f in clip.frames) == clip.indices, "the planned frames, smaller"


CAPPED = """
import json, sys, resource
from scissor_cli import video
from scissor_cli.errors import ScissorError
resource.setrlimit(resource.RLIMIT_AS, ({cap}, resource.RLIM_INFINITY))
path, n_frames, budget = sys.argv[1], int(sys.argv[2]), sys.argv[3] or None
size, tokens, hidden = map(int, sys.argv[4:7])
model = video.ModelInput((size, size), tokens, hidden)
try:
    clip = video.sample_frames(path, n_frames=n_frames, model=model, memory_budget=budget)
except ScissorError as e:
    print(json.dumps({{"exit": e.exit_code, "message": e.message}}))
else:
    print(json.dumps({{"exit": 0, "shape": list(clip.frames.shape), "note": clip.note}}))
"""
CAP = 1536 << 20  # 1.5 GiB of address space: the full-size frames of any of these would not fit


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}


def _capped(path: Path, n_frames: int, budget: str | None = None, model: video.ModelInput = LLAVA_OV) -> dict:
    code = CAPPED.format(cap=CAP)
    dims = [model.size[0], model.tokens_per_frame, model.hidden_size]
    args = [sys.executable, "-c", code, str(path), str(n_frames), budget or "", *map(str, dims)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120, env=_env())
    assert out.returncode == 0, f"crashed under the cap (exit {out.returncode}):\n{out.stderr[-2000:]}"
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    long_clip = d / "long.mp4"  # 60 s at 24 fps: 1440 frames
    cmd = ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=24", "-t", "60"]
    cmd += ["-c:v", "libx264", "-preset", "ultrafast", "-g", "240", "-pix_fmt", "yuv420p", str(long_clip)]
    subprocess.run(cmd, check=True, timeout=120)
    return {
        "gif16k": huge_screen_gif(d / "screen16k.gif", 16000, 4),
        "gif8k": huge_screen_gif(d / "screen8k.gif", 8000, 3),
        "png16k": huge_png(d / "huge.png", 16000),
        "long": long_clip,
    }


@pytest.mark.parametrize("name", ["gif16k", "png16k"])
def test_huge_pictures_are_refused_under_a_cap(hostile, name):
    """A GIF of a few hundred bytes with a 16000 x 16000 screen, a 16000 x 16000 PNG of 70 KiB: at the video's size
    32 frames would ask for 22.9 GiB; the decoder alone needs ~2 GiB, over the default budget under the cap."""
    assert hostile[name].stat().st_size < 100_000
    r = _capped(hostile[name], 32)
    assert r["exit"] == 4, r
    assert "at 768x768 need about" in r["message"] and "more than the memory budget" in r["message"], r


def test_a_huge_screen_decodes_at_the_models_size_under_a_cap(hostile):
    r = _capped(hostile["gif8k"], 32, budget="1G")
    assert r["exit"] == 0, r
    assert r["shape"] == [3, 768, 768, 3] and "decoded at 768x768 instead of 8000x8000" in r["note"], r


def test_thousands_of_frames_are_refused_or_fit_under_a_cap(hostile):
    r = _capped(hostile["long"], 4096)  # LLaVA-OV's vision step for 1440 frames: ~3.3 GiB
    assert r["exit"] == 4 and "1440 frames at 320x240 need about" in r["message"], r
    assert "model step 3.3 GiB" in r["message"], r
    r = _capped(hostile["long"], 4096, budget="1G", model=video.ModelInput((32, 32), 4, 64))  # a small model
    assert r["exit"] == 0 and r["shape"] == [1440, 240, 320, 3], r


def test_cli_refuses_a_video_over_the_budget_in_one_line(hostile, tiny_hf_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("SCISSOR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ["ask", str(hostile["gif16k"]), "What?", "--model", str(tiny_hf_dir), "--memory-budget", "64M"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == VideoError.exit_code, r.output
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert lines[0].startswith("error: ") and "4 frames at 196x196 need about" in lines[0], r.stderr
    assert "memory budget of 64.0 MiB" in lines[0] and "Traceback" not in r.output


# ------------------------------------------------------------------------------------------------ odd files


def _probe_in_time(path: Path, seconds: float = 10.0) -> BaseException | None:
    """probe(path) in a thread; the error it raised. Fails (instead of hanging) when it blocks."""
    caught: list[BaseException] = []

    def target():
        try:
            video.probe(path)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            caught.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        with open(path, "wb"):  # a writer releases a reader blocked on a FIFO
            pass
        pytest.fail(f"probe({path.name}) blocked for {seconds} s")
    return caught[0] if caught else None


def test_a_fifo_is_refused_at_once(tmp_path):
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    e = _probe_in_time(fifo)
    assert isinstance(e, VideoError), e
    assert e.message == f"{fifo} is a named pipe (FIFO), not a regular file" and "scissor ask -" in e.hint


def test_devices_and_sockets_are_refused(tmp_path):
    if os.path.exists("/dev/null"):
        e = _probe_in_time(Path("/dev/null"))
        assert isinstance(e, VideoError) and e.message == "/dev/null is a character device, not a regular file"
    path = tmp_path / "s.mp4"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        e = _probe_in_time(path)
    assert isinstance(e, VideoError) and e.message == f"{path} is a socket, not a regular file"


def test_a_symlink_loop_is_named_as_one(tmp_path):
    loop = tmp_path / "loop.mp4"
    loop.symlink_to(loop.name)
    with pytest.raises(VideoError) as e:
        video.probe(loop)
    assert e.value.message == f"{loop} is a symlink loop (the link points back to itself)"
    dangling = tmp_path / "dangling.mp4"
    dangling.symlink_to("nowhere.mp4")
    with pytest.raises(VideoError, match="no such file"):
        video.probe(dangling)


BATCH_DRIVER = """
import sys
sys.path.insert(0, {tests!r})
import scissor_cli.model
from test_batch import FakeVLM
scissor_cli.model.load_model = lambda opts, **kw: FakeVLM()
from scissor_cli.cli import app
app(sys.argv[1:], prog_name="scissor")
"""


@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_fifo_or_a_video_over_the_budget_in_a_batch_folder_is_that_jobs_error(media, tmp_path, workers):
    folder = tmp_path / "videos"
    folder.mkdir()
    shutil.copy(media.index_mp4, folder / "a.mp4")
    os.mkfifo(folder / "b.mp4")
    shutil.copy(media.index_mp4, folder / "c.mp4")
    huge_screen_gif(folder / "d.gif", 16000, 4)  # 4 frames of 16000 x 16000: 2.9 GiB at the video's size
    driver = tmp_path / "driver.py"
    driver.write_text(BATCH_DRIVER.format(tests=str(TESTS_DIR)))
    out = tmp_path / "r.jsonl"
    args = ["batch", str(folder), "-q", "Q?", "-o", str(out), "--model", "fake", "--frames", "4", "--no-cache"]
    args += ["--decode-workers", workers, "--memory-budget", "1G"]
    env = {**_env(), "SCISSOR_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, str(driver), *args], capture_output=True, text=True, timeout=120, env=env)
    records = {Path(r["video"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    assert records["a.mp4"]["status"] == records["c.mp4"]["status"] == "ok", done.stderr
    assert records["b.mp4"]["status"] == "error" and records["b.mp4"]["error_type"] == "VideoError"
    assert records["b.mp4"]["error"].endswith("b.mp4 is a named pipe (FIFO), not a regular file")
    assert records["d.gif"]["status"] == "error" and records["d.gif"]["error_type"] == "VideoError"
    assert "4 frames at 16000x16000 need about" in records["d.gif"]["error"], records["d.gif"]
    assert records["d.gif"]["error"].endswith("more than the memory budget of 1.0 GiB")
    assert done.returncode == 1, done.stderr  # some jobs failed


# -------------------------------------------------------------------------------------------- --start past the end


def test_start_past_the_real_frames_is_refused_naming_the_real_length():
    lying = _info(64, 48, n_frames=20, duration=36000.0, fps=10.0)  # a header claiming 10 h over 2 s of frames
    with pytest.raises(VideoError) as e:
        video.plan_frames(lying, start=100)
    assert "has frames for only 2.00 s" in e.value.message and "claims 36000.00 s" in e.value.message
    assert e.value.hint == "give a --start below 2.00"
    assert video.plan_frames(lying, start=1.95, n_frames=4).indices == (19,), "inside the last frame: that frame"


def test_a_header_claiming_10_hours_gets_no_frame_from_elsewhere(media, tmp_path):
    data = bytearray(media.index_mkv.read_bytes())
    at = data.find(b"\x44\x89\x88")  # the segment's Duration: an 8-byte float, in milliseconds
    assert at > 0, "test data: the mkv has a Duration element"
    data[at + 3 : at + 11] = struct.pack(">d", 36_000_000.0)
    lying = tmp_path / "ten_hours.mkv"
    lying.write_bytes(bytes(data))
    info = video.probe(lying)
    assert info.duration == 36000.0 and info.n_frames == N_INDEX_FRAMES, info
    with pytest.raises(VideoError, match=r"has frames for only 4\.00 s"):
        video.sample_frames(lying, start=100, info=info)
    clip = video.sample_frames(lying, n_frames=4, start=2, info=info)  # a window inside the real frames still works
    assert tuple(read_index(f) for f in clip.frames) == clip.indices and clip.indices[0] == 20


# ------------------------------------------------------------------------------------------ stalls and signals


class _StallingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves the media folder under /<anything>/<name>; once ``server.stall`` is set, sends the headers and the
    first KiB, then nothing until ``server.release`` (a server that passed the probe, then drips)."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        name = self.path.rsplit("/", 1)[-1]
        path = Path(self.directory) / name
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not self.server.stall.is_set():
            self.wfile.write(data)
            self.server.n_served += 1
            return
        self.wfile.write(data[:1024])
        self.wfile.flush()
        self.server.release.wait(60)


@pytest.fixture
def stalling(media):
    handler = lambda *a, **kw: _StallingHandler(*a, directory=str(media.index_mkv.parent), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.stall, server.release = threading.Event(), threading.Event()
    server.n_served = 0  # requests answered whole
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()


def test_a_stalled_server_is_stopped_by_the_stall_timeout(stalling, monkeypatch):
    url = f"http://127.0.0.1:{stalling.server_address[1]}/x/index.mkv"
    info = video.probe(url)  # the header says 4 s; then the server stops sending
    stalling.stall.set()
    monkeypatch.setattr(video, "FRAME_GAP_TIMEOUT_S", 1.0)
    t0 = time.monotonic()
    with pytest.raises(VideoError) as e:
        video.sample_frames(url, n_frames=8, info=info)
    assert time.monotonic() - t0 < 8, "stopped by the stall timeout, not ffmpeg's own 20 s or a declared duration"
    assert e.value.message == f"{url}: ffmpeg received nothing to decode for 1 s and was stopped"


def _clean_up(proc: subprocess.Popen, token: str) -> None:
    """Whatever a failed assertion left running: the driver and any ffmpeg it started."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for pid in _processes_with(token):
        os.kill(pid, signal.SIGKILL)


def _processes_with(token: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z" and os.path.basename(argv[0]) == b"ffmpeg" and any(token.encode() in a for a in argv):
                found.append(int(entry))
    return found


DECODE_DRIVER = """
import signal, sys
from scissor_cli import video
# cli.py turns SIGTERM into the same interruption as Ctrl-C
signal.signal(signal.SIGTERM, signal.getsignal(signal.SIGINT))
info = video.probe(sys.argv[1])
print("probed", flush=True)
sys.stdin.readline()
video.sample_frames(sys.argv[1], n_frames=8, info=info)
"""


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds ffmpeg processes through /proc")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_ends_the_decode_and_leaves_no_ffmpeg(stalling, sig):
    token = f"t{os.getpid()}x{int(sig)}x{time.monotonic_ns()}"
    url = f"http://127.0.0.1:{stalling.server_address[1]}/{token}/index.mkv"
    proc = subprocess.Popen(
        [sys.executable, "-c", DECODE_DRIVER, url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    )
    try:
        assert proc.stdout.readline() == b"probed\n"
        stalling.stall.set()
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        deadline = time.monotonic() + 20
        while not _processes_with(token):
            assert time.monotonic() < deadline and proc.poll() is None, "ffmpeg never started"
            time.sleep(0.05)
        time.sleep(0.3)  # ffmpeg is blocked on the stalled server
        proc.send_signal(sig)  # to scissor alone: ffmpeg is in a process group of its own
        t0 = time.monotonic()
        proc.wait(timeout=30)
        assert time.monotonic() - t0 < 5, "the interruption kills ffmpeg instead of waiting for it"
        assert "KeyboardInterrupt" in proc.stderr.read().decode()
        time.sleep(0.2)
        assert _processes_with(token) == [], "no ffmpeg is left behind"
    finally:
        _clean_up(proc, token)


# ------------------------------------------------------------------------------------------ decode-ahead workers


def test_decode_ahead_workers_apply_the_budget_and_name_allocation_failures(media):
    from scissor_cli.options import SamplingOptions
    from scissor_cli.prefetch import Prefetcher

    order = [str(media.index_mp4), str(media.index_webm)]
    with Prefetcher(order, SamplingOptions(n_frames=4, memory_budget="1M"), n_workers=1, model=LLAVA_OV) as ahead:
        with pytest.raises(VideoError, match="more than the memory budget of 1.0 MiB"):
            ahead.take(order[0])
    # a resize the machine cannot hold (torch: "can't allocate memory") is the video's error, not a crash
    with Prefetcher(order[:1] * 2, SamplingOptions(n_frames=4), n_workers=1, resize_to=(100_000, 100_000)) as ahead:
        with pytest.raises(VideoError) as e:
            ahead.take(order[0])
    assert e.value.message == f"{order[0]}: out of memory while decoding" and "--frames" in e.value.hint


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds ffmpeg processes through /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_the_cli_ends_a_stalled_decode_on_sigterm_and_sighup(stalling, tiny_hf_dir, sig):
    """The command's own handlers (not a test stand-in): one line, exit 128 + signal, ffmpeg's group gone."""
    token = f"c{os.getpid()}x{int(sig)}x{time.monotonic_ns()}"
    url = f"http://127.0.0.1:{stalling.server_address[1]}/{token}/index.mkv"
    args = [
        sys.executable,
        "-m",
        "scissor_cli",
        "inspect",
        url,
        "--model",
        str(tiny_hf_dir),
        "--frames",
        "8",
        "--no-cache",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env())
    try:
        deadline = time.monotonic() + 60
        while not stalling.n_served:  # the probe is served whole; the decode (after the model loads) stalls
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.01)
        stalling.stall.set()
        while not _processes_with(token):
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 128 + int(sig), (proc.returncode, err.decode()[-2000:])
        assert err.decode().strip().splitlines()[-1].startswith("interrupted"), err.decode()[-2000:]
        assert "Traceback" not in err.decode()
        time.sleep(0.2)
        assert _processes_with(token) == [], "no ffmpeg is left behind"
    finally:
        _clean_up(proc, token)

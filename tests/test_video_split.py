"""Split decoding (scissor_cli.video._decode_split): one long video's sampled frames decoded by several threads give
the serial decode's frames bit for bit, in order; short or small decodes stay serial; ``--decode-workers`` reaches
the decoder; batch's decode-ahead workers decode serially."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest

from scissor_cli import video
from scissor_cli.options import SamplingOptions

sys.path.insert(0, str(Path(__file__).parent))
from media import N_INDEX_FRAMES, index_frame, make_media, read_index  # noqa: E402

pytestmark = pytest.mark.skipif(
    shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None, reason="needs the ffmpeg and ffprobe binaries"
)
decord = pytest.importorskip("decord")

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "samples" / "bigbuckbunny.mp4"


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    return make_media(tmp_path_factory.mktemp("media"))


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    """30 s of 640x360 at 25 fps (750 frames), a keyframe every 50: 32 sampled frames are enough pixels and span
    enough frames for two threads (about a second to make)."""
    out = tmp_path_factory.mktemp("long") / "long.mp4"
    src = "testsrc2=size=640x360:rate=25:duration=30"
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", src, "-c:v", "libx264"]
    subprocess.run([*cmd, "-preset", "ultrafast", "-g", "50", "-pix_fmt", "yuv420p", str(out)], check=True, timeout=120)
    return out


def _info(n_frames=9000, width=1920, height=1080, **kw) -> video.VideoInfo:
    fields = dict(path="/v.mp4", duration=n_frames / 30, fps=30.0, n_frames=n_frames, width=width, height=height)
    fields.update(rotation=0, codec="h264", backend="decord", is_image=False)
    fields.update(kw)
    return video.VideoInfo(**fields)


def _plan(info, n=32):
    return video.plan_frames(info, n_frames=n).indices


# ------------------------------------------------------------------------------------------------ bit-identical


@pytest.mark.parametrize("n_workers", [2, 3, 5])
def test_split_frames_equal_the_serial_decode_on_a_real_clip(n_workers):
    info = video.probe(SAMPLE)
    indices = _plan(info, 32)
    serial = video._decode_decord(info, indices)
    split, backend = video._decode_split(info, indices, n_workers, use_torchcodec=False)
    assert backend == "decord"
    assert split.shape == serial.shape == (32, info.height, info.width, 3)
    assert np.array_equal(split, serial), "a chunk's frames differ from the serial decode's"


def test_split_frames_equal_the_serial_decode_with_chunks_starting_mid_gop(media):
    # every frame of a clip with a keyframe every 8: most chunks start between keyframes, so they seek back
    for path in (media.index_mp4, media.rot90, media.index_yuv444):
        info = video.probe(path)
        indices = tuple(range(N_INDEX_FRAMES))
        serial = video._decode_decord(info, indices)
        split, _ = video._decode_split(info, indices, 7, use_torchcodec=False)
        assert np.array_equal(split, serial), path.name
        assert [read_index(f) for f in split] == list(indices)


def test_sample_frames_splits_a_long_clip_and_gives_the_serial_frames(long_clip):
    info = video.probe(long_clip)
    serial = video.sample_frames(long_clip, n_frames=32, info=info, workers=1)
    split = video.sample_frames(long_clip, n_frames=32, info=info, workers=2)
    assert (serial.workers, split.workers, serial.backend) == (1, 2, "decord")
    assert split.backend == ("torchcodec" if video._torchcodec() else "decord")
    assert split.indices == serial.indices
    assert np.array_equal(split.frames, serial.frames)
    assert split.frames.flags.c_contiguous
    # the ffmpeg fallback is not split, and gives the same frames as before
    ffmpeg = video.sample_frames(long_clip, n_frames=32, info=dataclasses.replace(info, backend="ffmpeg"), workers=2)
    assert ffmpeg.workers == 1 and ffmpeg.indices == serial.indices


# ------------------------------------------------------------------------------------------------- how many


def test_split_workers_rules(monkeypatch):
    import scissor_cli.video_limits as video_limits

    monkeypatch.setattr(video_limits, "available_cores", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    long = _info()  # 5 minutes of 1080p at 30 fps
    assert video.split_workers(long, _plan(long)) == 16  # default: the process's cores
    assert video.split_workers(long, _plan(long), workers=3) == 3
    assert video.split_workers(long, _plan(long), workers=0) == 1
    assert video.split_workers(long, _plan(long, 8)) == 4  # two frames a chunk at least
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # four ranks share the 16 cores
    assert video.split_workers(long, _plan(long)) == 4
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    # the span: 900 frames (30 s at 30 fps) pay for three chunks; a 10 s clip stays serial
    assert video.split_workers(_info(900), _plan(_info(900))) == 3
    assert video.split_workers(_info(300), _plan(_info(300))) == 1
    # small decodes stay serial: 32 frames of 360p are just enough, 7 of 720p not
    assert video.split_workers(_info(width=640, height=360), _plan(_info(), 32)) > 1
    assert video.split_workers(_info(width=640, height=360), _plan(_info(), 31)) == 1
    assert video.split_workers(_info(width=1280, height=720), _plan(_info(), 7)) == 1


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_check_decode_threads_refuses_bad_values(bad):
    from scissor_cli.errors import OptionError

    with pytest.raises(OptionError, match="--decode-workers"):
        video.check_decode_threads(bad)
    assert video.check_decode_threads(None) is None and video.check_decode_threads(3) == 3


def test_decode_workers_reach_sample_frames(long_clip):
    info = video.probe(long_clip)
    assert video.sample_frames(long_clip, n_frames=32, info=info, workers=1).workers == 1
    assert video.sample_frames(long_clip, n_frames=32, info=info, workers=2).workers == 2
    assert video.sample_frames(long_clip, n_frames=8, info=info, workers=2).workers == 1  # 8 frames of 360p: too small


# ------------------------------------------------------------------------------------------- threads, failures


class _Reader:
    """A fake decord VideoReader whose get_batch waits until ``barrier``'s parties all decode at once."""

    barrier: threading.Barrier
    threads: list[int]

    def __init__(self, uri, ctx=None, num_threads=0):
        self.num_threads = num_threads
        _Reader.threads.append(num_threads)

    def __len__(self):
        return N_INDEX_FRAMES

    def get_batch(self, indices):
        _Reader.barrier.wait(timeout=10)  # a split that ran its chunks one after another would time out here
        return types.SimpleNamespace(asnumpy=lambda: np.stack([index_frame(i) for i in indices]))


def _fake(monkeypatch, parties: int) -> None:
    module = types.ModuleType("decord")
    module.DECORDError = type("DECORDError", (Exception,), {})
    module.VideoReader = _Reader
    module.cpu = lambda i=0: None
    _Reader.barrier = threading.Barrier(parties)
    _Reader.threads = []
    monkeypatch.setitem(sys.modules, "decord", module)
    monkeypatch.setattr(video, "_torchcodec_loaded", [None])  # decord alone, whether torchcodec is installed or not


def test_chunks_decode_at_the_same_time_with_one_decoder_thread_each(media, monkeypatch):
    _fake(monkeypatch, parties=4)
    info = video.probe(media.index_mp4)
    frames, _ = video._decode_split(info, tuple(range(0, 40, 5)), 4, use_torchcodec=False)
    assert [read_index(f) for f in frames] == list(range(0, 40, 5))
    assert _Reader.threads == [1, 1, 1, 1]


def test_a_failing_chunk_sends_the_whole_video_to_ffmpeg(media, monkeypatch):
    class Failing(_Reader):
        def get_batch(self, indices):
            if indices[0] >= 30:
                raise sys.modules["decord"].DECORDError("corrupt from here")
            return super().get_batch(indices)

    _fake(monkeypatch, parties=1)
    sys.modules["decord"].VideoReader = Failing
    info = video.probe(media.index_mp4)
    assert video._decode_split(info, tuple(range(0, 40, 5)), 2, use_torchcodec=False) == (None, "ffmpeg")
    monkeypatch.setattr(video, "split_workers", lambda info, indices, workers=None: 2)
    clip = video.sample_frames(media.index_mp4, n_frames=8, info=info)
    assert clip.backend == "ffmpeg" and clip.workers == 1
    assert [read_index(f) for f in clip.frames] == list(clip.indices)


def test_a_bug_in_a_chunk_is_raised_not_hidden(media, monkeypatch):
    class Buggy(_Reader):
        def get_batch(self, indices):
            raise ZeroDivisionError("a bug, not a file decord cannot read")

    _fake(monkeypatch, parties=1)
    sys.modules["decord"].VideoReader = Buggy
    with pytest.raises(ZeroDivisionError):
        video._decode_split(video.probe(media.index_mp4), tuple(range(8)), 2, use_torchcodec=False)


# ------------------------------------------------------------------------------------------------- torchcodec


class _FakeDecoder:
    """A stand-in torchcodec VideoDecoder over the index clip; ``fail_from``: frames it cannot decode."""

    fail_from = 10**9
    opened: list[dict] = []

    def __init__(self, path, **kw):
        _FakeDecoder.opened.append(kw)

    def __len__(self):
        return N_INDEX_FRAMES

    def get_frame_at(self, i):
        if i >= _FakeDecoder.fail_from:
            raise RuntimeError("Requested next frame while there are no more frames left to decode.")
        return types.SimpleNamespace(data=types.SimpleNamespace(numpy=lambda: index_frame(i)))


@pytest.fixture
def fake_torchcodec(monkeypatch):
    monkeypatch.setattr(video, "_torchcodec_loaded", [_FakeDecoder])
    _FakeDecoder.fail_from, _FakeDecoder.opened = 10**9, []
    return _FakeDecoder


def test_split_uses_torchcodec_where_it_loads_one_thread_per_chunk(media, fake_torchcodec):
    info = video.probe(media.index_mp4)
    frames, backend = video._decode_split(info, tuple(range(0, 40, 5)), 4)
    assert backend == "torchcodec" and [read_index(f) for f in frames] == list(range(0, 40, 5))
    assert [kw["num_ffmpeg_threads"] for kw in fake_torchcodec.opened] == [1, 1, 1, 1]
    assert {kw["seek_mode"] for kw in fake_torchcodec.opened} == {"exact"}


def test_a_chunk_torchcodec_cannot_decode_goes_to_decord(media, fake_torchcodec):
    fake_torchcodec.fail_from = 30  # the last chunk (30, 35) fails in torchcodec; decord decodes it
    info = video.probe(media.index_mp4)
    frames, backend = video._decode_split(info, tuple(range(0, 40, 5)), 4)
    assert backend == "decord"  # not every chunk came from torchcodec
    assert [read_index(f) for f in frames] == list(range(0, 40, 5))


def test_without_torchcodec_the_split_uses_decord(media, monkeypatch):
    monkeypatch.setattr(video, "_torchcodec_loaded", [])
    monkeypatch.setitem(sys.modules, "torchcodec", None)  # not installed
    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)
    assert video._torchcodec() is None
    frames, backend = video._decode_split(video.probe(media.index_mp4), tuple(range(0, 40, 5)), 2)
    assert backend == "decord" and [read_index(f) for f in frames] == list(range(0, 40, 5))


def test_real_torchcodec_frames_equal_decord_serial(media):
    if video._torchcodec() is None:
        pytest.skip("torchcodec is not installed (optional: pip install torchcodec==0.11.1 beside a CPU torch)")
    for path, n in ((SAMPLE, 32), (media.index_mp4, 40), (media.rot90, 40), (media.index_yuv444, 40)):
        info = video.probe(path)
        indices = _plan(info, n)
        frames, backend = video._decode_split(info, indices, 3, use_torchcodec=True)
        assert backend == "torchcodec", path
        assert np.array_equal(frames, video._decode_decord(info, indices)), path


# ----------------------------------------------------------------------------------------- decode-ahead, CLI


def test_decode_ahead_workers_decode_serially(long_clip):
    from scissor_cli.prefetch import Prefetcher

    sampling = SamplingOptions(n_frames=32)
    with Prefetcher([str(long_clip), str(long_clip)], sampling, n_workers=1) as ahead:
        clip = ahead.take(str(long_clip))[0]
    inline = video.sample_frames(long_clip, n_frames=32, workers=2)
    assert inline.workers == 2 and clip.workers == 1, "a decode-ahead worker split its video: cores oversubscribed"
    assert np.array_equal(clip.frames, inline.frames)


@pytest.mark.parametrize("command", ["ask", "inspect", "chat"])
def test_decode_workers_flag_reaches_the_decode(command, monkeypatch, tmp_path, tiny_hf_dir):
    """--decode-workers travels down to sample_frames as an argument (no process-wide setting)."""
    from media import pattern_clip
    from typer.testing import CliRunner

    from scissor_cli.cli import app
    from scissor_cli.errors import VideoError

    seen = []

    def sample_frames(*args, workers=None, **kwargs):
        seen.append(workers)
        raise VideoError("decode stopped here by the test")

    monkeypatch.setattr(video, "sample_frames", sample_frames)
    monkeypatch.setenv("SCISSOR_CACHE_DIR", str(tmp_path / "cache"))
    clip = pattern_clip(tmp_path / "clip.mp4")
    args = [command, clip, *(["a question?"] if command == "ask" else []), "--model", str(tiny_hf_dir)]
    result = CliRunner().invoke(app, [*args, "--decode-workers", "3", "--frames", "2"])
    assert result.exit_code == 4 and "stopped here by the test" in result.output, result.output
    assert seen == [3]
    result = CliRunner().invoke(app, [*args, "--decode-workers", "-1"])
    assert result.exit_code == 2 and seen == [3], "a bad value stops before the decode"

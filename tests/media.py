"""Tiny generated media for tests: valid-but-odd files whose frames encode their own index, and bad files.

``make_media(directory)`` writes everything once (about a second of ffmpeg) and returns a ``Media`` of paths.
Other test modules may import it; it needs only numpy and the ffmpeg binary.

Frame ``i`` of an index clip (``[64, 96, 3]``, upright):
  rows 32..63: six 16-px stripes, stripe ``k`` white when bit ``k`` of ``i`` is set, else black;
  rows 0..31: black, with a red 16x16 marker in the top-left corner (tells which way is up).
Black, white and pure red survive every codec here (lossy h264/vp9, GIF's 8-bit palette) well enough to read back.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

HEIGHT, WIDTH = 64, 96
N_INDEX_FRAMES = 40  # 4 s at 10 fps
FPS = 10
N_BITS = 6


def index_frame(i: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """uint8 [H, W, 3] frame encoding ``i`` (see module docstring); the layout scales with the size."""
    frame = np.zeros((height, width, 3), np.uint8)
    stripe = width // N_BITS
    for k in range(N_BITS):
        if (i >> k) & 1:
            frame[height // 2 :, k * stripe : (k + 1) * stripe] = 255
    marker = max(height // 4, 2)
    frame[:marker, :marker] = (255, 0, 0)
    return frame


def read_index(frame: np.ndarray) -> int:
    """Inverse of ``index_frame`` on a decoded (lossy) upright frame."""
    height, width = frame.shape[:2]
    stripe = width // N_BITS
    row = frame[3 * height // 4]
    bits = [row[k * stripe + stripe // 2].mean() > 127 for k in range(N_BITS)]
    return sum(1 << k for k, bit in enumerate(bits) if bit)


def marker_corner(frame: np.ndarray) -> str:
    """Which corner holds the red marker: "top-left" when upright."""
    height, width = frame.shape[:2]
    m = max(min(height, width) // 8, 1)
    corners = {
        "top-left": frame[m, m],
        "top-right": frame[m, width - 1 - m],
        "bottom-left": frame[height - 1 - m, m],
        "bottom-right": frame[height - 1 - m, width - 1 - m],
    }
    reds = {name: int(px[0]) - int(px[1]) for name, px in corners.items()}
    return max(reds, key=reds.get)


@dataclass(frozen=True)
class Media:
    # valid: index clips (frame i encodes i)
    index_mp4: Path  # h264, 40 frames, 10 fps, 96x64
    index_webm: Path  # vp9
    index_mkv: Path  # h264 in matroska (no frame count in the header)
    index_gif: Path  # animated GIF (decord cannot open it)
    index_yuv444: Path  # h264 High 4:4:4 (odd pixel format)
    index_faststart: Path  # the mp4 with its index (moov) first, as files served for streaming are
    rot90: Path  # stored sideways (clockwise), displaymatrix rotation 90 -> upright 96x64
    rot90_small: Path  # same at 48x32 upright (decord 0.6 fails on its row size -> ffmpeg)
    rot180: Path  # stored upside down, rotation 180
    vfr: Path  # index frames 0-9 then 25-39 with a gap in time (variable frame rate)
    vfr_indices: tuple[int, ...]  # the index each of its frames encodes
    one_frame: Path  # a 1-frame mp4
    tiny: Path  # 2x2 pixels, 10 frames
    png: Path  # still images of index frame 5
    jpg: Path
    webp: Path
    # bad
    empty: Path
    random_bytes: Path  # random data named .mp4
    text: Path  # a text file named .mp4
    audio_only: Path  # AAC in .m4a
    truncated: Path  # first half of an mp4 whose index (moov) is at the end
    truncated_faststart: Path  # moov at the front, but the frame data cut off
    truncated_partial: Path  # moov at the front, the last tenth of the frame data cut off (some frames decode)
    directory: Path


def _ffmpeg(*args: str, stdin: bytes | None = None) -> None:
    cmd = [shutil.which("ffmpeg") or "ffmpeg", "-nostdin", "-hide_banner", "-v", "error", "-y", *args]
    subprocess.run(cmd, input=stdin, check=True, timeout=60, stdin=None if stdin is not None else subprocess.DEVNULL)


def _encode(frames: np.ndarray, out: Path, *codec: str, fps: int = FPS) -> Path:
    """Encode uint8 [F, H, W, 3] frames piped as rawvideo."""
    n, height, width, _ = frames.shape
    src = ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "-"]
    _ffmpeg(*src, *codec, str(out), stdin=np.ascontiguousarray(frames).tobytes())
    return out


def _with_rotation(src: Path, out: Path, degrees: int) -> Path:
    # ffmpeg 5.1 has no -display_rotation; the legacy tag, set on a stream copy, is written as a display matrix
    _ffmpeg("-i", str(src), "-c", "copy", "-metadata:s:v", f"rotate={degrees}", str(out))
    return out


def make_media(directory: str | os.PathLike) -> Media:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    h264 = ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "12", "-g", "8"]
    frames = np.stack([index_frame(i) for i in range(N_INDEX_FRAMES)])  # [40, 64, 96, 3]

    index_mp4 = _encode(frames, d / "index.mp4", *h264)
    index_webm = _encode(frames, d / "index.webm", "-c:v", "libvpx-vp9", "-crf", "20", "-b:v", "0", "-g", "8")
    index_mkv = _encode(frames, d / "index.mkv", *h264)
    index_gif = _encode(frames, d / "index.gif")
    index_yuv444 = _encode(frames, d / "index_yuv444.mp4", "-c:v", "libx264", "-pix_fmt", "yuv444p", "-crf", "12")

    # displaymatrix rotation 90 means "rotate 90 counter-clockwise to display", so store the frames clockwise
    sideways = np.ascontiguousarray(np.rot90(frames, k=-1, axes=(1, 2)))
    rot90 = _with_rotation(_encode(sideways, d / "sideways.mp4", *h264), d / "rot90.mp4", 90)
    small = np.stack([index_frame(i, 32, 48) for i in range(N_INDEX_FRAMES)])
    small_sideways = np.ascontiguousarray(np.rot90(small, k=-1, axes=(1, 2)))
    rot90_small = _with_rotation(_encode(small_sideways, d / "sideways_small.mp4", *h264), d / "rot90_small.mp4", 90)
    upside_down = np.ascontiguousarray(frames[:, ::-1, ::-1])
    rot180 = _with_rotation(_encode(upside_down, d / "upside_down.mp4", *h264), d / "rot180.mp4", 180)

    vfr_indices = tuple(i for i in range(N_INDEX_FRAMES) if not 10 <= i < 25)
    vfr = d / "vfr.mp4"
    _ffmpeg("-i", str(index_mp4), "-vf", "select='not(between(n,10,24))'", "-vsync", "vfr", *h264, str(vfr))

    one_frame = _encode(frames[:1], d / "one_frame.mp4", *h264)
    tiny = _encode(np.stack([np.full((2, 2, 3), 20 * i, np.uint8) for i in range(10)]), d / "tiny.mp4", *h264)
    png = _encode(frames[5:6], d / "still.png")
    jpg = _encode(frames[5:6], d / "still.jpg", "-q:v", "2")
    webp = _encode(frames[5:6], d / "still.webp", "-lossless", "1")

    empty = d / "empty.mp4"
    empty.write_bytes(b"")
    random_bytes = d / "random.mp4"
    random_bytes.write_bytes(np.random.default_rng(0).integers(0, 256, 8192, dtype=np.uint8).tobytes())
    text = d / "notes.mp4"
    text.write_text("This is a text file that somebody renamed to .mp4.\nIt has no video in it.\n")
    audio_only = d / "audio.m4a"
    _ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "aac", str(audio_only))
    data = index_mp4.read_bytes()
    truncated = d / "truncated.mp4"
    truncated.write_bytes(data[: len(data) // 2])
    index_faststart = d / "faststart.mp4"
    _ffmpeg("-i", str(index_mp4), "-c", "copy", "-movflags", "+faststart", str(index_faststart))
    fs = index_faststart.read_bytes()
    moov_end = fs.index(b"mdat") + 4  # keep the header and index, drop every frame's data
    truncated_faststart = d / "truncated_faststart.mp4"
    truncated_faststart.write_bytes(fs[:moov_end] + b"\x00" * 64)
    truncated_partial = d / "truncated_partial.mp4"
    truncated_partial.write_bytes(fs[: moov_end + (len(fs) - moov_end) * 9 // 10])
    directory = d / "a_folder.mp4"
    directory.mkdir(exist_ok=True)

    made = locals()  # every Media field is a local of the same name
    media = Media(**{f.name: made[f.name] for f in fields(Media)})
    for f in fields(Media):
        value = getattr(media, f.name)
        if isinstance(value, Path) and not value.exists():
            raise RuntimeError(f"media generation did not produce {value}")
    return media


def huge_screen_gif(path: Path, side: int = 16000, n_frames: int = 4, height: int | None = None) -> Path:
    """A GIF of a few hundred bytes whose logical screen is ``side`` x ``side`` (or ``height`` high) and whose frames
    are one pixel each: what a decoder allocates follows the screen (``side**2`` pixels a frame), not the file's
    size. Written by hand."""
    import struct

    screen = struct.pack("<HH", side, side if height is None else height)
    out = bytearray(b"GIF89a" + screen + bytes([0xF0, 0, 0]))  # 2-colour global table
    out += bytes([0, 0, 0, 255, 255, 255])
    out += b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"  # loop forever: an animation
    for i in range(n_frames):
        out += b"\x21\xf9\x04\x00" + struct.pack("<H", 10) + b"\x00\x00"  # 0.1 s a frame
        out += b"\x2c" + struct.pack("<HHHH", i % side, 0, 1, 1) + b"\x00"  # a 1x1 image at (i, 0)
        out += b"\x02\x02\x44\x01\x00"  # LZW, min code size 2: clear, pixel 1, end
    out += b"\x3b"
    path.write_bytes(bytes(out))
    return path


def huge_png(path: Path, side: int = 24000) -> Path:
    """A 1-bit black PNG of ``side`` x ``side`` pixels: a few hundred KiB on disk, ``side**2 * 3`` bytes as RGB."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte, then the packed bits
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row * 1000) for _ in range(side // 1000))
    body += packer.compress(row * (side % 1000)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def pattern_clip(path: Path, seconds: float = 1.0) -> str:
    """A small moving test pattern (96x64, 10 fps, H.264) for the tiny-model tests; returns its path."""
    args = ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=96x64:rate=10", "-t", f"{seconds:g}"]
    subprocess.run([*args, "-pix_fmt", "yuv420p", str(path)], check=True, timeout=60)
    return str(path)

"""The token map behind ``scissor inspect --viz``: sampled frames in a grid, each patch tinted by the kept token it
merged into (same colour = same token, across frames too), with borders where neighbouring patches differ.

numpy + zlib only: the PNG is written by hand (8-bit RGB, no filtering), so no imaging library is needed.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from scissor_cli.errors import ScissorError

if TYPE_CHECKING:
    from scissor_cli.pipeline import Inspection

CELL = 16  # pixels per pooled token cell
GAP = 6  # pixels between frames
ALPHA = 0.45  # weight of the token colour over the frame


def write_png(path: str | Path, image: np.ndarray) -> None:
    """image: uint8 [H, W, 3]."""
    h, w, _ = image.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), image.reshape(h, w * 3)], axis=1)  # filter byte 0 per row

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + chunk(b"IEND", b"")
    try:
        Path(path).write_bytes(png)
    except OSError as e:
        raise ScissorError(f"cannot write {path}: {e.strerror or e}", hint="pick a writable path for --viz") from e


def palette(n: int) -> np.ndarray:
    """n well-spread colours, uint8 [n, 3] (golden-ratio hues, alternating lightness)."""
    hue = (np.arange(n) * 0.618033988749895) % 1.0
    light = np.where(np.arange(n) % 2 == 0, 0.55, 0.75)
    # HSV (s=0.85) -> RGB, vectorised
    s, v = 0.85, light
    i = np.floor(hue * 6).astype(int) % 6
    f = hue * 6 - np.floor(hue * 6)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = np.stack(
        [
            np.stack([v, t, p], 1),
            np.stack([q, v, p], 1),
            np.stack([p, v, t], 1),
            np.stack([p, q, v], 1),
            np.stack([t, p, v], 1),
            np.stack([v, p, q], 1),
        ]
    )  # [6, n, 3]
    return (table[i, np.arange(n)] * 255).astype(np.uint8)


def render_token_map(frames: np.ndarray, assignment: np.ndarray, n_kept: int, columns: int = 8) -> np.ndarray:
    """frames uint8 [F, H, W, 3]; assignment [F*T] kept-token ids -> uint8 grid image."""
    n_frames = frames.shape[0]
    n_per_frame = assignment.shape[0] // n_frames
    side = int(round(n_per_frame**0.5))
    if side * side != n_per_frame:
        raise ScissorError(
            f"cannot draw {n_per_frame} tokens per frame as a square grid",
            hint="--viz needs a square token grid (LLaVA-OneVision: 14×14)",
        )
    size = side * CELL
    ids = assignment.reshape(n_frames, side, side)
    colours = palette(max(n_kept, 1))
    cols = min(columns, n_frames)
    rows = -(-n_frames // cols)
    canvas = np.full((rows * size + (rows - 1) * GAP, cols * size + (cols - 1) * GAP, 3), 255, np.uint8)
    for k in range(n_frames):
        frame = frames[k]
        # nearest-neighbour resize to size x size (the model sees a squashed square too)
        ys = (np.arange(size) * frame.shape[0] // size).clip(0, frame.shape[0] - 1)
        xs = (np.arange(size) * frame.shape[1] // size).clip(0, frame.shape[1] - 1)
        img = frame[ys][:, xs].astype(np.float32)
        cell_ids = np.repeat(np.repeat(ids[k], CELL, 0), CELL, 1)  # [size, size]
        img = (1 - ALPHA) * img + ALPHA * colours[cell_ids].astype(np.float32)
        edge = np.zeros((size, size), bool)
        edge[1:, :] |= cell_ids[1:, :] != cell_ids[:-1, :]
        edge[:, 1:] |= cell_ids[:, 1:] != cell_ids[:, :-1]
        img[edge] = 20
        r, c = divmod(k, cols)
        y, x = r * (size + GAP), c * (size + GAP)
        canvas[y : y + size, x : x + size] = img.clip(0, 255).astype(np.uint8)
    return canvas


def token_map(path: str | Path, video: str, insp: Inspection) -> None:
    """Decode the inspected frames again (cheap next to the vision tower) and write the token map PNG."""
    from scissor_cli import video as video_io

    c = insp.compressed
    if c is None:
        raise ScissorError("no compression result to draw", hint="run inspect without --video-only")
    s = insp.profile["sampling"]
    clip = video_io.sample_frames(
        video, n_frames=s["n_frames"], fps=s["fps"], start=s["start"], end=s["end"], info=insp.info
    )
    if c.assignment is None:  # compression off: every token is its own
        assignment = np.arange(c.n_original)
    else:
        assignment = c.assignment.detach().cpu().numpy()
    write_png(path, render_token_map(clip.frames, assignment, c.n_final))

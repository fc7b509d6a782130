"""The token map behind ``scissor inspect --viz``: the sampled frames in a grid at their own aspect ratio, each patch
tinted by the kept token it merged into (same colour = same token, across frames too), dark borders where
neighbouring patches belong to different tokens, each frame captioned with its time, and a title with the counts
(original -> spatial -> final).

Colours: a token's colour differs from every token it touches in any frame (greedy graph colouring over a palette
of high-contrast colours), so two neighbouring components never look alike. numpy + zlib only: the PNG is written
by hand (8-bit RGB, no filtering) and text is drawn with a built-in 5x7 bitmap font, so no imaging library is needed.
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

TILE_H = 160  # pixels: each frame's height in the map (its width follows the frame's aspect ratio)
GAP = 8  # pixels between frames and around the grid
ALPHA = 0.45  # weight of the token colour over the frame
SCALE = 2  # font pixels per bitmap pixel
CAPTION_H = 7 * SCALE + 8  # a line of text with its padding
INK, PAPER, EDGE = (20, 20, 20), (255, 255, 255), 20

# Kelly's colours of maximum contrast (minus black and white), then more from evenly spread hues when needed.
KELLY = (
    (255, 179, 0), (128, 62, 117), (255, 104, 0), (166, 189, 215), (193, 0, 32), (206, 162, 98), (129, 112, 102),
    (0, 125, 52), (246, 118, 142), (0, 83, 138), (255, 122, 92), (83, 55, 122), (255, 142, 0), (179, 40, 81),
    (244, 200, 0), (127, 24, 13), (147, 170, 0), (89, 51, 21), (241, 58, 19), (35, 44, 22),
)  # fmt: skip

# The classic 5x7 LCD font: five column bytes per character, least significant bit at the top.
_FONT_HEX = {
    " ": "0000000000", "%": "2313086462", "'": "0005030000", "(": "001C224100", ")": "0041221C00",
    "+": "08083E0808", ",": "0050300000", "-": "0808080808", ".": "0060600000", "/": "2010080402",
    "0": "3E5149453E", "1": "00427F4000", "2": "4261514946", "3": "2141454B31", "4": "1814127F10",
    "5": "2745454539", "6": "3C4A494930", "7": "0171090503", "8": "3649494936", "9": "064949291E",
    ":": "0036360000", ";": "0056360000", "=": "1414141414", ">": "4122140800", "?": "0201510906",
    "a": "2054545478", "b": "7F48444438", "c": "3844444420", "d": "384444487F", "e": "3854545418",
    "f": "087E090102", "g": "0C5252523E", "h": "7F08040478", "i": "00447D4000", "j": "2040443D00",
    "k": "7F10284400", "l": "00417F4000", "m": "7C04180478", "n": "7C08040478", "o": "3844444438",
    "p": "7C14141408", "q": "081414187C", "r": "7C08040408", "s": "4854545420", "t": "043F444020",
    "u": "3C4040207C", "v": "1C2040201C", "w": "3C4030403C", "x": "4428102844", "y": "0C5050503C",
    "z": "4464544C44",
}  # fmt: skip
FONT = {
    ch: (np.array(bytearray.fromhex(hexes), np.uint8)[None, :] >> np.arange(7)[:, None]) & 1 == 1  # [7, 5]
    for ch, hexes in _FONT_HEX.items()
}


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


def text_width(text: str) -> int:
    return len(text) * 6 * SCALE - SCALE


def draw_text(canvas: np.ndarray, text: str, y: int, x: int, colour: tuple[int, int, int] = INK) -> None:
    """Draw ``text`` (lower-cased; unknown characters as blanks) with its top-left corner at (y, x), clipped."""
    for k, ch in enumerate(text.lower()):
        glyph = FONT.get(ch)
        if glyph is None or not glyph.any():
            continue
        mask = np.kron(glyph, np.ones((SCALE, SCALE), bool))  # [7*SCALE, 5*SCALE]
        y0, x0 = y, x + k * 6 * SCALE
        h = min(mask.shape[0], canvas.shape[0] - y0)
        w = min(mask.shape[1], canvas.shape[1] - x0)
        if h > 0 and w > 0 and y0 >= 0 and x0 >= 0:
            canvas[y0 : y0 + h, x0 : x0 + w][mask[:h, :w]] = colour


def palette(n: int) -> np.ndarray:
    """n distinct colours, uint8 [n, 3]: Kelly's 20, then golden-ratio hues at alternating lightness."""
    colours = [np.array(c, np.uint8) for c in KELLY[:n]]
    for i in range(n - len(colours)):
        hue, value = (i * 0.618033988749895) % 1.0, (0.6 if i % 2 else 0.85)
        k = np.array([5.0, 3.0, 1.0]) + hue * 6  # HSV -> RGB with s = 0.8
        rgb = value - value * 0.8 * np.clip(np.minimum(k % 6, 4 - k % 6), 0, 1)
        colours.append((rgb * 255).astype(np.uint8))
    return np.stack(colours) if colours else np.zeros((0, 3), np.uint8)


def colour_tokens(ids: np.ndarray, n_kept: int) -> np.ndarray:
    """ids [F, S, S] kept-token ids -> colour index per token [n_kept], different for tokens that touch.

    Greedy colouring, most-connected tokens first; among the colours its neighbours leave free a token takes the
    least used one, so the picture uses the whole palette instead of a few colours."""
    touch = np.zeros((n_kept, n_kept), bool)
    for a, b in ((ids[:, 1:, :], ids[:, :-1, :]), (ids[:, :, 1:], ids[:, :, :-1])):
        diff = a != b
        touch[a[diff], b[diff]] = True
    touch |= touch.T
    colour = np.full(n_kept, -1)
    used: list[int] = []
    for tok in np.argsort(-touch.sum(1), kind="stable"):
        taken = set(colour[touch[tok]].tolist())
        free = [c for c in range(len(used)) if c not in taken]
        if free:
            c = min(free, key=lambda c: used[c])
        else:
            c = len(used)
            used.append(0)
        colour[tok] = c
        used[c] += 1
    return colour


def render_token_map(
    frames: np.ndarray,
    assignment: np.ndarray,
    n_kept: int,
    timestamps: list[float] | None = None,
    title: str = "",
    columns: int = 8,
    grid: tuple[int, int] | None = None,
) -> np.ndarray:
    """frames uint8 [F, H, W, 3]; assignment [F*T] kept-token ids -> uint8 image [H', W', 3]. ``grid``: the
    tokens' (rows, columns) per frame (None: a square); a frame's row of ``assignment`` may cover several frames
    (Qwen: a temporal patch of two), which then share its cells."""
    n_frames, frame_h, frame_w = frames.shape[:3]
    if grid is not None:
        rows_, cols_ = grid
        per_row = -(-n_frames // (assignment.shape[0] // (rows_ * cols_)))  # frames per row of the assignment
        ids = assignment.reshape(-1, rows_, cols_)[np.arange(n_frames) // per_row]
    else:
        n_per_frame = assignment.shape[0] // n_frames
        side = int(round(n_per_frame**0.5))
        if side * side != n_per_frame:
            raise ScissorError(
                f"cannot draw {n_per_frame} tokens per frame as a square grid",
                hint="--viz needs a square token grid (LLaVA-OneVision: 14×14)",
            )
        ids = assignment.reshape(n_frames, side, side)
    side_y, side_x = ids.shape[1:]
    colours = palette(int(colour_tokens(ids, n_kept).max()) + 1)[colour_tokens(ids, n_kept)]  # [n_kept, 3]
    tile_h = TILE_H
    tile_w = max(side_x, int(round(TILE_H * frame_w / frame_h)))  # the frame's aspect ratio, not the model's grid
    cols = min(columns, n_frames)
    rows = -(-n_frames // cols)
    title_lines = [line for line in title.split("\n") if line]
    top = GAP + len(title_lines) * CAPTION_H
    width = max(GAP + cols * (tile_w + GAP), max((text_width(t) + 2 * GAP for t in title_lines), default=0))
    height = top + rows * (tile_h + CAPTION_H + GAP)
    canvas = np.full((height, width, 3), 255, np.uint8)
    for i, line in enumerate(title_lines):
        draw_text(canvas, line, GAP + i * CAPTION_H, GAP)
    # which token cell each output pixel falls in: the model's grid stretched over the frame's rectangle
    cell_y = np.arange(tile_h) * side_y // tile_h  # [tile_h]
    cell_x = np.arange(tile_w) * side_x // tile_w  # [tile_w]
    src_y = np.arange(tile_h) * frame_h // tile_h
    src_x = np.arange(tile_w) * frame_w // tile_w
    for k in range(n_frames):
        img = frames[k][src_y][:, src_x].astype(np.float32)  # nearest-neighbour resize, [tile_h, tile_w, 3]
        cell_ids = ids[k][cell_y][:, cell_x]  # [tile_h, tile_w]
        img = (1 - ALPHA) * img + ALPHA * colours[cell_ids].astype(np.float32)
        edge = np.zeros((tile_h, tile_w), bool)
        edge[1:, :] |= cell_ids[1:, :] != cell_ids[:-1, :]
        edge[:, 1:] |= cell_ids[:, 1:] != cell_ids[:, :-1]
        img[edge] = EDGE
        r, c = divmod(k, cols)
        y, x = top + r * (tile_h + CAPTION_H + GAP), GAP + c * (tile_w + GAP)
        canvas[y : y + tile_h, x : x + tile_w] = img.clip(0, 255).astype(np.uint8)
        if timestamps is not None:
            draw_text(canvas, f"{timestamps[k]:.2f} s", y + tile_h + 4, x)
    return canvas


def token_map(path: str | Path, video: str, insp: Inspection) -> None:
    """Decode the inspected frames again (cheap next to the vision tower) and write the token map PNG."""
    from scissor_cli import video as video_io

    c = insp.compressed
    if c is None:
        raise ScissorError("no compression result to draw", hint="run inspect without --video-only")
    s = insp.profile["sampling"]
    clip = video_io.sample_frames(
        video,
        n_frames=s["n_frames"],
        fps=s["fps"],
        start=s["start"],
        end=s["end"],
        info=insp.info,
        memory_budget=s.get("memory_budget"),
    )
    if c.assignment is None:  # compression off: every token is its own
        assignment = np.arange(c.n_original)
    else:
        assignment = c.assignment.detach().cpu().numpy()
    title = (
        f"{c.n_original} tokens -> spatial {c.n_spatial} -> final {c.n_final} ({c.retention * 100:.1f}% kept)"
        + (f", tau {c.tau:.4g}" if c.tau is not None else ", no compression")
        + f"\n{clip.frames.shape[0]} frames; same colour = same kept token"
    )
    layout = getattr(insp.encoded, "layout", None)
    grid = None if layout is None else tuple(layout.grid[1:])  # Qwen: (rows, columns) of each temporal patch
    write_png(path, render_token_map(clip.frames, assignment, c.n_final, list(clip.timestamps), title, grid=grid))

"""Qwen2.5-VL's and Qwen3-VL's video preprocessing without torchvision (transformers' own video processors import it).

What ``Qwen2VLVideoProcessor`` (Qwen2.5-VL) and ``Qwen3VLVideoProcessor`` do to frames they are handed, with their
defaults (no frame sampling, no per-frame pixel cap): ``smart_resize`` to multiples of patch x merge (28 / 32 px)
within the checkpoint's pixel bounds (Qwen2.5-VL bounds each frame, Qwen3-VL the whole clip), a uint8 bicubic
antialiased resize, (x - 255 mean) / (255 std), the last frame repeated to an even count (two frames make one
temporal patch), and the patchify permutation that puts each 2x2 merge group together. A test compares the result
with transformers' processors bit for bit where torchvision can be imported.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2.5-VL: (height, width) as multiples of ``factor``, aspect kept, h*w within [min_pixels, max_pixels]."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def smart_resize_clip(
    n_frames: int, height: int, width: int, temporal: int, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """Qwen3-VL: as ``smart_resize``, but the bounds hold for frames x height x width (the whole clip). A clip of
    fewer than ``temporal`` frames is sized as its padded self (transformers refuses it)."""
    n_frames = max(n_frames, temporal)
    if height < factor or width < factor:
        scale = max(factor / height, factor / width)
        height, width = int(height * scale), int(width * scale)
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    t_bar = round(n_frames / temporal) * temporal
    if t_bar * h_bar * w_bar > max_pixels:
        beta = math.sqrt((n_frames * height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif t_bar * h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (n_frames * height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def patchify(pixels: torch.Tensor, patch: int, merge: int, temporal: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """float [F, C, H, W] -> ([t*h*w, C*temporal*patch*patch] rows in the vision tower's order, (t, h, w) in
    patches). The last frame is repeated up to a multiple of ``temporal``."""
    import torch

    n, c, height, width = pixels.shape
    if pad := -n % temporal:
        pixels = torch.cat([pixels, pixels[-1:].expand(pad, -1, -1, -1)], 0)
        n += pad
    t, h, w = n // temporal, height // patch, width // patch
    x = pixels.view(1, t, temporal, c, h // merge, merge, patch, w // merge, merge, patch)
    x = x.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
    return x.reshape(t * h * w, c * temporal * patch * patch), (t, h, w)


def preprocess(
    frames: np.ndarray, size: tuple[int, int], mean, std, patch: int, merge: int, temporal: int
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """uint8 [F, H, W, 3] -> (pixel_values_videos [t*h*w, C*temporal*patch^2] float32, video_grid_thw (t, h, w)),
    frames resized to ``size`` (height, width), a multiple of patch*merge."""
    from scissor_cli.families.pixels import preprocess_frames

    return patchify(preprocess_frames(frames, size, mean, std), patch, merge, temporal)

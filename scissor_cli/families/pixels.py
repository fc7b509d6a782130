"""Frames to pixels without torchvision: a uint8 bicubic antialiased resize and the (x - 255 mean) / (255 std)
normalisation, as transformers' video processors (torchvision backend) compute them, bit for bit."""

from __future__ import annotations

from typing import TYPE_CHECKING

from scissor_cli.checkpoint import SIGLIP_MEAN_STD

if TYPE_CHECKING:
    import numpy as np
    import torch


def preprocess_frames(frames: np.ndarray, size, mean=SIGLIP_MEAN_STD, std=SIGLIP_MEAN_STD) -> torch.Tensor:
    """uint8 [F, H, W, 3] RGB -> float32 [F, 3, S, S] (``size`` an int or (height, width)).

    Bit-identical to transformers' LlavaOnevisionVideoProcessor (torchvision backend): a uint8 bicubic antialiased
    resize straight to the target size (no aspect keep, no crop), then (x - 255*mean) / (255*std)."""
    return normalize_frames(resize_frames(frames, size), mean, std)


def resize_frames(frames: np.ndarray, size) -> torch.Tensor:
    """The resize half of ``preprocess_frames``: uint8 [F, H, W, 3] -> uint8 [F, 3, S, S]. Batch's decode-ahead
    workers run it, so the main process receives 384 px frames (14 MiB for 32, not 190 MiB of 1080p)."""
    import numpy as np
    import torch

    hw = (size, size) if isinstance(size, int) else tuple(size)
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).contiguous()  # uint8 [F, 3, H, W]
    return torch.nn.functional.interpolate(x, size=hw, mode="bicubic", align_corners=False, antialias=True)


def normalize_frames(x: torch.Tensor, mean=SIGLIP_MEAN_STD, std=SIGLIP_MEAN_STD) -> torch.Tensor:
    """The other half: uint8 [F, 3, S, S] -> float32 (x - 255*mean) / (255*std)."""
    import torch

    m = torch.tensor(mean, dtype=torch.float32) * 255.0
    s = torch.tensor(std, dtype=torch.float32) * 255.0
    return (x.to(torch.float32) - m[:, None, None]) / s[:, None, None]

"""What a decode may use: the memory estimate of a plan (``estimate_memory``, ``decode_size``: frames past the
limits are decoded smaller), the memory budget (``--memory-budget``; default a fraction of the available memory,
cgroup limits included), and this process's share of the cores.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Any

from scissor_cli.errors import OptionError, VideoError
from scissor_cli.video_probe import VideoInfo

# decoded frames above either limit are decoded smaller, by the decoder (see decode_size); below, at the video's
# own size: 32 frames of 4K (760 MiB, 25 MiB a frame) stay as they are, a 16000 x 16000 picture does not
FULL_SIZE_LIMIT_BYTES = 1 << 30
FRAME_LIMIT_BYTES = 64 << 20
DEFAULT_MEMORY_FRACTION = 0.5  # default memory budget: this fraction of the available memory


@dataclass(frozen=True)
class ModelInput:
    """What the model's vision step takes per frame: the decoder's target size and the memory estimate use it.

    A family that sizes each video itself (Qwen: ``smart_resize`` per frame, or over the clip for Qwen3-VL) gives a
    ``sizer`` instead of a fixed size: an object with ``frame_size(n_frames, height, width)`` -> the (height, width)
    it resizes such frames to, ``n_tokens(n_frames, height, width)`` -> the clip's visual tokens, and
    ``feature_width`` (features per token). It travels to decode-ahead workers, so it must pickle."""

    size: tuple[int, int] | None  # (height, width) frames are resized to (LLaVA-OV: 384 x 384); None: ``sizer``'s
    tokens_per_frame: int | None  # T: visual tokens per frame after pooling (196); None: ``sizer``'s
    hidden_size: int  # D: width of those tokens (the LLM's hidden size)
    sizer: Any = None  # the family's per-video sizing (families.qwen.QwenSettings), or None

    @classmethod
    def of(cls, vlm: Any) -> ModelInput | None:
        """From a ``VisionLanguageModel`` (None for anything without these attributes)."""
        family = getattr(vlm, "family", None)
        sizer = getattr(family, "input_sizer", lambda _vlm: None)(vlm)
        try:
            if sizer is not None:
                return cls(None, None, int(vlm.hidden_size), sizer)
            h, w = vlm.image_size
            return cls((int(h), int(w)), int(vlm.tokens_per_frame), int(vlm.hidden_size))
        except (AttributeError, TypeError, ValueError):
            return None

    def target(self, n_frames: int, width: int, height: int) -> tuple[int, int] | None:
        """(height, width) the model resizes ``n_frames`` frames of width x height to; None where it cannot say
        (a Qwen aspect ratio over 200 is refused by the model itself)."""
        if self.sizer is None:
            return self.size
        try:
            return self.sizer.frame_size(n_frames, height, width)
        except ValueError:
            return None

    def step_bytes(self, n_frames: int, width: int, height: int) -> int:
        """Float pixels and float features of the vision step. Fixed size: F x (3 S S + T D) x 4. Per video (Qwen,
        the whole clip in one call): the frames padded to whole temporal patches, twice (normalised pixels and
        their patch rows), plus the clip's tokens x feature width, x 4 bytes."""
        if self.sizer is None:
            sh, sw = self.size
            return n_frames * (3 * sh * sw * 4 + self.tokens_per_frame * self.hidden_size * 4)
        target = self.target(n_frames, width, height)
        if target is None:
            return 0
        th, tw = target
        padded = -(-n_frames // self.sizer.temporal) * self.sizer.temporal
        tokens = self.sizer.n_tokens(n_frames, height, width)
        return 2 * padded * 3 * th * tw * 4 + tokens * self.sizer.feature_width * 4


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one video's decoding and vision step take, estimated before decoding (``estimate_memory``)."""

    n_frames: int  # F, frames planned
    size: tuple[int, int]  # (width, height) the decoder delivers: the video's own, or smaller (decode_size)
    frames: int  # F * h * w * 3: the uint8 RGB frames
    decoder: int  # 8 * H * W: the decoder's own full-size pictures (two, up to 4 bytes a pixel)
    model: int  # float pixels and float features (ModelInput.step_bytes; 0 without a model)

    @property
    def total(self) -> int:
        return self.frames + self.decoder + self.model


def decode_size(info: VideoInfo, n_frames: int, model: ModelInput | None) -> tuple[int, int]:
    """(width, height) to decode at. The video's own size unless its ``n_frames`` frames would take more than
    ``FULL_SIZE_LIMIT_BYTES`` (or one frame more than ``FRAME_LIMIT_BYTES``) and a model says what size it needs:
    then each side is capped at twice the model's input (at once if that is still too much), never below it, so the
    model's antialiased resize still runs and ordinary videos keep exactly the frames they had. A model that sizes
    each video itself (``ModelInput.sizer``) gets the video scaled with its aspect kept, to a size it resizes to
    the same input as the video's own size (the same token grid, whatever the memory)."""
    w, h = info.width, info.height
    if model is None or (n_frames * w * h * 3 <= FULL_SIZE_LIMIT_BYTES and w * h * 3 <= FRAME_LIMIT_BYTES):
        return w, h
    target = model.target(n_frames, w, h)
    if target is None:
        return w, h
    sh, sw = target
    if model.sizer is not None:
        return _scaled(model, n_frames, w, h, target)
    for factor in (2, 1):
        tw, th = min(w, factor * sw), min(h, factor * sh)
        if n_frames * tw * th * 3 <= FULL_SIZE_LIMIT_BYTES:
            break
    return tw, th


def _scaled(model: ModelInput, n_frames: int, w: int, h: int, target: tuple[int, int]) -> tuple[int, int]:
    """``decode_size`` for a per-video target (height, width): the video scaled with its aspect kept, its tighter
    side at twice the target's (once, if that is still too much), never below it, then a little larger where the
    rounding of the scaled size would make the model pick another size."""
    for factor in (2, 1):
        size = _same_input(model, n_frames, w, h, target, factor)
        if n_frames * size[0] * size[1] * 3 <= FULL_SIZE_LIMIT_BYTES:
            break
    return size


def _same_input(model: ModelInput, n_frames: int, w: int, h: int, target, factor: int) -> tuple[int, int]:
    """(width, height): the video scaled by ``factor`` x the target's tighter side, or up to a quarter larger, or
    ``factor`` x the target itself: the first of these the model resizes to ``target`` again (rounding can move its
    choice by a row or a column of tokens); the first candidate where none does (3 of 9,000 sizes measured: 2000 to
    16000 px, 1 to 1440 frames, both families' bounds). The video's own size where the scale reaches it."""
    th, tw = target
    scale = factor * max(th / h, tw / w)
    if scale >= 1:
        return w, h
    candidates = [(min(w, round(w * s)), min(h, round(h * s))) for s in (scale * (1 + k / 64) for k in range(16))]
    candidates.append((min(w, factor * tw), min(h, factor * th)))
    candidates = [(max(tw, cw), max(th, ch)) for cw, ch in candidates]
    return next((size for size in candidates if model.target(n_frames, *size) == target), candidates[0])


def estimate_memory(info: VideoInfo, n_frames: int, model: ModelInput | None = None) -> MemoryEstimate:
    """What decoding ``n_frames`` frames of ``info`` and (with ``model``) its vision step will take; see
    ``MemoryEstimate`` for the formula. LLaVA-OV's vision tower runs a few frames at a time, so its float pixels
    term is an upper bound that also covers its activations."""
    w, h = decode_size(info, n_frames, model)
    model_bytes = 0 if model is None else model.step_bytes(n_frames, info.width, info.height)
    return MemoryEstimate(n_frames, (w, h), n_frames * w * h * 3, 8 * info.width * info.height, model_bytes)


def available_memory() -> int | None:
    """Bytes this process can still take: the least of the system's MemAvailable, the cgroup's limit minus its
    use, and the address-space limit (ulimit -v) minus what is mapped. None where none of them can be read."""
    found = []
    meminfo = _read_kib("/proc/meminfo", "MemAvailable:")
    if meminfo is not None:
        found.append(meminfo)
    else:
        with contextlib.suppress(AttributeError, ValueError, OSError):
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    with contextlib.suppress(OSError, ValueError):
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        if limit != "max":
            with open("/sys/fs/cgroup/memory.current") as f:
                found.append(max(int(limit) - int(f.read().strip()), 0))
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        mapped = _read_kib("/proc/self/status", "VmSize:")
        if soft != resource.RLIM_INFINITY and mapped is not None:
            found.append(max(soft - mapped, 0))
    except (ImportError, OSError, ValueError):
        pass
    return min(found) if found else None


def _read_kib(path: str, key: str) -> int | None:
    """A "Key:   123 kB" line of a /proc file, in bytes."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def resolve_memory_budget(setting: str | None) -> int | None:
    """The budget in bytes for ``sampling.memory_budget`` (``8G``, ``0.5``, None: ``DEFAULT_MEMORY_FRACTION``
    of ``available_memory()``); None (no limit) where the available memory cannot be read."""
    from scissor_cli.options import MEMORY_BUDGET_ALLOWED, parse_memory_budget

    fraction = DEFAULT_MEMORY_FRACTION
    if setting is not None:
        try:
            n_bytes, given = parse_memory_budget(setting)
        except ValueError as e:
            raise OptionError(
                f"--memory-budget {setting!r} is not a memory size", hint=f"give {MEMORY_BUDGET_ALLOWED}"
            ) from e
        if n_bytes is not None:
            return n_bytes
        fraction = given if given is not None else fraction
    available = available_memory()
    return None if available is None else int(available * fraction)


def check_memory(shown: str, estimate: MemoryEstimate, budget: int | None) -> None:
    """Refuse, before anything is allocated, a video whose estimate is over the budget (None: no budget)."""
    if budget is None or estimate.total <= budget:
        return
    w, h = estimate.size
    parts = f"frames {_size(estimate.frames)}, decoder {_size(estimate.decoder)}"
    if estimate.model:
        parts += f", model step {_size(estimate.model)}"
    raise VideoError(
        f"{shown}: {estimate.n_frames} frames at {w}x{h} need about {_size(estimate.total)} ({parts}), "
        f"more than the memory budget of {_size(budget)}",
        hint="sample fewer frames (--frames N), give a smaller video, or raise the budget (e.g. --memory-budget 16G) "
        "if the machine has the memory",
    )


def out_of_memory(shown: str, estimate: MemoryEstimate | None = None) -> VideoError:
    """The error for an allocation that failed while decoding (never an "internal error")."""
    need = ""
    if estimate is not None:
        w, h = estimate.size
        need = f" ({estimate.n_frames} frames at {w}x{h}, about {_size(estimate.total)})"
    return VideoError(
        f"{shown}: out of memory while decoding{need}",
        hint="sample fewer frames (--frames N), give a smaller video, or lower --memory-budget so that such videos "
        "are refused before decoding",
    )


def _size(n_bytes: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}"
    return f"{n_bytes / 1024:.1f} KiB"


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's or a Slurm job's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def process_cores() -> int:
    """This process's share of the machine: its cores divided by the processes a launcher started on it
    (``LOCAL_WORLD_SIZE``, set by torchrun and accelerate)."""
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    return max(1, available_cores() // local)

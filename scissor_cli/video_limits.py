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
    """What the model's vision step takes per frame: the decoder's target size and the memory estimate use it."""

    size: tuple[int, int]  # (height, width) frames are resized to (LLaVA-OV: 384 x 384)
    tokens_per_frame: int  # T: visual tokens per frame after pooling (196)
    hidden_size: int  # D: width of those tokens (the LLM's hidden size)

    @classmethod
    def of(cls, vlm: Any) -> ModelInput | None:
        """From a ``VisionLanguageModel`` (None for anything without these attributes)."""
        try:
            h, w = vlm.image_size
            return cls((int(h), int(w)), int(vlm.tokens_per_frame), int(vlm.hidden_size))
        except (AttributeError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one video's decoding and vision step take, estimated before decoding (``estimate_memory``)."""

    n_frames: int  # F, frames planned
    size: tuple[int, int]  # (width, height) the decoder delivers: the video's own, or smaller (decode_size)
    frames: int  # F * h * w * 3: the uint8 RGB frames
    decoder: int  # 8 * H * W: the decoder's own full-size pictures (two, up to 4 bytes a pixel)
    model: int  # F * (3 * S * S * 4 + T * D * 4): float pixels and float features (0 without a model)

    @property
    def total(self) -> int:
        return self.frames + self.decoder + self.model


def decode_size(info: VideoInfo, n_frames: int, model: ModelInput | None) -> tuple[int, int]:
    """(width, height) to decode at. The video's own size unless its ``n_frames`` frames would take more than
    ``FULL_SIZE_LIMIT_BYTES`` (or one frame more than ``FRAME_LIMIT_BYTES``) and a model says what size it needs:
    then each side is capped at twice the model's input (at once if that is still too much), never below it, so the
    model's antialiased resize still runs and ordinary videos keep exactly the frames they had."""
    w, h = info.width, info.height
    if model is None or (n_frames * w * h * 3 <= FULL_SIZE_LIMIT_BYTES and w * h * 3 <= FRAME_LIMIT_BYTES):
        return w, h
    sh, sw = model.size
    for factor in (2, 1):
        tw, th = min(w, factor * sw), min(h, factor * sh)
        if n_frames * tw * th * 3 <= FULL_SIZE_LIMIT_BYTES:
            break
    return tw, th


def estimate_memory(info: VideoInfo, n_frames: int, model: ModelInput | None = None) -> MemoryEstimate:
    """What decoding ``n_frames`` frames of ``info`` and (with ``model``) its vision step will take; see
    ``MemoryEstimate`` for the formula. The vision tower runs a few frames at a time, so the float pixels term is
    an upper bound that also covers its activations."""
    w, h = decode_size(info, n_frames, model)
    model_bytes = 0
    if model is not None:
        sh, sw = model.size
        model_bytes = n_frames * (3 * sh * sw * 4 + model.tokens_per_frame * model.hidden_size * 4)
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

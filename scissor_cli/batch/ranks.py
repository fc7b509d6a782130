"""Several batch processes (``torchrun`` / ``accelerate launch``): the rank and world size, each rank's device,
and the gloo group whose barriers order the ranks' reads and writes.
"""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import timedelta

from scissor_cli.errors import OptionError
from scissor_cli.options import Profile

BARRIER_TIMEOUT_S = float(os.environ.get("SCISSOR_BATCH_BARRIER_S", 6 * 3600))  # how long ranks wait for each other
# ----------------------------------------------------------------------------------------------- several ranks


def dist_env() -> tuple[int, int]:
    """(rank, world_size) from the launcher's environment; (0, 1) when run plainly."""
    try:
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    except ValueError as e:
        raise OptionError(f"RANK / WORLD_SIZE are not integers: {e}", hint="launch with torchrun") from e
    if world < 1 or not 0 <= rank < world:
        raise OptionError(f"RANK={rank} WORLD_SIZE={world} is not a valid pair", hint="0 <= RANK < WORLD_SIZE")
    return rank, world


def shard_device(profile: Profile) -> Profile:
    """Under torchrun/accelerate with several visible GPUs and device auto/cuda: this process's GPU (LOCAL_RANK);
    with ``--engine vllm``, the first of its ``--tensor-parallel-size`` GPUs (``vllm_rank_device``). Otherwise the
    profile unchanged (one GPU per process via CUDA_VISIBLE_DEVICES also works as is)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world <= 1 or profile.model.device not in ("auto", "cuda"):
        return profile
    import torch

    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", 0)))
    if profile.model.engine == "vllm":
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        device = vllm_rank_device(local_rank, local_world, profile.model.tensor_parallel_size, n_gpus)
        return profile if device is None else replace(profile, model=replace(profile.model, device=device))
    if n_gpus <= 1:
        return profile
    return replace(profile, model=replace(profile.model, device=f"cuda:{local_rank % n_gpus}"))


def vllm_rank_device(local_rank: int, local_world: int, tp: int, n_gpus: int) -> str | None:
    """With ``--engine vllm`` under a launcher: the device of this process's vision tower, the first of the ``tp``
    GPUs its own vLLM engine takes (rank r: GPUs r*tp .. r*tp+tp-1; ``engines.vllm.engine_gpus`` gives vLLM those
    from this device). None: no GPU (CPU), or this process sees only its own ``tp`` GPUs (CUDA_VISIBLE_DEVICES set
    per process). OptionError (exit 2), before anything loads, when the machine's processes need more GPUs than
    are visible: two engines on one GPU would each claim ``--gpu-memory-utilization`` of it."""
    if n_gpus == 0:
        return None
    if n_gpus <= tp:
        if n_gpus < tp:
            raise OptionError(
                f"--tensor-parallel-size {tp} needs {tp} GPUs per process; this process sees {n_gpus}",
                hint=f"lower --tensor-parallel-size to {n_gpus}, or make more GPUs visible (CUDA_VISIBLE_DEVICES)",
            )
        return None
    if local_world * tp > n_gpus:
        raise OptionError(
            f"{local_world} processes on this machine with --engine vllm and --tensor-parallel-size {tp} need "
            f"{local_world * tp} GPUs (one vLLM engine per process); {n_gpus} are visible",
            hint=f"launch at most {n_gpus // tp} processes per machine (--nproc_per_node), or lower "
            "--tensor-parallel-size",
        )
    return f"cuda:{local_rank * tp}"


class _Group:
    """Barriers between ranks over a gloo process group (CPU, works next to NCCL); a no-op for one process."""

    def __init__(self, rank: int, world_size: int, timeout_s: float):
        self.world_size, self.timeout = world_size, timedelta(seconds=timeout_s)
        self.group, self.owned = None, False
        if world_size == 1:
            return
        import torch.distributed as dist

        if not dist.is_available():
            raise OptionError("this torch build has no torch.distributed", hint="run one process, or install torch")
        if dist.is_initialized():
            self.group = dist.new_group(backend="gloo", timeout=self.timeout)
            return
        if not (os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT")):
            raise OptionError(
                "WORLD_SIZE > 1 but MASTER_ADDR / MASTER_PORT are not set",
                hint="launch with torchrun or accelerate launch, or set MASTER_ADDR (rank 0's host) and MASTER_PORT",
            )
        dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=self.timeout)
        self.owned = True

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.monitored_barrier(group=self.group, timeout=self.timeout, wait_all_ranks=True)

    def close(self) -> None:
        if self.owned:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.owned = False

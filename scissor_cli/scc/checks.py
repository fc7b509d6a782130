"""Argument validation for the public functions: every bad argument raises OptionError with a hint."""

from __future__ import annotations

import math

import torch

from scissor_cli.errors import OptionError


def _is_real(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_tokens(tokens: object) -> None:
    if not isinstance(tokens, torch.Tensor):
        raise OptionError(
            f"tokens must be a torch.Tensor, got {type(tokens).__name__}",
            hint="pass the video features as a [F, T, D] float tensor",
        )
    if tokens.ndim != 3:
        raise OptionError(
            f"tokens must have 3 dims [F, T, D], got shape {tuple(tokens.shape)}",
            hint="one video at a time: frames x tokens per frame x width",
        )
    if tokens.numel() == 0:
        raise OptionError(f"tokens are empty, shape {tuple(tokens.shape)}", hint="F, T and D must all be >= 1")
    if not tokens.is_floating_point():
        raise OptionError(f"tokens must be floating point, got {tokens.dtype}", hint="cast with .float()")


def check_tau(name: str, tau: object) -> float:
    if not _is_real(tau):
        raise OptionError(
            f"{name} = {tau!r} is not a finite number",
            hint=f"{name} is a cosine threshold, usually 0.8 to 0.95 (>= 1 keeps every token)",
        )
    return float(tau)


def check_taus(taus: object) -> list[float]:
    try:
        return [check_tau("tau", x) for x in taus]
    except TypeError as e:
        raise OptionError(f"taus must be a list of numbers, got {taus!r}", hint="e.g. [0.95, 0.9, 0.85, 0.8]") from e


def check_epsilon(epsilon: object) -> float:
    if not _is_real(epsilon) or not 0 < epsilon <= 1:
        raise OptionError(f"epsilon = {epsilon!r} is out of range", hint="epsilon must be in (0, 1] (paper: 0.05)")
    return float(epsilon)


def resolve_budget(budget: object, n_input: int) -> int | None:
    """A float in (0, 1] is a ratio of F*T (rounded down, at least 1 token); an int >= 1 is a count."""
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise OptionError(
            f"budget = {budget!r} is not a number",
            hint="a retention ratio in (0, 1] (e.g. 0.1) or a token count >= 1 (e.g. 600)",
        )
    if isinstance(budget, float):
        if not math.isfinite(budget) or not 0 < budget <= 1:
            raise OptionError(
                f"budget = {budget!r} is not a ratio in (0, 1]",
                hint="give a fraction such as 0.1 for 10 %, or an integer token count",
            )
        return max(1, math.floor(budget * n_input + 1e-9))
    if budget < 1:
        raise OptionError(f"budget = {budget!r} tokens is below 1", hint="a token budget must be >= 1")
    return int(budget)


def check_generator(generator: object) -> torch.Generator:
    """None -> a fresh CPU generator seeded with 0, so the output is always reproducible."""
    if generator is None:
        return torch.Generator(device="cpu").manual_seed(0)
    if not isinstance(generator, torch.Generator):
        raise OptionError(
            f"generator must be a torch.Generator, got {type(generator).__name__}",
            hint="torch.Generator().manual_seed(seed), or None for seed 0",
        )
    return generator

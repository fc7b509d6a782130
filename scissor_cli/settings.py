"""The flag -> profile mapping the CLI, the chat and the lmms-eval plugin share: built-in defaults < user config <
SCISSOR_MODEL < profile < flags, with the tau-vs-budget rules and flag names in errors. Stdlib, no typer."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from scissor_cli.errors import OptionError
from scissor_cli.options import Profile, normalize_dtype, with_flag_names

if TYPE_CHECKING:
    from scissor_cli.config import UserConfig


def build_profile(
    profile: str | None,
    *,
    model: str | None = None,
    revision: str | None = None,
    tau: float | None = None,
    tau_temporal: float | None = None,
    epsilon: float | None = None,
    retention: float | None = None,
    tokens: int | None = None,
    no_compress: bool = False,
    frames: int | None = None,
    fps: float | None = None,
    start: float | None = None,
    end: float | None = None,
    memory_budget: str | None = None,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    seed: int | None = None,
    device: str | None = None,
    dtype: str | None = None,
    offline: bool = False,
    no_cache: bool = False,
    newline: bool | None = None,
    engine: str | None = None,
    tensor_parallel_size: int | None = None,
    gpu_memory_utilization: float | None = None,
    max_model_len: int | None = None,
    config: UserConfig | None = None,
) -> Profile:
    """Built-in defaults < user config < SCISSOR_MODEL < profile < flags (``config``: default ``load_config()``).

    tau and a budget, one rule everywhere: a budget searches tau itself, so ``--tau`` with ``--retention`` or
    ``--tokens`` is a usage error, and a profile file that sets both is a profile error. A flag of one kind
    replaces the profile's setting of the other (``--tau`` clears a profile's budget, a budget flag clears a
    profile's tau and budget); ``--tau-temporal`` may go with a budget (it fixes the temporal step).
    """
    from scissor_cli.config import load_config
    from scissor_cli.profiles import load_profile

    config = config if config is not None else load_config()
    p = load_profile(profile, base=config.base_profile())
    if retention is not None and tokens is not None:
        raise OptionError("--retention and --tokens are both given", hint="give one budget: a ratio or a count")
    budget_flag = "--retention" if retention is not None else "--tokens" if tokens is not None else None
    if tau is not None and budget_flag:
        raise OptionError(
            f"--tau and {budget_flag} are both given: a budget searches tau itself",
            hint=f"drop --tau to keep the budget, or drop {budget_flag} to use that tau",
        )
    asked = [
        flag
        for flag, v in (
            ("--tau", tau),
            ("--tau-temporal", tau_temporal),
            ("--epsilon", epsilon),
            ("--retention", retention),
            ("--tokens", tokens),
        )
        if v is not None
    ]
    if no_compress and asked:
        raise OptionError(f"--no-compress contradicts {', '.join(asked)}", hint="drop one of them")
    compression: dict[str, Any] = {"tau": tau, "tau_temporal": tau_temporal, "epsilon": epsilon, "seed": seed}
    if tau is not None:  # this threshold, not the profile's budget
        p = replace(p, compression=replace(p.compression, retention=None, tokens=None))
    if budget_flag:  # this budget, not the profile's tau or its other budget
        p = replace(p, compression=replace(p.compression, tau=None, retention=None, tokens=None))
        compression.update(retention=retention, tokens=tokens)
    if no_compress:
        compression["enabled"] = False
    elif asked:  # a compression flag over a profile that turns compression off (e.g. --profile off) means "compress"
        compression["enabled"] = True
    try:
        return p.override(
            sampling={"n_frames": frames, "fps": fps, "start": start, "end": end, "memory_budget": memory_budget},
            compression=compression,
            generation={"max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed},
            model={
                "model": model,
                "revision": revision,
                "device": device,
                "dtype": normalize_dtype(dtype),
                "offline": True if offline else None,
                "cache": False if no_cache else None,
                "newline": newline,
                "engine": engine.strip().lower() if isinstance(engine, str) else engine,
                "tensor_parallel_size": tensor_parallel_size,
                "gpu_memory_utilization": gpu_memory_utilization,
                "max_model_len": max_model_len,
            },
        )
    except OptionError as e:  # the profile was valid on its own, so the value came from a flag: name the flag
        raise with_flag_names(e) from e


SHARED_FLAGS = frozenset(
    ("model", "revision", "tau", "tau_temporal", "epsilon", "retention", "tokens", "no_compress", "frames", "fps",
     "start", "end", "memory_budget", "max_new_tokens", "temperature", "seed", "device", "dtype", "offline",
     "no_cache", "newline", "engine", "tensor_parallel_size", "gpu_memory_utilization", "max_model_len")
)  # fmt: skip


def profile_from_flags(params: dict[str, Any]) -> Profile:
    """``build_profile`` from a command's parameters (its ``locals()``): the shared flags it declares, by name."""
    from scissor_cli.config import apply_cache_dir, load_config

    config = load_config()
    apply_cache_dir(config)
    profile = build_profile(params["profile"], config=config, **{k: v for k, v in params.items() if k in SHARED_FLAGS})
    if profile.model.cache:
        from scissor_cli.cache import default_max_bytes

        default_max_bytes()  # a bad SCISSOR_CACHE_MAX_GB fails now, not after the model has loaded
    return profile

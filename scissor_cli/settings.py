"""Settings in one place: what every front end (the CLI, chat, the server, the lmms-eval plugin) turns its input into
before anything runs. Standard library only (no typer).

- ``Overrides``: the settings a user may give on top of a profile (the CLI's shared flags, chat's /commands, a
  request's fields, model_args), ``None`` = not given.
- ``resolve(overrides)``: built-in defaults < user config < ``SCISSOR_MODEL`` < profile < overrides, with the
  contradiction rules (``apply``); the one way a ``Profile`` is made from user input.
- ``SPELLING``: how each front end spells each setting (``--frames``, ``/frames``, ``frames``); an ``OptionError``
  names its keys (``sampling.n_frames``) and ``spelled(e, front_end)`` words it for the user who typed it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any

from scissor_cli.errors import OptionError
from scissor_cli.options import Profile, normalize_dtype

if TYPE_CHECKING:
    from scissor_cli.config import UserConfig


@dataclass(frozen=True)
class Overrides:
    """User-given settings over a profile; ``None`` (or False for the switches) leaves the profile's value."""

    profile: str | None = None  # a profile name or YAML file
    model: str | None = None
    revision: str | None = None
    tau: float | None = None
    tau_temporal: float | None = None
    epsilon: float | None = None
    retention: float | None = None
    tokens: int | None = None
    no_compress: bool = False
    frames: int | None = None
    fps: float | None = None
    start: float | None = None
    end: float | None = None
    memory_budget: str | None = None
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None  # both seeds: sampling's and SCC's sampled regime
    device: str | None = None
    dtype: str | None = None
    offline: bool = False
    no_cache: bool = False
    newline: bool | None = None
    engine: str | None = None  # hf | vllm (docs/engines.md)
    tensor_parallel_size: int | None = None  # vLLM's knobs (--engine vllm only)
    gpu_memory_utilization: float | None = None
    max_model_len: int | None = None


OVERRIDES = tuple(f.name for f in fields(Overrides))


@dataclass(frozen=True)
class Spelling:
    """One setting as each front end spells it; None: that front end has no way to set it (its dotted key then)."""

    cli: str
    chat: str | None = None
    lmms: str | None = None  # model_args
    serve: str | None = None  # a request's JSON field


# dotted key -> its spellings. Keys are the profile's (``sampling.n_frames``) plus decode_workers (not a profile
# setting: how many processes decode ahead).
SPELLING: dict[str, Spelling] = {
    "sampling.n_frames": Spelling("--frames", "/frames", "frames", "frames"),
    "sampling.fps": Spelling("--fps", serve="fps"),
    "sampling.start": Spelling("--start", serve="start"),
    "sampling.end": Spelling("--end", serve="end"),
    "sampling.memory_budget": Spelling("--memory-budget"),
    "compression.enabled": Spelling("--no-compress", "/off", "no_compress", "no_compress"),
    "compression.tau": Spelling("--tau", "/tau", "tau", "tau"),
    "compression.tau_temporal": Spelling("--tau-temporal", lmms="tau_temporal", serve="tau_temporal"),
    "compression.epsilon": Spelling("--epsilon", lmms="epsilon", serve="epsilon"),
    "compression.retention": Spelling("--retention", "/retention", "retention", "retention"),
    "compression.tokens": Spelling("--tokens", "/tokens", "tokens", "tokens"),
    "compression.seed": Spelling("--seed", lmms="seed", serve="seed"),
    "generation.max_new_tokens": Spelling("--max-new-tokens", serve="max_tokens"),
    "generation.temperature": Spelling("--temperature", serve="temperature"),
    "generation.top_p": Spelling("--top-p", serve="top_p"),
    "generation.seed": Spelling("--seed", lmms="seed", serve="seed"),
    "model.model": Spelling("--model", lmms="pretrained"),
    "model.revision": Spelling("--revision"),
    "model.device": Spelling("--device", lmms="device"),
    "model.dtype": Spelling("--dtype", lmms="dtype"),
    "model.offline": Spelling("--offline", lmms="offline"),
    "model.cache": Spelling("--no-cache"),
    "model.newline": Spelling("--newline", lmms="newline"),
    "model.engine": Spelling("--engine", lmms="engine"),
    "model.tensor_parallel_size": Spelling("--tensor-parallel-size", lmms="tensor_parallel_size"),
    "model.gpu_memory_utilization": Spelling("--gpu-memory-utilization", lmms="gpu_memory_utilization"),
    "model.max_model_len": Spelling("--max-model-len", lmms="max_model_len"),
    "decode_workers": Spelling("--decode-workers", lmms="decode_workers"),
}
FRONT_ENDS = ("cli", "chat", "lmms", "serve")


def spelled(e: OptionError, front_end: str) -> OptionError:
    """``e`` naming its settings as ``front_end`` (one of ``FRONT_ENDS``) spells them."""
    names = {key: getattr(s, front_end) for key, s in SPELLING.items() if getattr(s, front_end) is not None}
    return e.spelled(names)


def apply(p: Profile, o: Overrides) -> Profile:
    """``o`` over the profile ``p`` (its ``profile`` field aside), validated.

    tau and a budget, one rule everywhere: a budget searches tau itself, so tau with retention or tokens is a usage
    error (a profile file that sets both is a profile error). An override of one kind replaces the profile's setting
    of the other (tau clears a profile's budget, a budget clears a profile's tau and budget); tau_temporal may go with
    a budget (it fixes the temporal step). A compression override over a profile that turns compression off means
    "compress"; no_compress with any of them is a contradiction.
    """
    if o.retention is not None and o.tokens is not None:
        raise OptionError("{0} and {1} are both given", hint="give one budget: a ratio or a count",
                          keys=("compression.retention", "compression.tokens"))  # fmt: skip
    budget = next((f"compression.{k}" for k in ("retention", "tokens") if getattr(o, k) is not None), None)
    if o.tau is not None and budget:
        raise OptionError(
            "{0} and {1} are both given: a budget searches tau itself",
            hint="drop {0} to keep the budget, or drop {1} to use that tau",
            keys=("compression.tau", budget),
        )
    asked = [f"compression.{k}" for k in ("tau", "tau_temporal", "epsilon", "retention", "tokens")
             if getattr(o, k) is not None]  # fmt: skip
    if o.no_compress and asked:
        places = ", ".join(f"{{{i}}}" for i in range(1, len(asked) + 1))
        raise OptionError(f"{{0}} contradicts {places}", hint="drop one of them", keys=("compression.enabled", *asked))
    compression: dict[str, Any] = {"tau": o.tau, "tau_temporal": o.tau_temporal, "epsilon": o.epsilon, "seed": o.seed}
    if o.tau is not None:  # this threshold, not the profile's budget
        p = replace(p, compression=replace(p.compression, retention=None, tokens=None))
    if budget:  # this budget, not the profile's tau or its other budget
        p = replace(p, compression=replace(p.compression, tau=None, retention=None, tokens=None))
        compression.update(retention=o.retention, tokens=o.tokens)
    if o.no_compress:
        compression["enabled"] = False
    elif asked:
        compression["enabled"] = True
    return p.override(
        sampling={"n_frames": o.frames, "fps": o.fps, "start": o.start, "end": o.end, "memory_budget": o.memory_budget},
        compression=compression,
        generation={"max_new_tokens": o.max_new_tokens, "temperature": o.temperature, "top_p": o.top_p, "seed": o.seed},
        model={
            "model": o.model,
            "revision": o.revision,
            "device": o.device,
            "dtype": normalize_dtype(o.dtype),
            "offline": True if o.offline else None,
            "cache": False if o.no_cache else None,
            "newline": o.newline,
            "engine": o.engine.strip().lower() if isinstance(o.engine, str) else o.engine,
            "tensor_parallel_size": o.tensor_parallel_size,
            "gpu_memory_utilization": o.gpu_memory_utilization,
            "max_model_len": o.max_model_len,
        },
    )


def resolve(overrides: Overrides = Overrides(), config: UserConfig | None = None) -> Profile:  # noqa: B008 - frozen
    """Built-in defaults < user config < SCISSOR_MODEL < profile < overrides (``config``: default ``load_config()``).

    Raises ``ProfileError`` for a bad profile or config file, ``OptionError`` (keyed: word it with ``spelled``) for a
    bad or contradictory override, and for a bad ``SCISSOR_CACHE_MAX_GB`` when the feature cache is on: now, not
    after the model has loaded."""
    from scissor_cli.config import load_config
    from scissor_cli.profiles import load_profile

    config = config if config is not None else load_config()
    p = apply(load_profile(overrides.profile, base=config.base_profile()), overrides)
    if p.model.cache:
        from scissor_cli.cache import default_max_bytes

        default_max_bytes()
    return p

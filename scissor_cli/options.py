"""Options: one small frozen dataclass per stage, composed into a ``Profile``. Standard library only.

Overrides go through ``dataclasses.replace``; every value is checked in ``validate`` (one place), which raises
``OptionError`` naming the field and the allowed range. ``None`` means "auto" where a field says so.
"""

from __future__ import annotations

import math
import re
import secrets
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from scissor_cli.engines import ENGINES
from scissor_cli.errors import OptionError, literal

DEFAULT_MODEL = "llava-hf/llava-onevision-qwen2-0.5b-ov-hf"
PAPER_TAU = 0.9  # LLaVA-Scissor paper default similarity threshold
PAPER_EPSILON = 0.05  # paper default error tolerance of the sampled components


@dataclass(frozen=True)
class SamplingOptions:
    n_frames: int = 32  # frames spread uniformly over the video (or the start/end window)
    fps: float | None = None  # sample at this rate instead (capped by n_frames); None: uniform n_frames
    start: float | None = None  # window start in seconds; None: beginning
    end: float | None = None  # window end in seconds; None: end of video
    # most memory one video's decoding and vision step may take: a size ("8G", "512M") or a fraction of the
    # available memory ("0.5"); None: half of what is available (video.memory_budget)
    memory_budget: str | None = None


@dataclass(frozen=True)
class CompressionOptions:
    enabled: bool = True  # False: every visual token goes to the LLM (the model's own path)
    tau: float | None = None  # similarity threshold; None: the checkpoint's own, else 0.9
    epsilon: float | None = None  # sampling tolerance; None: the checkpoint's own, else 0.05
    tau_temporal: float | None = None  # threshold for the temporal step; None: same as tau
    retention: float | None = None  # budget: keep at most this fraction of tokens, in (0, 1]
    tokens: int | None = None  # budget: keep at most this many tokens, >= 1
    seed: int = 0  # seeds the sampled-components regime (large videos), for reproducible output

    @property
    def budget(self) -> float | int | None:
        """What ``scc.compress(budget=...)`` takes: a float ratio, an int count, or None."""
        if self.retention is not None:
            return float(self.retention)
        if self.tokens is not None:
            return int(self.tokens)
        return None


@dataclass(frozen=True)
class GenerationOptions:
    max_new_tokens: int = 128  # answer length cap
    temperature: float = 0.0  # 0: greedy decoding
    top_p: float = 1.0  # nucleus sampling mass when temperature > 0
    seed: int | None = None  # seeds sampling; None: greedy ignores it, sampling draws one (see with_drawn_seed)

    def with_drawn_seed(self) -> GenerationOptions:
        """These options with a fresh random seed when sampling (temperature > 0) has none; else unchanged.
        Record the returned seed: passed back, it reproduces the answer."""
        if self.temperature > 0 and self.seed is None:
            return replace(self, seed=secrets.randbelow(2**31))
        return self


@dataclass(frozen=True)
class ModelOptions:
    model: str = DEFAULT_MODEL  # hub id or local directory
    revision: str | None = None  # hub branch, tag or commit
    device: str = "auto"  # auto (cuda, mps, cpu) | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (bf16/fp16 on GPU, fp32 on CPU) | float32 | bfloat16 | float16
    offline: bool = False  # never touch the network (also HF_HUB_OFFLINE=1)
    newline: bool | None = None  # append image_newline after the video; None: checkpoint default
    cache: bool = True  # reuse encoded video features from the on-disk cache
    allow_pickle: bool = False  # allow loading .bin (pickle) weights; unsafe for untrusted checkpoints
    engine: str = "hf"  # the LLM step: hf (transformers) | vllm (docs/engines.md)
    # vLLM's own knobs (--engine vllm only); None: vLLM's default
    tensor_parallel_size: int = 1  # GPUs the LLM is split over
    gpu_memory_utilization: float | None = None  # fraction of each GPU's memory vLLM may take (weights + KV cache)
    max_model_len: int | None = None  # the LLM's context in vLLM (prompt + answer); None: the model's


@dataclass(frozen=True)
class Profile:
    name: str = "default"
    description: str = ""
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    compression: CompressionOptions = field(default_factory=CompressionOptions)
    generation: GenerationOptions = field(default_factory=GenerationOptions)
    model: ModelOptions = field(default_factory=ModelOptions)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def override(self, **sections: dict[str, Any]) -> Profile:
        """``profile.override(compression={"tau": 0.8})``: replace fields, skipping None values, then validate."""
        changes = {}
        for section, values in sections.items():
            current = getattr(self, section)
            kept = {k: v for k, v in values.items() if v is not None}
            if kept:
                changes[section] = replace(current, **kept)
        return validate(replace(self, **changes)) if changes else self


SECTIONS: dict[str, type] = {
    "sampling": SamplingOptions,
    "compression": CompressionOptions,
    "generation": GenerationOptions,
    "model": ModelOptions,
}


DTYPES = ("auto", "float32", "bfloat16", "float16")
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # the short names people type

_SIZE_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
MEMORY_BUDGET_ALLOWED = "a size such as 8G or 512M, or a fraction of the available memory in (0, 1], e.g. 0.5"


def parse_memory_budget(value: Any) -> tuple[int | None, float | None]:
    """``"8G"`` -> (8 GiB in bytes, None); ``"0.5"`` -> (None, 0.5); units K/M/G/T (powers of 1024, an optional
    trailing B or iB). Raises ValueError for anything else (``validate`` turns it into the option's message)."""
    text = str(value).strip()
    m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*(?:([KMGT])(?:I?B)?)?", text, re.IGNORECASE)
    if m is None or isinstance(value, bool):
        raise ValueError(text)
    number, unit = float(m.group(1)), m.group(2)
    if unit is None:
        if not 0 < number <= 1:
            raise ValueError(text)
        return None, number
    n_bytes = int(number * _SIZE_UNITS[unit.upper()])
    if n_bytes < 1 << 20:
        raise ValueError(text)
    return n_bytes, None


def normalize_dtype(dtype: Any) -> Any:
    """'bf16' -> 'bfloat16' (also fp16, fp32); anything else unchanged, for ``validate`` to judge."""
    return DTYPE_ALIASES.get(dtype.strip().lower(), dtype) if isinstance(dtype, str) else dtype


def _check(ok: bool, key: str, value: Any, allowed: str, *others: str) -> None:
    """``allowed`` may name ``others`` (more keys) as {1}, {2}, ...: the error's keys, spelled by each front end."""
    if not ok:
        raise OptionError(
            f"{{0:=}} {literal(value)} is out of range", hint=f"{{0}} must be {allowed}", keys=(key, *others)
        )


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def validate(p: Profile) -> Profile:
    """Check every value; return the profile unchanged or raise ``OptionError`` naming the dotted key."""
    s, c, g, m = p.sampling, p.compression, p.generation, p.model
    _check(
        isinstance(s.n_frames, int) and not isinstance(s.n_frames, bool) and 1 <= s.n_frames <= 4096,
        "sampling.n_frames",
        s.n_frames,
        "an integer from 1 to 4096",
    )
    _check(s.fps is None or (_finite(s.fps) and s.fps > 0), "sampling.fps", s.fps, "a number > 0")
    _check(s.start is None or (_finite(s.start) and s.start >= 0), "sampling.start", s.start, "seconds >= 0")
    _check(s.end is None or (_finite(s.end) and s.end > 0), "sampling.end", s.end, "seconds > 0")
    if s.start is not None and s.end is not None:
        _check(s.end > s.start, "sampling.end", s.end, f"greater than {{1}} ({s.start})", "sampling.start")
    if s.memory_budget is not None:
        try:
            parse_memory_budget(s.memory_budget)
        except ValueError:
            _check(False, "sampling.memory_budget", s.memory_budget, MEMORY_BUDGET_ALLOWED)

    _check(isinstance(c.enabled, bool), "compression.enabled", c.enabled, "true or false")
    for key in ("tau", "tau_temporal"):
        v = getattr(c, key)
        _check(
            v is None or (_finite(v) and -1.0 <= v <= 1.0),
            f"compression.{key}",
            v,
            "a cosine similarity from -1 to 1 (paper: 0.9; lower merges more)",
        )
    _check(
        c.epsilon is None or (_finite(c.epsilon) and 0 < c.epsilon <= 1),
        "compression.epsilon",
        c.epsilon,
        "a number in (0, 1] (paper: 0.05)",
    )
    _check(
        c.retention is None or (_finite(c.retention) and 0 < c.retention <= 1),
        "compression.retention",
        c.retention,
        "a fraction in (0, 1], e.g. 0.1 for 10 %",
    )
    _check(
        c.tokens is None or (isinstance(c.tokens, int) and not isinstance(c.tokens, bool) and c.tokens >= 1),
        "compression.tokens",
        c.tokens,
        "an integer >= 1",
    )
    if c.retention is not None and c.tokens is not None:
        raise OptionError(
            "{0} and {1} are both set",
            hint="give one budget: --retention R or --tokens N",
            keys=("compression.retention", "compression.tokens"),
        )
    if c.tau is not None and c.budget is not None:
        # One rule everywhere: a budget searches tau itself, so a fixed tau next to it is a contradiction
        # (tau_temporal may stay: it fixes the temporal step while the spatial tau is searched).
        budget = "compression.retention" if c.retention is not None else "compression.tokens"
        raise OptionError(
            "{0} and {1} are both set: a budget searches tau itself",
            hint="keep one: drop {0} (or set it to auto), or drop {1}",
            keys=("compression.tau", budget),
        )
    _check(isinstance(c.seed, int) and not isinstance(c.seed, bool), "compression.seed", c.seed, "an integer")

    _check(
        isinstance(g.max_new_tokens, int) and not isinstance(g.max_new_tokens, bool) and 1 <= g.max_new_tokens <= 32768,
        "generation.max_new_tokens",
        g.max_new_tokens,
        "an integer from 1 to 32768",
    )
    _check(
        _finite(g.temperature) and 0 <= g.temperature <= 10,
        "generation.temperature",
        g.temperature,
        "a number from 0 (greedy) to 10",
    )
    _check(_finite(g.top_p) and 0 < g.top_p <= 1, "generation.top_p", g.top_p, "a number in (0, 1]")
    _check(
        g.seed is None or (isinstance(g.seed, int) and not isinstance(g.seed, bool)),
        "generation.seed",
        g.seed,
        "an integer, or null (sampling draws one)",
    )

    _check(
        isinstance(m.model, str) and m.model.strip() != "",
        "model.model",
        m.model,
        "a hub id (org/name) or a local directory",
    )
    _check(m.revision is None or isinstance(m.revision, str), "model.revision", m.revision, "a branch, tag or commit")
    _check(
        isinstance(m.device, str)
        and (m.device in ("auto", "cpu", "cuda", "mps") or (m.device.startswith("cuda:") and m.device[5:].isdigit())),
        "model.device",
        m.device,
        "auto, cpu, cuda, cuda:N or mps",
    )
    _check(m.dtype in DTYPES, "model.dtype", m.dtype, f"{', '.join(DTYPES)} (or bf16, fp16, fp32)")
    for key in ("offline", "cache", "allow_pickle"):
        _check(isinstance(getattr(m, key), bool), f"model.{key}", getattr(m, key), "true or false")
    _check(m.newline is None or isinstance(m.newline, bool), "model.newline", m.newline, "true, false or null (auto)")
    _check(m.engine in ENGINES, "model.engine", m.engine, " or ".join(ENGINES))
    _check(_count(m.tensor_parallel_size), "model.tensor_parallel_size", m.tensor_parallel_size, "an integer >= 1")
    _check(
        m.gpu_memory_utilization is None or (_finite(m.gpu_memory_utilization) and 0 < m.gpu_memory_utilization <= 1),
        "model.gpu_memory_utilization",
        m.gpu_memory_utilization,
        "a fraction in (0, 1], e.g. 0.8",
    )
    n_ctx = m.max_model_len
    _check(n_ctx is None or _count(n_ctx), "model.max_model_len", n_ctx, "an integer >= 1")
    if m.engine != "vllm":  # a vLLM knob would silently do nothing
        knob = next((k for k in ("tensor_parallel_size", "gpu_memory_utilization", "max_model_len")
                     if getattr(m, k) != getattr(ModelOptions, k)), None)  # fmt: skip
        if knob is not None:
            raise OptionError(
                f"{{0}} is a vLLM setting, but {{1}} is {literal(m.engine)}",
                hint="set {1} to vllm, or drop {0}",
                keys=(f"model.{knob}", "model.engine"),
            )
    return p


def _count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 1

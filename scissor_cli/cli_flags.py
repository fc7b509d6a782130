"""The flags the ``scissor`` commands share, declared once (Typer ``Annotated`` types): ``SHARED`` holds one per
``settings.Overrides`` field, and ``with_overrides`` gives them to ask, inspect, batch, chat and serve. Value-less
flags get an empty metavar (no "<bool>" in --help); options whose default comes from the profile say the built-in
default in their help."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import fields
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperGroup

from scissor_cli.errors import OptionError
from scissor_cli.options import GenerationOptions, ModelOptions, SamplingOptions
from scissor_cli.settings import OVERRIDES, Overrides


def _no_flag_metavars(params: list[Any]) -> list[Any]:
    """Flags take no value, so --help shows nothing after them (not "<bool>", which invites `--json true`)."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class Command(TyperCommand):
    """Usage lines as people write them (``scissor ask [OPTIONS] VIDEO QUESTION``, not ``{video} {question}``)
    and no type noise after flags."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [p[1:-1] if p.startswith("{") and p.endswith("}") else p for p in super().collect_usage_pieces(ctx)]

    def get_params(self, ctx: Any) -> list[Any]:
        return _no_flag_metavars(super().get_params(ctx))


class Group(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _no_flag_metavars(super().get_params(ctx))


# ---------------------------------------------------------------------------------------------------- shared flags
# Declared once (SHARED below gives them to the commands). Value-less flags get an empty metavar (no "<bool>" in
# --help); options whose default comes from the profile say the built-in default in their help.
_C, _S, _G, _M = "Compression", "Frames", "Generation", "Model"
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        metavar="ID|DIR",
        help=f"Hub id or local directory (default {ModelOptions.model}, or SCISSOR_MODEL / the user config's model).",
        rich_help_panel=_M,
    ),
]
RevisionOpt = Annotated[
    str | None, typer.Option("--revision", metavar="REF", help="Hub branch, tag or commit.", rich_help_panel=_M)
]
ProfileOpt = Annotated[
    str | None,
    typer.Option(
        "--profile",
        "-p",
        metavar="NAME|FILE",
        help="Profile name (see `scissor profiles list`) or a path to a YAML file (with a / or ending .yaml).",
        rich_help_panel=_C,
    ),
]
TauOpt = Annotated[
    float | None,
    typer.Option(
        "--tau",
        metavar="T",
        help="Similarity threshold (default: the checkpoint's, else the paper's 0.9; lower merges more). "
        "Not with a budget: a budget searches tau itself.",
        rich_help_panel=_C,
    ),
]
TauTemporalOpt = Annotated[
    float | None,
    typer.Option(
        "--tau-temporal",
        metavar="T",
        help="Separate threshold for the temporal step (default: tau).",
        rich_help_panel=_C,
    ),
]
EpsilonOpt = Annotated[
    float | None,
    typer.Option("--epsilon", metavar="E", help="Sampling tolerance (default: the paper's 0.05).", rich_help_panel=_C),
]
RetentionOpt = Annotated[
    float | None,
    typer.Option(
        "--retention",
        metavar="R",
        help="Budget: keep at most this fraction of the visual tokens, e.g. 0.1 (tau searched per video).",
        rich_help_panel=_C,
    ),
]
TokensOpt = Annotated[
    int | None,
    typer.Option(
        "--tokens", metavar="N", help="Budget: keep at most this many visual tokens (tau searched).", rich_help_panel=_C
    ),
]
NoCompressOpt = Annotated[
    bool, typer.Option("--no-compress", help="Send every visual token to the LLM.", rich_help_panel=_C)
]
FramesOpt = Annotated[
    int | None,
    typer.Option(
        "--frames",
        "-f",
        metavar="N",
        help=f"Frames to sample uniformly, default {SamplingOptions.n_frames} (1 to 4096).",
        rich_help_panel=_S,
    ),
]
FpsOpt = Annotated[
    float | None,
    typer.Option("--fps", metavar="R", help="Sample at this rate instead (capped by --frames).", rich_help_panel=_S),
]
StartOpt = Annotated[
    float | None, typer.Option("--start", metavar="S", help="Window start, seconds (default 0).", rich_help_panel=_S)
]
EndOpt = Annotated[
    float | None,
    typer.Option("--end", metavar="S", help="Window end, seconds (default: the end).", rich_help_panel=_S),
]
MemoryBudgetOpt = Annotated[
    str | None,
    typer.Option(
        "--memory-budget",
        metavar="SIZE",
        help="Most memory one video's decoding and vision step may take: 8G, 512M, or a fraction of the available "
        "memory such as 0.5 (default: 0.5). Larger videos are refused (exit 4).",
        rich_help_panel=_S,
    ),
]
DecodeWorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--decode-workers",
        metavar="N",
        help="Threads splitting a long video's decode (decord); 0 or 1 decodes serially. Default: the cores this "
        "process may use (short or small decodes stay serial).",
        min=0,
        rich_help_panel=_S,
    ),
]
MaxNewOpt = Annotated[
    int | None,
    typer.Option(
        "--max-new-tokens",
        metavar="N",
        help=f"Answer length cap (default {GenerationOptions.max_new_tokens}).",
        rich_help_panel=_G,
    ),
]
TemperatureOpt = Annotated[
    float | None,
    typer.Option(
        "--temperature",
        metavar="T",
        help=f"Sampling temperature, 0 = greedy (default {GenerationOptions.temperature:g}).",
        rich_help_panel=_G,
    ),
]
TopPOpt = Annotated[
    float | None,
    typer.Option(
        "--top-p",
        metavar="P",
        help="Nucleus sampling: draw from the most likely tokens holding this much probability, in (0, 1] "
        f"(default {GenerationOptions.top_p:g}; with --temperature > 0).",
        rich_help_panel=_G,
    ),
]
SeedOpt = Annotated[
    int | None,
    typer.Option("--seed", metavar="N", help="Seeds sampling and SCC's sampled regime.", rich_help_panel=_G),
]
DeviceOpt = Annotated[
    str | None,
    typer.Option(
        "--device",
        metavar="DEV",
        help=f"auto | cpu | cuda | cuda:N | mps (default {ModelOptions.device}).",
        rich_help_panel=_M,
    ),
]
DtypeOpt = Annotated[
    str | None,
    typer.Option(
        "--dtype",
        metavar="TYPE",
        help=f"auto | float32 | bfloat16 | float16, or fp32 | bf16 | fp16 (default {ModelOptions.dtype}: "
        "bf16/fp16 on a GPU; on a CPU bf16 where it has AVX-512 BF16 or AMX, else fp32).",
        rich_help_panel=_M,
    ),
]
OfflineOpt = Annotated[
    bool,
    typer.Option("--offline", help="Never touch the network (like HF_HUB_OFFLINE=1).", rich_help_panel=_M),
]
NoCacheOpt = Annotated[
    bool,
    typer.Option("--no-cache", help="Do not read or write the video-feature cache.", rich_help_panel=_M),
]
NewlineOpt = Annotated[
    bool | None,
    typer.Option(
        "--newline/--no-newline",
        help="Append the image_newline token after the video (default: llava-hf yes, original checkpoints no).",
        rich_help_panel=_M,
        show_default=False,
    ),
]
EngineOpt = Annotated[
    str | None,
    typer.Option(
        "--engine",
        metavar="NAME",
        help="What runs the LLM step: hf (transformers, default) or vllm (needs vLLM; docs/engines.md).",
        rich_help_panel=_M,
    ),
]
TensorParallelOpt = Annotated[
    int | None,
    typer.Option(
        "--tensor-parallel-size",
        metavar="N",
        help="--engine vllm: GPUs the LLM is split over (default 1).",
        rich_help_panel=_M,
    ),  # fmt: skip
]
GpuMemoryOpt = Annotated[
    float | None,
    typer.Option(
        "--gpu-memory-utilization",
        metavar="F",
        help="--engine vllm: fraction of each GPU vLLM may take (default 0.9; leave room for the vision tower).",
        rich_help_panel=_M,
    ),
]
MaxModelLenOpt = Annotated[
    int | None,
    typer.Option(
        "--max-model-len",
        metavar="N",
        help="--engine vllm: the LLM's context (prompt + answer) in vLLM.",
        rich_help_panel=_M,
    ),  # fmt: skip
]

JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout, no markup.")]
VideoArg = Annotated[
    str,
    typer.Argument(
        metavar="VIDEO",
        help="Video file or still image; an http(s):// URL (streamed by ffmpeg); or - to read the video from stdin "
        "(kept in a temporary file while it runs).",
        show_default=False,
    ),
]


SweepRetentionOpt = Annotated[
    str | None,
    typer.Option(
        "--retention",
        help="Budget: keep at most this fraction of the visual tokens; a comma list sweeps it (1 = uncompressed), "
        "e.g. 1,0.5,0.35,0.1,0.05.",
        rich_help_panel=_C,
        metavar="R[,R...]",
    ),
]
SweepTokensOpt = Annotated[
    str | None,
    typer.Option(
        "--tokens",
        help="Budget: keep at most this many visual tokens; a comma list sweeps it.",
        rich_help_panel=_C,
        metavar="N[,N...]",
    ),
]
SweepTauOpt = Annotated[
    str | None,
    typer.Option(
        "--tau",
        help="Similarity threshold (paper 0.9); a comma list sweeps it.",
        rich_help_panel=_C,
        metavar="T[,T...]",
    ),
]
PromptOpt = Annotated[
    str | None,
    typer.Option(
        "--prompt",
        help="Multiple-choice prompt preset: default | videomme | mvbench | egoschema | nextqa | plain "
        "(lmms-eval's templates; a manifest row's prompt field wins).",
        metavar="PRESET",
    ),
]


SWEEP_TAUS = (0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.92, 0.94, 0.96, 0.98)

# `scissor serve` only
HostOpt = Annotated[
    str,
    typer.Option("--host", metavar="HOST", help="Address to listen on; beyond loopback only with an API key."),
]
PortOpt = Annotated[int, typer.Option("--port", metavar="PORT", help="Port to listen on (0: any free port).")]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="SCISSOR_API_KEY",
        show_envvar=True,
        metavar="KEY",
        help="Every endpoint but /health then needs Authorization: Bearer KEY.",
    ),
]
AllowFilesOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--allow-files",
        metavar="DIR",
        help="Local videos (file:// or absolute paths) may be read from this directory (repeatable); "
        "without it none are.",
    ),
]
NoUrlsOpt = Annotated[bool, typer.Option("--no-urls", help="Refuse http(s) video URLs (never fetch).")]
UrlTimeoutOpt = Annotated[
    float, typer.Option("--url-timeout", metavar="S", help="Time limit of one video download, seconds.")
]
MaxVideoMbOpt = Annotated[
    float,
    typer.Option("--max-video-mb", metavar="MB", help="Size limit of a downloaded or data: URL video."),
]
MaxBatchOpt = Annotated[
    int, typer.Option("--max-batch", metavar="N", help="Waiting requests answered by one generate call.")
]
MaxQueueOpt = Annotated[int, typer.Option("--max-queue", metavar="N", help="Requests in flight; more get 503 at once.")]
ServedModelNameOpt = Annotated[
    str | None,
    typer.Option("--served-model-name", metavar="NAME", help="The model id clients send (default: --model)."),
]

# The flag of each settings.Overrides field; with_overrides gives them to a command, in this order.
SHARED: dict[str, Any] = {
    "profile": ProfileOpt,
    "model": ModelOpt,
    "revision": RevisionOpt,
    "tau": TauOpt,
    "tau_temporal": TauTemporalOpt,
    "epsilon": EpsilonOpt,
    "retention": RetentionOpt,
    "tokens": TokensOpt,
    "no_compress": NoCompressOpt,
    "frames": FramesOpt,
    "fps": FpsOpt,
    "start": StartOpt,
    "end": EndOpt,
    "memory_budget": MemoryBudgetOpt,
    "decode_workers": DecodeWorkersOpt,  # not an override (not a profile setting): placed here when a command has it
    "max_new_tokens": MaxNewOpt,
    "temperature": TemperatureOpt,
    "top_p": TopPOpt,
    "seed": SeedOpt,
    "device": DeviceOpt,
    "dtype": DtypeOpt,
    "offline": OfflineOpt,
    "no_cache": NoCacheOpt,
    "newline": NewlineOpt,
    "engine": EngineOpt,
    "tensor_parallel_size": TensorParallelOpt,
    "gpu_memory_utilization": GpuMemoryOpt,
    "max_model_len": MaxModelLenOpt,
}

ENGINE_FLAGS = ("engine", "tensor_parallel_size", "gpu_memory_utilization", "max_model_len")  # inspect runs no LLM

# inspect and batch: these three also take a comma list, a sweep of its levels
SWEEP: dict[str, Any] = {"tau": SweepTauOpt, "retention": SweepRetentionOpt, "tokens": SweepTokensOpt}


def with_overrides(
    *, skip: tuple[str, ...] = (), sweep: bool = False
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A command takes the shared flags (``SHARED``, all but ``skip``) without listing them: the decorated function
    declares ``overrides: Overrides`` and gets them packed into it. Typer's own pattern: the wrapper's
    ``__signature__`` is the command's parameters plus the shared flags (typer reads it, and the annotations, to
    build the options). A parameter the command declares under a ``SHARED`` name is its own (the
    ``--decode-workers`` it passes on) and stands at that name's place in --help.

    ``sweep``: ``--tau``, ``--retention`` and ``--tokens`` take comma lists (``SWEEP``); the function also gets
    ``levels``, the ``sweep.Sweep`` of the one list given (or None), and ``overrides`` the single values."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        kw = inspect.Parameter.KEYWORD_ONLY
        given = ("overrides", "levels")  # what the wrapper passes: not flags
        own = [p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.name not in given]
        placed = {p.name: p.replace(kind=kw) for p in own if p.name in SHARED}
        taken = tuple(n for n in OVERRIDES if n not in skip and n not in placed)
        defaults = {f.name: f.default for f in fields(Overrides)}
        flags = {**SHARED, **SWEEP} if sweep else SHARED
        shared = {n: inspect.Parameter(n, kw, default=defaults[n], annotation=flags[n]) for n in taken}
        params = [p for p in own if p.name not in SHARED] + [
            placed.get(n) or shared[n] for n in SHARED if n in placed or n in shared
        ]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            values = {n: kwargs.pop(n) for n in taken}
            if sweep:
                from scissor_cli.sweep import sweep_from_flags

                levels, singles = sweep_from_flags(values["retention"], values["tokens"], values["tau"])
                if levels is not None and values["no_compress"]:
                    raise OptionError(f"--no-compress contradicts the --{levels.axis} sweep", hint="drop one of them")
                values.update(singles)
                kwargs["levels"] = levels
            return fn(*args, overrides=Overrides(**values), **kwargs)

        del wrapper.__wrapped__  # typer reads the signature below, not fn's
        wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        wrapper.overrides = taken  # type: ignore[attr-defined]  # the shared flags it takes (the --help test's list)
        return wrapper

    return decorate

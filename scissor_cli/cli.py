"""The ``scissor`` command line: a thin adapter over the library.

Each command parses flags, resolves the profile (built-in defaults < profile < flags), calls one library function
and hands the result to ``render``. torch, transformers and decord are imported inside command bodies only, so
``scissor --help``, ``scissor profiles list`` and ``scissor version`` stay fast.

Ctrl-C and a closed stdout are handled here, the way Unix tools do: one ``interrupted`` line and exit 130 at any
moment; a reader that goes away (``| head -1``) ends the command quietly with exit 0.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time

_IMPORTED_AT = time.perf_counter()  # ~ process start when run as `scissor` (the interpreter's start-up aside)
# Ctrl-C state: "raise" is False until main() runs: an interrupt during the imports below has nothing to clean up,
# so the handler exits on the spot (a KeyboardInterrupt there would escape as a traceback from the import line).
_sigint = {"seen": False, "reported": False, "raise": False, "main": False}


def _on_sigint(signum: int, frame: object) -> None:
    if _sigint["seen"] or not _sigint["raise"]:  # during imports, or a second Ctrl-C while the first unwinds
        if not _sigint["reported"]:
            _sigint["reported"] = True
            os.write(2, b"interrupted\n")
        os._exit(130)
    _sigint["seen"] = True
    raise KeyboardInterrupt


def _running_as_command() -> bool:
    """This process is the `scissor` command (console script or python -m scissor_cli), not a library user."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return os.path.basename(sys.argv[0] or "") in ("scissor", "scissor.exe") or (
        getattr(spec, "name", None) == "scissor_cli.__main__"
    )


if _running_as_command() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _on_sigint)

import functools  # noqa: E402 - after the handler, so Ctrl-C while typer and rich import is one clean line
from collections.abc import Callable  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING, Annotated, Any, TypeVar  # noqa: E402

import typer  # noqa: E402
from typer.core import TyperCommand, TyperGroup  # noqa: E402

from scissor_cli import render  # noqa: E402
from scissor_cli.errors import Interrupted, OptionError, ScissorError  # noqa: E402
from scissor_cli.options import (  # noqa: E402
    GenerationOptions,
    ModelOptions,
    Profile,
    SamplingOptions,
    normalize_dtype,
    with_flag_names,
)

if TYPE_CHECKING:
    from scissor_cli.config import UserConfig


def _no_flag_metavars(params: list[Any]) -> list[Any]:
    """Flags take no value, so --help shows nothing after them (not "<bool>", which invites `--json true`)."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class _Command(TyperCommand):
    """Usage lines as people write them (``scissor ask [OPTIONS] VIDEO QUESTION``, not ``{video} {question}``)
    and no type noise after flags."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [p[1:-1] if p.startswith("{") and p.endswith("}") else p for p in super().collect_usage_pieces(ctx)]

    def get_params(self, ctx: Any) -> list[Any]:
        return _no_flag_metavars(super().get_params(ctx))


class _Group(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _no_flag_metavars(super().get_params(ctx))


def _print_version(value: bool) -> None:
    if value:
        from scissor_cli.config import versions

        render.version(versions())
        raise typer.Exit()


app = typer.Typer(
    name="scissor",
    help="Ask questions about videos with LLaVA-OneVision, compressing visual tokens with LLaVA-Scissor (SCC).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    cls=_Group,
)
profiles_app = typer.Typer(
    help="List and show the YAML profiles (tau/epsilon/budget presets).", no_args_is_help=True, cls=_Group
)
app.add_typer(profiles_app, name="profiles")
cache_app = typer.Typer(help="The on-disk cache of encoded video features.", no_args_is_help=True, cls=_Group)
app.add_typer(cache_app, name="cache")


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the versions and exit.", is_eager=True, callback=_print_version),
    ] = False,
) -> None:
    """Ask questions about videos with LLaVA-OneVision, compressing visual tokens with LLaVA-Scissor (SCC)."""


F = TypeVar("F", bound=Callable[..., Any])


def _debug() -> bool:
    return os.environ.get("SCISSOR_DEBUG", "").strip() not in ("", "0", "false", "no")


def _report_interrupt(message: str | None = None) -> None:
    if not _sigint["reported"]:
        _sigint["reported"] = True
        render.interrupted(message)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot raise EPIPE again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # not a real file (tests' CliRunner): nothing will flush to a pipe
        pass


def _stdout_is_devnull() -> bool:
    try:
        return os.path.samestat(os.fstat(sys.__stdout__.fileno()), os.stat(os.devnull))
    except (AttributeError, OSError, ValueError):
        return False


def _stdout_reader_gone(was_devnull: bool) -> bool:
    """stdout was a pipe whose reader closed it: poll reports POLLERR on its write end, or rich has already
    pointed it at /dev/null (its own broken-pipe handling, which then exits 1)."""
    import select

    if not was_devnull and _stdout_is_devnull():
        return True
    try:
        poller = select.poll()
        poller.register(sys.__stdout__.fileno(), 0)  # no events asked: errors and hang-ups are always reported
        return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return False


_command_clock = {"start": _IMPORTED_AT}


def handle_errors(fn: F) -> F:
    """The one error seam: ScissorError -> one line + hint, the class's exit code; tracebacks only when debugging.

    After a Ctrl-C, whatever ends the command (a KeyboardInterrupt, batch's Interrupted, or an error it caused,
    such as an ffmpeg child killed by the same Ctrl-C) ends it as one ``interrupted`` line with exit 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not _sigint["main"]:  # in-process (tests): time the command, not the test session
            _command_clock["start"] = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except render.StdoutClosed:
            _quiet_stdout()
            raise typer.Exit(0) from None
        except Interrupted as e:
            if _debug():
                render.err.print_exception()
            _report_interrupt(e.message)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            if _debug():
                render.err.print_exception()
            _report_interrupt()
            raise typer.Exit(130) from None
        except ScissorError as e:
            if _debug():
                render.err.print_exception()
            if _sigint["seen"]:
                _report_interrupt()
                raise typer.Exit(130) from None
            render.error(e)
            raise typer.Exit(e.exit_code) from None
        except Exception as e:
            if _debug():
                raise
            if _sigint["seen"]:
                _report_interrupt()
                raise typer.Exit(130) from None
            render.internal_error(e)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------- shared flags
# Declared once, used by ask, inspect and batch. Value-less flags get an empty metavar (no "<bool>" in --help);
# options whose default comes from the profile say the built-in default in their help.
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
        help=f"Frames sampled uniformly, 1 to 4096 (default {SamplingOptions.n_frames}).",
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
        "bf16/fp16 on a GPU, fp32 on a CPU).",
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
    max_new_tokens: int | None = None,
    temperature: float | None = None,
    seed: int | None = None,
    device: str | None = None,
    dtype: str | None = None,
    offline: bool = False,
    no_cache: bool = False,
    newline: bool | None = None,
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
            sampling={"n_frames": frames, "fps": fps, "start": start, "end": end},
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
            },
        )
    except OptionError as e:  # the profile was valid on its own, so the value came from a flag: name the flag
        raise with_flag_names(e) from e


SHARED_FLAGS = frozenset(
    ("model", "revision", "tau", "tau_temporal", "epsilon", "retention", "tokens", "no_compress", "frames", "fps",
     "start", "end", "max_new_tokens", "temperature", "seed", "device", "dtype", "offline", "no_cache", "newline")
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


_warned: set[str] = set()


def warn_slow_dtype(vlm: Any) -> None:
    """Once per process: half precision on a CPU is emulated, several times slower than float32."""
    dtype = str(getattr(vlm, "dtype", "")).removeprefix("torch.")
    device = getattr(getattr(vlm, "device", None), "type", str(getattr(vlm, "device", "")))
    if device == "cpu" and dtype in ("bfloat16", "float16") and "dtype" not in _warned:
        _warned.add("dtype")
        render.warn(f"{dtype} on a CPU is slower than float32 (no native half-precision kernels); --dtype float32")


def _load(profile: Profile, on_status: Callable[[str], None]) -> tuple[Any, float]:
    """The model and the seconds it took, imports (torch, transformers) included."""
    t0 = time.perf_counter()
    from scissor_cli.model import load_model

    on_status(f"loading {profile.model.model}")
    vlm = load_model(profile.model, on_status=on_status)
    load_s = time.perf_counter() - t0
    warn_slow_dtype(vlm)
    return vlm, load_s


def _timings(load_s: float) -> dict[str, float]:
    """load and total seconds for the time line and timings_s (total: since the command started)."""
    return {"load": round(load_s, 4), "total": round(time.perf_counter() - _command_clock["start"], 4)}


# ---------------------------------------------------------------------------------------------------- commands
@app.command(
    cls=_Command,
    epilog="""[bold]Examples[/]

  scissor ask samples/bigbuckbunny.mp4 "What is happening?"

  scissor ask clip.mp4 "What is the man holding?" -q "Where is he?" --profile r10

  scissor ask clip.mp4 "Describe the video." --retention 0.35 --frames 16 --json""",
)
@handle_errors
def ask(
    video: VideoArg,
    question: Annotated[
        str, typer.Argument(metavar="QUESTION", help="What to ask about the video.", show_default=False)
    ],
    more: Annotated[
        list[str] | None,
        typer.Option(
            "--question", "-q", metavar="TEXT", help="Another question (repeatable); the video is encoded once."
        ),
    ] = None,
    timestamps: Annotated[bool, typer.Option("--timestamps", help="Show the sampled frames' timestamps.")] = False,
    json_out: JsonOpt = False,
    profile: ProfileOpt = None,
    model: ModelOpt = None,
    revision: RevisionOpt = None,
    tau: TauOpt = None,
    tau_temporal: TauTemporalOpt = None,
    epsilon: EpsilonOpt = None,
    retention: RetentionOpt = None,
    tokens: TokensOpt = None,
    no_compress: NoCompressOpt = False,
    frames: FramesOpt = None,
    fps: FpsOpt = None,
    start: StartOpt = None,
    end: EndOpt = None,
    max_new_tokens: MaxNewOpt = None,
    temperature: TemperatureOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    offline: OfflineOpt = False,
    no_cache: NoCacheOpt = False,
    newline: NewlineOpt = None,
) -> None:
    """Answer questions about a video, and show what the compression did."""
    p = profile_from_flags(locals())
    questions = [question, *(more or [])]
    if any(not q.strip() for q in questions):
        raise OptionError("a question is empty", hint='ask something, e.g. "What is happening?"')
    from scissor_cli import video as video_io

    # a bad path or URL fails here, before minutes of model loading; stdin (-) is spooled for the block
    with video_io.opened(video) as info, render.stages() as on_status:
        vlm, load_s = _load(p, on_status)
        from scissor_cli.pipeline import answer

        results = answer(vlm, video, questions, p, on_status=on_status, info=info)
    timings = _timings(load_s)
    results = [replace(a, timings_s={**a.timings_s, **timings}) for a in results]
    if json_out:
        for a in results:
            render.write_json(a.to_dict())
    else:
        render.answers(results, show_timestamps=timestamps)


# inspect and batch take comma lists for these three (a sweep); ask keeps the plain number flags
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


@app.command(
    cls=_Command,
    epilog="""[bold]Examples[/]

  scissor inspect clip.mp4 --video-only

  scissor inspect clip.mp4 --sweep

  scissor inspect clip.mp4 --profile r10 --viz tokens.png --json""",
)
@handle_errors
def inspect(
    video: VideoArg,
    video_only: Annotated[
        bool, typer.Option("--video-only", help="Only metadata and the frame plan; no model.")
    ] = False,
    sweep: Annotated[
        bool,
        typer.Option(
            "--sweep",
            help="Token counts across a range of tau, from one encoding; or across the levels of a --tau, "
            "--retention or --tokens comma list.",
        ),
    ] = False,
    viz: Annotated[
        Path | None,
        typer.Option(
            "--viz",
            metavar="FILE.png",
            help="Write a PNG: the sampled frames, each patch coloured by the kept token it merged into.",
        ),
    ] = None,
    json_out: JsonOpt = False,
    profile: ProfileOpt = None,
    model: ModelOpt = None,
    revision: RevisionOpt = None,
    tau: SweepTauOpt = None,
    tau_temporal: TauTemporalOpt = None,
    epsilon: EpsilonOpt = None,
    retention: SweepRetentionOpt = None,
    tokens: SweepTokensOpt = None,
    no_compress: NoCompressOpt = False,
    frames: FramesOpt = None,
    fps: FpsOpt = None,
    start: StartOpt = None,
    end: EndOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    offline: OfflineOpt = False,
    no_cache: NoCacheOpt = False,
) -> None:
    """Report a video's metadata, frame plan and token counts per SCC step, without running the language model."""
    from scissor_cli.batch import sweep_from_flags

    levels, singles = sweep_from_flags(retention, tokens, tau)  # a comma list sweeps its levels
    if levels is not None and no_compress:
        raise OptionError(f"--no-compress contradicts the --{levels.axis} sweep", hint="drop one of them")
    p = profile_from_flags({**locals(), **singles})
    sweep = sweep or levels is not None
    if video_only and (sweep or viz):
        raise OptionError("--sweep and --viz need the model", hint="drop --video-only")
    if viz is not None and viz.suffix.lower() != ".png":
        raise OptionError(f"--viz {viz} must end in .png", hint="e.g. --viz tokens.png")
    if viz is not None and not viz.resolve().parent.is_dir():
        raise OptionError(f"--viz: folder {viz.resolve().parent} does not exist", hint="create it or pick another path")
    if viz is not None and not os.access(viz.resolve().parent, os.W_OK):
        raise OptionError(f"--viz: folder {viz.resolve().parent} is not writable", hint="pick another path")
    from scissor_cli import video as video_io
    from scissor_cli.pipeline import inspect_video

    with video_io.opened(video) as info, render.stages() as on_status:
        vlm, load_s = (None, 0.0) if video_only else _load(p, on_status)
        taus = None if not sweep or (levels and levels.axis != "tau") else (levels.values if levels else SWEEP_TAUS)
        budgets = levels.values if levels and levels.axis != "tau" else None
        result = inspect_video(vlm, video, p, sweep_taus=taus, on_status=on_status, info=info, sweep_budgets=budgets)
        if viz is not None and result.compressed is not None:
            from scissor_cli.viz import token_map

            on_status("drawing the token map")
            token_map(viz, video, result)
    timings = None if vlm is None else _timings(load_s)
    if viz is not None:
        render.written("token map", str(viz))
    if json_out:
        data = result.to_dict()
        if timings is not None:
            data["timings_s"].update(timings)
        if viz is not None:
            data["viz"] = str(viz)
        render.write_json(data)
    else:
        render.inspection(result, timings)


@app.command(
    cls=_Command,
    epilog="""[bold]Examples[/]

  scissor batch videos/ -q "What is happening?" -q "Who is there?" -o results.jsonl

  scissor batch --manifest jobs.jsonl -o results.jsonl --profile r10

  scissor batch --manifest jobs.jsonl -o sweep.jsonl --retention 1,0.5,0.35,0.1,0.05 --prompt videomme

  torchrun --nproc_per_node 4 -m scissor_cli batch --manifest jobs.csv -o results.jsonl""",
)
@handle_errors
def batch(
    paths: Annotated[
        list[str] | None, typer.Argument(metavar="PATH", help="Video files and folders (searched recursively).")
    ] = None,
    question: Annotated[
        list[str] | None,
        typer.Option(
            "--question",
            "-q",
            help="Asked of every video (with PATH arguments); repeat it: every question, every video.",
        ),
    ] = None,
    manifest: Annotated[
        str | None,
        typer.Option(
            "--manifest",
            help="One job per row: .jsonl, .json (array), .csv or .tsv with video, question, optional id, options, "
            "answer.",
        ),
    ] = None,
    output: Annotated[
        str,
        typer.Option(
            "--output", "-o", help="JSONL results, appended as jobs finish (resumable); - streams them to stdout."
        ),
    ] = "results.jsonl",
    glob: Annotated[str | None, typer.Option("--glob", help="Only files matching this pattern, e.g. '*.mp4'.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start fresh instead of resuming.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Questions per generate call.", min=1)] = 4,
    decode_workers: Annotated[
        int | None,
        typer.Option(
            "--decode-workers",
            help="Processes decoding the next videos while the model works; 0 decodes inline. "
            "Default: the cores this process may use, minus one (1 to 8).",
            min=0,
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", help="No progress on stderr (errors and the summary stay).")
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="The final summary as JSON on stdout (the summary file's fields + this_run).")
    ] = False,
    prompt: PromptOpt = None,
    profile: ProfileOpt = None,
    model: ModelOpt = None,
    revision: RevisionOpt = None,
    tau: SweepTauOpt = None,
    tau_temporal: TauTemporalOpt = None,
    epsilon: EpsilonOpt = None,
    retention: SweepRetentionOpt = None,
    tokens: SweepTokensOpt = None,
    no_compress: NoCompressOpt = False,
    frames: FramesOpt = None,
    fps: FpsOpt = None,
    start: StartOpt = None,
    end: EndOpt = None,
    max_new_tokens: MaxNewOpt = None,
    temperature: TemperatureOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    offline: OfflineOpt = False,
    no_cache: NoCacheOpt = False,
    newline: NewlineOpt = None,
) -> None:
    """Answer questions about many videos with the model loaded once; resumable JSONL output."""
    from scissor_cli import batch as batch_mod
    from scissor_cli import jobs as jobs_mod
    from scissor_cli.prefetch import default_decode_workers
    from scissor_cli.scoring import PROMPT_PRESETS

    sweep, singles = batch_mod.sweep_from_flags(retention, tokens, tau)
    if sweep is not None and no_compress:
        raise OptionError(f"--no-compress contradicts the --{sweep.axis} sweep", hint="drop one of them")
    p = profile_from_flags({**locals(), **singles})
    if prompt is not None and prompt not in PROMPT_PRESETS:
        raise OptionError(f"--prompt {prompt}: no such preset", hint=f"use one of: {', '.join(PROMPT_PRESETS)}")

    if manifest and paths:
        raise OptionError("give video paths or --manifest, not both", hint="put every job in the manifest")
    if json_out and output == batch_mod.STDOUT:
        raise OptionError(
            "--json and -o - both write to stdout", hint="drop --json: with -o - the summary goes to stderr"
        )
    if manifest:
        if question:
            raise OptionError(
                "--question goes with video paths, not --manifest", hint="put the questions in the manifest"
            )
        jobs = jobs_mod.jobs_from_manifest(manifest)
    elif paths:
        if not question:
            raise OptionError("--question is required with video paths", hint='e.g. -q "What is happening?"')
        jobs = jobs_mod.jobs_from_paths(paths, question, glob=glob)
    else:
        raise OptionError("nothing to do: give video files/folders or --manifest", hint="see `scissor batch --help`")

    shard_profile = batch_mod.shard_device(p)

    def load() -> Any:
        from scissor_cli.model import load_model

        vlm = load_model(shard_profile.model)
        warn_slow_dtype(vlm)
        return vlm

    if output == batch_mod.STDOUT and not quiet:
        render.batch_to_stdout()
    with render.BatchProgress(quiet=quiet) as view:
        summary = batch_mod.run_batch(
            load, jobs, output, shard_profile, overwrite=overwrite, batch_size=batch_size, view=view,
            inputs=[manifest] if manifest else [], sweep=sweep, prompt=prompt,
            decode_workers=default_decode_workers() if decode_workers is None else decode_workers,
        )  # fmt: skip
    if summary.rank == 0:  # under torchrun/accelerate, rank 0's summary covers every rank's jobs
        if json_out:
            render.write_json(summary.to_dict())
        else:
            render.batch_summary(summary, to_stderr=output == batch_mod.STDOUT)
    if summary.n_failed:
        raise typer.Exit(1)


@app.command(
    cls=_Command,
    epilog="""[bold]Examples[/]

  scissor report sweep.jsonl

  scissor report r10.jsonl r35.jsonl off.jsonl --by profile --format markdown

  scissor report sweep.jsonl --format csv > table.csv --plot sweep.png""",
)
@handle_errors
def report(
    results: Annotated[list[str], typer.Argument(help="JSONL outputs of scissor batch (sweeps or separate runs).")],
    by: Annotated[
        str, typer.Option("--by", help="One row per level (retention/tokens/tau) or per profile (configuration).")
    ] = "level",
    fmt: Annotated[
        str, typer.Option("--format", help="table (rich, the default) | markdown | csv | json, on stdout.")
    ] = "table",
    plot: Annotated[
        str | None,
        typer.Option(
            "--plot",
            help="Also draw accuracy and visual tokens / TFLOPs vs retention into this .png (.pdf, .svg); needs "
            "matplotlib (pip install 'scissor-cli[plot]').",
        ),
    ] = None,
) -> None:
    """Tabulate accuracy, retention, visual tokens, TFLOPs and time per level from batch outputs (no model)."""
    from scissor_cli import report as report_mod

    if fmt not in report_mod.FORMATS:
        raise OptionError(f"--format {fmt}: unknown format", hint=f"use one of: {', '.join(report_mod.FORMATS)}")
    if by not in report_mod.GROUP_BY:
        raise OptionError(f"--by {by}: cannot group by that", hint=f"use one of: {', '.join(report_mod.GROUP_BY)}")
    if plot is not None:
        report_mod.check_plot_path(plot)  # before reading: a missing matplotlib fails at once
    table = report_mod.build_report(report_mod.read_results(results), by=by, files=results)
    if fmt == "json":
        render.write_json(report_mod.to_json(table))
    elif fmt == "markdown":
        render.write_text(report_mod.to_markdown(table))
    elif fmt == "csv":
        render.write_text(report_mod.to_csv(table))
    else:
        render.report_table(table)
    if plot is not None:
        report_mod.plot(table, plot)
        render.note(f"plot written to {plot}")


@profiles_app.command("list", cls=_Command)
@handle_errors
def profiles_list(json_out: JsonOpt = False) -> None:
    """List built-in and user profiles."""
    from scissor_cli.profiles import list_profiles

    render.profile_list(list_profiles(), as_json=json_out)


@profiles_app.command(
    "show",
    cls=_Command,
    epilog="Examples:  scissor profiles show r10   |   scissor profiles show r10 > my.yaml   |   "
    "scissor profiles show ./my.yaml",
)
@handle_errors
def profiles_show(
    name: Annotated[
        str,
        typer.Argument(metavar="NAME|FILE", help="Profile name or path to a YAML file.", show_default=False),
    ],
) -> None:
    """Print a profile as YAML that --profile accepts unchanged: every setting, with what auto/null means."""
    from scissor_cli.config import load_config
    from scissor_cli.profiles import find_profile, is_path, list_profiles, load_profile, profile_yaml

    config = load_config()
    path = find_profile(name)
    source = str(path)
    if not is_path(name):
        source = next((f"{e.source}: {e.path}" for e in list_profiles() if e.path == path), source)
    text = profile_yaml(load_profile(name, base=config.base_profile()), source)
    if config.path is not None or config.env_model:
        text = f"# values this profile leaves unset come from {config.path or 'SCISSOR_MODEL'}\n" + text
    render.profile_detail(text)


@cache_app.command("info", cls=_Command)
@handle_errors
def cache_info(json_out: JsonOpt = False) -> None:
    """Where the feature cache is, how full, and its size bound (SCISSOR_CACHE_DIR, SCISSOR_CACHE_MAX_GB)."""
    from scissor_cli.cache import FeatureCache
    from scissor_cli.config import apply_cache_dir, load_config

    apply_cache_dir(load_config())
    cache = FeatureCache()
    render.cache_info(str(cache.root), len(cache.entries()), cache.size_bytes(), cache.max_bytes, as_json=json_out)


@cache_app.command("clear", cls=_Command)
@handle_errors
def cache_clear() -> None:
    """Delete every cached video encoding."""
    from scissor_cli.cache import FeatureCache
    from scissor_cli.config import apply_cache_dir, load_config

    apply_cache_dir(load_config())
    cache = FeatureCache()
    render.cache_cleared(str(cache.root), cache.clear())


@app.command(cls=_Command)
@handle_errors
def version(json_out: JsonOpt = False) -> None:
    """Print scissor's version, Python's and its main dependencies' (without importing them)."""
    from scissor_cli.config import versions

    render.version(versions(), as_json=json_out)


@app.command(cls=_Command, epilog="Examples:  scissor doctor   |   scissor doctor --json")
@handle_errors
def doctor(json_out: JsonOpt = False) -> None:
    """Check the environment: versions, CUDA and GPU memory, ffmpeg, caches, offline mode, the user config."""
    from scissor_cli.config import environment_report

    render.doctor(environment_report(), as_json=json_out)


@contextlib.contextmanager
def _ctrl_c_stops_answers(session: Any) -> Any:
    """A chat on a terminal: Ctrl-C during an answer stops that answer (a second one abandons it at once); at
    the prompt it discards the line. Either way the session goes on (Ctrl-D or /quit ends it)."""

    def on_sigint(signum: int, frame: object) -> None:
        if session.generating and not session.stop_requested():
            session.request_stop()
            return
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not the main thread: leave Ctrl-C as it is
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _chat_history_file() -> str:
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "scissor", "chat_history")


@app.command(
    cls=_Command,
    epilog="""[bold]Examples[/]

  scissor chat samples/bigbuckbunny.mp4

  scissor chat clip.mp4 --profile r10 --frames 16

  printf 'What happens?\\n/retention 0.1\\nAnd then?\\n' | scissor chat clip.mp4 --json""",
)
@handle_errors
def chat(
    video: Annotated[
        str,
        typer.Argument(
            metavar="VIDEO",
            help="Video file or still image, or an http(s):// URL (stdin carries the questions).",
            show_default=False,
        ),
    ],
    no_history: Annotated[
        bool,
        typer.Option("--no-history", help="Answer each question on its own (the same answers as `scissor ask`)."),
    ] = False,
    json_out: Annotated[
        bool, typer.Option("--json", help="One JSON object per answered question: ask --json's fields plus turn.")
    ] = False,
    profile: ProfileOpt = None,
    model: ModelOpt = None,
    revision: RevisionOpt = None,
    tau: TauOpt = None,
    tau_temporal: TauTemporalOpt = None,
    epsilon: EpsilonOpt = None,
    retention: RetentionOpt = None,
    tokens: TokensOpt = None,
    no_compress: NoCompressOpt = False,
    frames: FramesOpt = None,
    fps: FpsOpt = None,
    start: StartOpt = None,
    end: EndOpt = None,
    max_new_tokens: MaxNewOpt = None,
    temperature: TemperatureOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    offline: OfflineOpt = False,
    no_cache: NoCacheOpt = False,
    newline: NewlineOpt = None,
) -> None:
    """Talk about one video: the model and the video's tokens are loaded once, then ask question after question.

    On a terminal: line editing and history, answers streamed, /help for the commands (/retention, /tokens, /tau,
    /off re-compress without the vision tower; /frames, /stats, /reset, /video, /save, /quit). With stdin a pipe:
    one question or command per line, each answer on stdout."""
    p = profile_from_flags(locals())
    from scissor_cli import chat as chat_mod

    info = chat_mod.probe_video(video)  # a bad path or URL fails here, before the model loads
    interactive = sys.stdin.isatty()
    with render.stages() as on_status:
        vlm, load_s = _load(p, on_status)
        session = chat_mod.ChatSession(vlm, p, history=not no_history, load_s=load_s)
        stats = session.open(video, on_status=on_status, info=info)
    render.chat_stats(stats)
    on_text = None if json_out else render.chat_text
    exit_code = 0
    if interactive:
        render.chat_intro()
    with _ctrl_c_stops_answers(session) if interactive else contextlib.nullcontext():
        for line in render.chat_lines(interactive, _chat_history_file() if interactive else None):
            try:
                is_command = line.strip().startswith("/")  # a question streams its answer: no progress display
                with render.stages() if is_command else contextlib.nullcontext() as on_status:
                    reply = chat_mod.handle(session, line, on_text=on_text, on_status=on_status)
            except ScissorError as e:
                render.error(e)
                exit_code = e.exit_code
                continue
            except KeyboardInterrupt:
                if not interactive:
                    raise
                render.chat_stopped("\ninterrupted: that step left nothing behind; the session goes on")
                continue
            if isinstance(reply, chat_mod.Quit):
                break
            if isinstance(reply, chat_mod.Turn):
                render.chat_turn(reply, as_json=json_out, streamed=on_text is not None)
            elif isinstance(reply, chat_mod.Change):
                render.chat_change(reply)
            elif isinstance(reply, chat_mod.Stats):
                render.chat_stats(reply)
            elif isinstance(reply, chat_mod.Reset):
                render.chat_reset(reply.n_forgotten)
            elif isinstance(reply, chat_mod.Saved):
                render.written(f"transcript ({reply.n_turns} turns)", reply.path)
            elif isinstance(reply, chat_mod.Help):
                render.chat_help(reply.commands)
    if exit_code and not interactive:  # a script learns that a line failed (the others were answered)
        raise typer.Exit(exit_code)


@app.command(
    cls=_Command,
    epilog="""[bold]Examples[/]

  scissor serve --allow-files ~/videos

  scissor serve --profile r10 --frames 16 --max-batch 16

  SCISSOR_API_KEY=secret scissor serve --host 0.0.0.0 --port 8000""",
)
@handle_errors
def serve(
    host: Annotated[
        str,
        typer.Option("--host", metavar="HOST", help="Address to listen on; beyond loopback only with an API key."),
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", metavar="PORT", help="Port to listen on (0: any free port).")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="SCISSOR_API_KEY",
            show_envvar=True,
            metavar="KEY",
            help="Every endpoint but /health then needs Authorization: Bearer KEY.",
        ),
    ] = None,
    allow_files: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-files",
            metavar="DIR",
            help="Local videos (file:// or absolute paths) may be read from this directory (repeatable); "
            "without it none are.",
        ),
    ] = None,
    no_urls: Annotated[bool, typer.Option("--no-urls", help="Refuse http(s) video URLs (never fetch).")] = False,
    url_timeout: Annotated[
        float, typer.Option("--url-timeout", metavar="S", help="Time limit of one video download, seconds.")
    ] = 30.0,
    max_video_mb: Annotated[
        float,
        typer.Option("--max-video-mb", metavar="MB", help="Size limit of a downloaded or data: URL video."),
    ] = 512.0,
    max_batch: Annotated[
        int, typer.Option("--max-batch", metavar="N", help="Waiting requests answered by one generate call.")
    ] = 8,
    max_queue: Annotated[
        int, typer.Option("--max-queue", metavar="N", help="Requests in flight; more get 503 at once.")
    ] = 64,
    served_model_name: Annotated[
        str | None,
        typer.Option("--served-model-name", metavar="NAME", help="The model id clients send (default: --model)."),
    ] = None,
    profile: ProfileOpt = None,
    model: ModelOpt = None,
    revision: RevisionOpt = None,
    tau: TauOpt = None,
    tau_temporal: TauTemporalOpt = None,
    epsilon: EpsilonOpt = None,
    retention: RetentionOpt = None,
    tokens: TokensOpt = None,
    no_compress: NoCompressOpt = False,
    frames: FramesOpt = None,
    fps: FpsOpt = None,
    start: StartOpt = None,
    end: EndOpt = None,
    max_new_tokens: MaxNewOpt = None,
    temperature: TemperatureOpt = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    offline: OfflineOpt = False,
    no_cache: NoCacheOpt = False,
    newline: NewlineOpt = None,
) -> None:
    """Serve an OpenAI-compatible API (/v1/chat/completions with video_url parts), the model loaded once.

    The compression and frame flags are the defaults of every request; a request's own fields (retention,
    tokens, tau, frames, ...) override them. Ctrl-C or SIGTERM stops it."""
    params = dict(locals())
    p = profile_from_flags(params)
    from scissor_cli import serve as serve_mod
    from scissor_cli.config import load_config

    options = serve_mod.ServeOptions(
        host=host, port=port, api_key=api_key, allow_files=tuple(allow_files or ()), allow_urls=not no_urls,
        url_timeout_s=url_timeout, max_video_mb=max_video_mb, max_batch=max_batch, max_queue=max_queue,
        served_model_name=served_model_name,
    )  # fmt: skip
    serve_mod.validate_serve(options)  # before the model loads
    flags = {k: v for k, v in params.items() if k in SHARED_FLAGS}
    build = functools.partial(build_profile, config=load_config())
    raise typer.Exit(serve_mod.run(p, options, build, profile_name=profile, flags=flags))


def main() -> None:
    """The `scissor` console script: app() with Ctrl-C as one line and exit 130 at any moment."""
    _sigint["main"] = True
    if signal.getsignal(signal.SIGINT) in (signal.default_int_handler, _on_sigint):
        _sigint["raise"] = True  # from here on a Ctrl-C unwinds (closing progress bars, saving batch work)
        signal.signal(signal.SIGINT, _on_sigint)
    was_devnull = _stdout_is_devnull()
    try:
        app()
    except SystemExit as e:
        if _sigint["seen"]:  # however the command ended (typer turns a stray KeyboardInterrupt into exit 130)
            _report_interrupt()
            raise SystemExit(130) from None
        # rich's and typer's own exit on EPIPE, e.g. `scissor ask --help | head -1`
        if e.code == 1 and _stdout_reader_gone(was_devnull):
            _quiet_stdout()
            raise SystemExit(0) from None
        raise
    except KeyboardInterrupt:
        _report_interrupt()
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()

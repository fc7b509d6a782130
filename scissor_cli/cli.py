"""The ``scissor`` command line: a thin adapter over the library.

Each command parses flags, resolves the profile (built-in defaults < profile < flags), calls one library function
and hands the result to ``render``. torch, transformers and decord are imported inside command bodies only, so
``scissor --help``, ``scissor profiles list`` and ``scissor version`` stay fast.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from scissor_cli import __version__, render
from scissor_cli.errors import OptionError, ScissorError
from scissor_cli.options import Profile

app = typer.Typer(
    name="scissor",
    help="Ask questions about videos with LLaVA-OneVision, compressing visual tokens with LLaVA-Scissor (SCC).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="rich",
    add_completion=False,
)
profiles_app = typer.Typer(help="List and show the YAML profiles (tau/epsilon/budget presets).", no_args_is_help=True)
app.add_typer(profiles_app, name="profiles")
cache_app = typer.Typer(help="The on-disk cache of encoded video features.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")

F = TypeVar("F", bound=Callable[..., Any])


def _debug() -> bool:
    return os.environ.get("SCISSOR_DEBUG", "").strip() not in ("", "0", "false", "no")


def handle_errors(fn: F) -> F:
    """The one error seam: ScissorError -> one line + hint, the class's exit code; tracebacks only when debugging."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except ScissorError as e:
            if _debug():
                render.err.print_exception()
            render.error(e)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            render.interrupted()
            raise typer.Exit(130) from None
        except Exception as e:
            if _debug():
                raise
            render.internal_error(e)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------------- shared flags
# Declared once, used by ask, inspect and batch.
_C, _S, _G, _M = "Compression", "Frames", "Generation", "Model"
ModelOpt = Annotated[str | None, typer.Option("--model", "-m", help="Hub id or local directory.", rich_help_panel=_M)]
RevisionOpt = Annotated[str | None, typer.Option("--revision", help="Hub branch, tag or commit.", rich_help_panel=_M)]
ProfileOpt = Annotated[
    str | None,
    typer.Option(
        "--profile", "-p", help="Profile name (see `scissor profiles list`) or path to a YAML file.", rich_help_panel=_C
    ),
]
TauOpt = Annotated[
    float | None, typer.Option("--tau", help="Similarity threshold (paper 0.9; lower merges more).", rich_help_panel=_C)
]
TauTemporalOpt = Annotated[
    float | None, typer.Option("--tau-temporal", help="Separate threshold for the temporal step.", rich_help_panel=_C)
]
EpsilonOpt = Annotated[
    float | None, typer.Option("--epsilon", help="Sampling tolerance (paper 0.05).", rich_help_panel=_C)
]
RetentionOpt = Annotated[
    float | None,
    typer.Option(
        "--retention", help="Budget: keep at most this fraction of the visual tokens, e.g. 0.1.", rich_help_panel=_C
    ),
]
TokensOpt = Annotated[
    int | None, typer.Option("--tokens", help="Budget: keep at most this many visual tokens.", rich_help_panel=_C)
]
NoCompressOpt = Annotated[
    bool, typer.Option("--no-compress", help="Send every visual token to the LLM.", rich_help_panel=_C)
]
FramesOpt = Annotated[
    int | None, typer.Option("--frames", "-f", help="Frames sampled uniformly (default 32).", rich_help_panel=_S)
]
FpsOpt = Annotated[
    float | None, typer.Option("--fps", help="Sample at this rate instead (capped by --frames).", rich_help_panel=_S)
]
StartOpt = Annotated[float | None, typer.Option("--start", help="Window start, seconds.", rich_help_panel=_S)]
EndOpt = Annotated[float | None, typer.Option("--end", help="Window end, seconds.", rich_help_panel=_S)]
MaxNewOpt = Annotated[int | None, typer.Option("--max-new-tokens", help="Answer length cap.", rich_help_panel=_G)]
TemperatureOpt = Annotated[
    float | None, typer.Option("--temperature", help="0 = greedy (default).", rich_help_panel=_G)
]
SeedOpt = Annotated[
    int | None, typer.Option("--seed", help="Seeds sampling and SCC's sampled regime.", rich_help_panel=_G)
]
DeviceOpt = Annotated[
    str | None, typer.Option("--device", help="auto | cpu | cuda | cuda:N | mps.", rich_help_panel=_M)
]
DtypeOpt = Annotated[
    str | None, typer.Option("--dtype", help="auto | float32 | bfloat16 | float16.", rich_help_panel=_M)
]
OfflineOpt = Annotated[
    bool, typer.Option("--offline", help="Never touch the network (like HF_HUB_OFFLINE=1).", rich_help_panel=_M)
]
NoCacheOpt = Annotated[
    bool, typer.Option("--no-cache", help="Do not read or write the video-feature cache.", rich_help_panel=_M)
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
VIDEO_HELP = (
    "Video file or still image; an http(s):// URL (streamed by ffmpeg); or - to read the video from stdin "
    "(kept in a temporary file while it runs)."
)


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
) -> Profile:
    """Built-in defaults < profile < flags. A budget flag replaces the profile's budget rather than adding to it."""
    from scissor_cli.profiles import load_profile

    p = load_profile(profile)
    compression: dict[str, Any] = {"tau": tau, "tau_temporal": tau_temporal, "epsilon": epsilon, "seed": seed}
    if retention is not None and tokens is not None:
        raise OptionError("--retention and --tokens are both given", hint="give one budget: a ratio or a count")
    if retention is not None or tokens is not None or tau is not None:
        from dataclasses import replace

        # An explicit --tau means "use this threshold", so it clears a profile's budget, and one budget flag
        # replaces the other kind.
        p = replace(p, compression=replace(p.compression, retention=None, tokens=None))
        compression.update(retention=retention, tokens=tokens)
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
    if no_compress:
        compression["enabled"] = False
    elif asked:  # a compression flag over a profile that turns compression off (e.g. --profile off) means "compress"
        compression["enabled"] = True
    return p.override(
        sampling={"n_frames": frames, "fps": fps, "start": start, "end": end},
        compression=compression,
        generation={"max_new_tokens": max_new_tokens, "temperature": temperature, "seed": seed},
        model={
            "model": model,
            "revision": revision,
            "device": device,
            "dtype": dtype,
            "offline": True if offline else None,
            "cache": False if no_cache else None,
            "newline": newline,
        },
    )


SHARED_FLAGS = frozenset(
    ("model", "revision", "tau", "tau_temporal", "epsilon", "retention", "tokens", "no_compress", "frames", "fps",
     "start", "end", "max_new_tokens", "temperature", "seed", "device", "dtype", "offline", "no_cache", "newline")
)  # fmt: skip


def profile_from_flags(params: dict[str, Any]) -> Profile:
    """``build_profile`` from a command's parameters (its ``locals()``): the shared flags it declares, by name."""
    profile = build_profile(params["profile"], **{k: v for k, v in params.items() if k in SHARED_FLAGS})
    if profile.model.cache:
        from scissor_cli.cache import default_max_bytes

        default_max_bytes()  # a bad SCISSOR_CACHE_MAX_GB fails now, not after the model has loaded
    return profile


def _load(profile: Profile, on_status: Callable[[str], None]) -> Any:
    from scissor_cli.model import load_model

    on_status(f"loading {profile.model.model}")
    return load_model(profile.model, on_status=on_status)


# ---------------------------------------------------------------------------------------------------- commands
@app.command(
    epilog="""[bold]Examples[/]

  scissor ask samples/bigbuckbunny.mp4 "What is happening?"

  scissor ask clip.mp4 "What is the man holding?" -q "Where is he?" --profile r10

  scissor ask clip.mp4 "Describe the video." --retention 0.35 --frames 16 --json"""
)
@handle_errors
def ask(
    video: Annotated[str, typer.Argument(help=VIDEO_HELP)],
    question: Annotated[str, typer.Argument(help="What to ask about the video.")],
    more: Annotated[
        list[str] | None,
        typer.Option("--question", "-q", help="Another question (repeatable); the video is encoded once."),
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
        vlm = _load(p, on_status)
        from scissor_cli.pipeline import answer

        results = answer(vlm, video, questions, p, on_status=on_status, info=info)
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
    epilog="""[bold]Examples[/]

  scissor inspect clip.mp4 --video-only

  scissor inspect clip.mp4 --sweep

  scissor inspect clip.mp4 --profile r10 --viz tokens.png --json"""
)
@handle_errors
def inspect(
    video: Annotated[str, typer.Argument(help=VIDEO_HELP)],
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
            "--viz", help="Write a PNG: the sampled frames, each patch coloured by the kept token it merged into."
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
        vlm = None if video_only else _load(p, on_status)
        taus = None if not sweep or (levels and levels.axis != "tau") else (levels.values if levels else SWEEP_TAUS)
        budgets = levels.values if levels and levels.axis != "tau" else None
        result = inspect_video(vlm, video, p, sweep_taus=taus, on_status=on_status, info=info, sweep_budgets=budgets)
        if viz is not None and result.compressed is not None:
            from scissor_cli.viz import token_map

            on_status("drawing the token map")
            token_map(viz, video, result)
    if json_out:
        data = result.to_dict()
        if viz is not None:
            data["viz"] = str(viz)
        render.write_json(data)
    else:
        render.inspection(result)
        if viz is not None:
            render.out.print(f"[dim]token map written to[/] {viz}")


@app.command(
    epilog="""[bold]Examples[/]

  scissor batch videos/ -q "What is happening?" -q "Who is there?" -o results.jsonl

  scissor batch --manifest jobs.jsonl -o results.jsonl --profile r10

  scissor batch --manifest jobs.jsonl -o sweep.jsonl --retention 1,0.5,0.35,0.1,0.05 --prompt videomme

  torchrun --nproc_per_node 4 -m scissor_cli batch --manifest jobs.csv -o results.jsonl"""
)
@handle_errors
def batch(
    paths: Annotated[list[str] | None, typer.Argument(help="Video files and folders (searched recursively).")] = None,
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

        return load_model(shard_profile.model)

    if output == batch_mod.STDOUT and not quiet:
        render.batch_to_stdout()
    with render.BatchProgress(quiet=quiet) as view:
        summary = batch_mod.run_batch(
            load, jobs, output, shard_profile, overwrite=overwrite, batch_size=batch_size, view=view,
            inputs=[manifest] if manifest else [], sweep=sweep, prompt=prompt,
        )  # fmt: skip
    if summary.rank == 0:  # under torchrun/accelerate, rank 0's summary covers every rank's jobs
        if json_out:
            render.write_json(summary.to_dict())
        else:
            render.batch_summary(summary, to_stderr=output == batch_mod.STDOUT)
    if summary.n_failed:
        raise typer.Exit(1)


@app.command(
    epilog="""[bold]Examples[/]

  scissor report sweep.jsonl

  scissor report r10.jsonl r35.jsonl off.jsonl --by profile --format markdown

  scissor report sweep.jsonl --format csv > table.csv --plot sweep.png"""
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


@profiles_app.command("list")
@handle_errors
def profiles_list() -> None:
    """List built-in and user profiles."""
    from scissor_cli.profiles import list_profiles

    render.profile_list(list_profiles())


@profiles_app.command("show", epilog="Examples:  scissor profiles show r10   |   scissor profiles show ./my.yaml")
@handle_errors
def profiles_show(name: Annotated[str, typer.Argument(help="Profile name or path to a YAML file.")]) -> None:
    """Show every setting of a profile (values it leaves unset come from the built-in defaults)."""
    from scissor_cli.profiles import find_profile, load_profile

    render.profile_detail(load_profile(name), str(find_profile(name)))


@cache_app.command("info")
@handle_errors
def cache_info() -> None:
    """Where the feature cache is, how full, and its size bound (SCISSOR_CACHE_DIR, SCISSOR_CACHE_MAX_GB)."""
    from scissor_cli.cache import FeatureCache

    cache = FeatureCache()
    render.cache_info(str(cache.root), len(cache.entries()), cache.size_bytes(), cache.max_bytes)


@cache_app.command("clear")
@handle_errors
def cache_clear() -> None:
    """Delete every cached video encoding."""
    from scissor_cli.cache import FeatureCache

    cache = FeatureCache()
    render.cache_cleared(str(cache.root), cache.clear())


@app.command()
@handle_errors
def version() -> None:
    """Print scissor's version and its main dependencies' (without importing them)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    parts = [f"scissor {__version__}"]
    for dist in ("torch", "transformers", "decord"):
        try:
            parts.append(f"{dist} {dist_version(dist)}")
        except PackageNotFoundError:
            parts.append(f"{dist} (not installed)")
    render.version(", ".join(parts))


def main() -> None:
    app()


if __name__ == "__main__":
    main()

"""The ``scissor`` command line: a thin adapter over the library.

Each command parses flags, resolves the profile (built-in defaults < profile < flags), calls one library function
and hands the result to ``render``. torch, transformers and decord are imported inside command bodies only, so
``scissor --help``, ``scissor profiles list`` and ``scissor version`` stay fast.

Ctrl-C, SIGTERM/SIGHUP, a closed stdout and the error seam (``handle_errors``) live in ``cli_process``, imported
first so its signal handlers are in place while typer and rich import.
"""

from __future__ import annotations

# First, before typer and rich import: importing cli_process installs the signal handlers when this is the command.
from scissor_cli.cli_process import _command_clock, handle_errors, run

# isort: split
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from scissor_cli import render
from scissor_cli.cli_flags import (
    ENGINE_FLAGS,
    SWEEP_TAUS,
    AllowFilesOpt,
    ApiKeyOpt,
    Command,
    DecodeWorkersOpt,
    Group,
    HostOpt,
    JsonOpt,
    MaxBatchOpt,
    MaxQueueOpt,
    MaxVideoMbOpt,
    NoUrlsOpt,
    PortOpt,
    PromptOpt,
    ServedModelNameOpt,
    UrlTimeoutOpt,
    VideoArg,
    with_overrides,
)
from scissor_cli.errors import OptionError, ScissorError, Terminated
from scissor_cli.options import (
    Profile,
)
from scissor_cli.settings import Overrides, resolve, spelled
from scissor_cli.sweep import Sweep  # typer evaluates the commands' annotations: a runtime import

if TYPE_CHECKING:
    from scissor_cli.cache import FeatureCache
    from scissor_cli.config import UserConfig


def _print_version(value: bool) -> None:
    if value:
        from scissor_cli.doctor import versions

        render.version(versions())
        raise typer.Exit()


app = typer.Typer(
    name="scissor",
    help="Ask questions about videos with LLaVA-OneVision, compressing visual tokens with LLaVA-Scissor (SCC).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    cls=Group,
)
profiles_app = typer.Typer(
    help="List and show the YAML profiles (tau/epsilon/budget presets).", no_args_is_help=True, cls=Group
)
app.add_typer(profiles_app, name="profiles")
cache_app = typer.Typer(help="The on-disk cache of encoded video features.", no_args_is_help=True, cls=Group)
app.add_typer(cache_app, name="cache")


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the versions and exit.", is_eager=True, callback=_print_version),
    ] = False,
) -> None:
    """Ask questions about videos with LLaVA-OneVision, compressing visual tokens with LLaVA-Scissor (SCC)."""


_warned: set[str] = set()


def warn_slow_dtype(vlm: Any) -> None:
    """Once per process: half precision this CPU emulates (float16 always, bfloat16 without AVX-512 BF16/AMX) is
    several times slower than float32."""
    from scissor_cli.devices import emulated_half

    dtype = str(getattr(vlm, "dtype", "")).removeprefix("torch.")
    device = getattr(getattr(vlm, "device", None), "type", str(getattr(vlm, "device", "")))
    if emulated_half(device, dtype) and "dtype" not in _warned:
        _warned.add("dtype")
        kind = "half-precision" if dtype == "float16" else "bfloat16"
        render.warn(f"{dtype} on this CPU is slower than float32 (no native {kind} kernels); --dtype float32")


def _load(profile: Profile, on_status: Callable[[str], None]) -> tuple[Any, float]:
    """The model and the seconds it took, imports (torch, transformers) included."""
    t0 = time.perf_counter()
    from scissor_cli.model import load_model

    on_status(f"loading {profile.model.model}")
    vlm = load_model(profile.model, on_status=on_status)
    load_s = time.perf_counter() - t0
    warn_slow_dtype(vlm)
    return vlm, load_s


def _resolve(overrides: Overrides, config: UserConfig | None = None) -> Profile:
    """The profile the flags ask for; a bad value's error names the flag (``--frames``, not ``sampling.n_frames``)."""
    try:
        return resolve(overrides, config)
    except OptionError as e:
        raise spelled(e, "cli") from e


def _resolve_with_cache(overrides: Overrides) -> tuple[Profile, FeatureCache | None]:
    """The profile and the feature cache (None: ``--no-cache``), the user config read once for both: its folder is
    $SCISSOR_CACHE_DIR > the config's ``cache_dir`` > the XDG default (``cache.default_root``)."""
    from scissor_cli.cache import FeatureCache, default_root
    from scissor_cli.config import load_config

    config = load_config()
    p = _resolve(overrides, config)
    return p, FeatureCache(default_root(config)) if p.model.cache else None


def _timings(load_s: float) -> dict[str, float]:
    """load and total seconds for the time line and timings_s (total: since the command started)."""
    return {"load": round(load_s, 4), "total": round(time.perf_counter() - _command_clock["start"], 4)}


# ---------------------------------------------------------------------------------------------------- commands
@app.command(
    cls=Command,
    epilog="""[bold]Examples[/]

  scissor ask samples/bigbuckbunny.mp4 "What is happening?"

  scissor ask clip.mp4 "What is the man holding?" -q "Where is he?" --profile r10

  scissor ask clip.mp4 "Describe the video." --retention 0.35 --frames 16 --json""",
)
@handle_errors
@with_overrides()
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
    decode_workers: DecodeWorkersOpt = None,
    *,
    overrides: Overrides,
) -> None:
    """Answer questions about a video, and show what the compression did."""
    p, cache = _resolve_with_cache(overrides)
    questions = [question, *(more or [])]
    if any(not q.strip() for q in questions):
        raise OptionError("a question is empty", hint='ask something, e.g. "What is happening?"')
    from scissor_cli import video as video_io

    decode_workers = video_io.check_decode_threads(decode_workers)
    # a bad path or URL fails here, before minutes of model loading; stdin (-) is spooled for the block
    with video_io.opened(video) as info, render.stages() as on_status:
        vlm, load_s = _load(p, on_status)
        from scissor_cli.pipeline import answer

        results = answer(vlm, video, questions, p, on_status=on_status, info=info, decode_workers=decode_workers,
                         cache=cache)  # fmt: skip
    timings = _timings(load_s)
    results = [replace(a, timings_s={**a.timings_s, **timings}) for a in results]
    if json_out:
        for a in results:
            render.write_json(a.to_dict())
    else:
        render.answers(results, show_timestamps=timestamps)


@app.command(
    cls=Command,
    epilog="""[bold]Examples[/]

  scissor inspect clip.mp4 --video-only

  scissor inspect clip.mp4 --sweep

  scissor inspect clip.mp4 --profile r10 --viz tokens.png --json""",
)
@handle_errors
@with_overrides(skip=("max_new_tokens", "temperature", "top_p", "newline", *ENGINE_FLAGS), sweep=True)
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
    decode_workers: DecodeWorkersOpt = None,
    *,
    overrides: Overrides,
    levels: Sweep | None,
) -> None:
    """Report a video's metadata, frame plan and token counts per SCC step, without running the language model."""
    p, cache = _resolve_with_cache(overrides)
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

    decode_workers = video_io.check_decode_threads(decode_workers)
    with video_io.opened(video) as info, render.stages() as on_status:
        vlm, load_s = (None, 0.0) if video_only else _load(p, on_status)
        taus = None if not sweep or (levels and levels.axis != "tau") else (levels.values if levels else SWEEP_TAUS)
        budgets = levels.values if levels and levels.axis != "tau" else None
        result = inspect_video(vlm, video, p, sweep_taus=taus, on_status=on_status, info=info, sweep_budgets=budgets,
                               decode_workers=decode_workers, cache=cache)  # fmt: skip
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
    cls=Command,
    epilog="""[bold]Examples[/]

  scissor batch videos/ -q "What is happening?" -q "Who is there?" -o results.jsonl

  scissor batch --manifest jobs.jsonl -o results.jsonl --profile r10

  scissor batch --manifest jobs.jsonl -o sweep.jsonl --retention 1,0.5,0.35,0.1,0.05 --prompt videomme

  torchrun --nproc_per_node 4 -m scissor_cli batch --manifest jobs.csv -o results.jsonl""",
)
@handle_errors
@with_overrides(sweep=True)
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
    decode_ahead: Annotated[
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
    *,
    overrides: Overrides,
    levels: Sweep | None,
) -> None:
    """Answer questions about many videos with the model loaded once; resumable JSONL output."""
    from scissor_cli import batch as batch_mod
    from scissor_cli import jobs as jobs_mod
    from scissor_cli.choices import PROMPT_PRESETS
    from scissor_cli.prefetch import default_decode_workers

    p, cache = _resolve_with_cache(overrides)
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
            inputs=[manifest] if manifest else [], sweep=levels, prompt=prompt,
            decode_workers=default_decode_workers() if decode_ahead is None else decode_ahead,
            cache_dir=cache.root if cache is not None else None,
        )  # fmt: skip
    if summary.rank == 0:  # under torchrun/accelerate, rank 0's summary covers every rank's jobs
        if json_out:
            render.write_json(summary.to_dict())
        else:
            render.batch_summary(summary, to_stderr=output == batch_mod.STDOUT)
    if summary.n_failed:
        raise typer.Exit(1)


@app.command(
    cls=Command,
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


@profiles_app.command("list", cls=Command)
@handle_errors
def profiles_list(json_out: JsonOpt = False) -> None:
    """List built-in and user profiles."""
    from scissor_cli.profiles import list_profiles

    render.profile_list(list_profiles(), as_json=json_out)


@profiles_app.command(
    "show",
    cls=Command,
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


@cache_app.command("info", cls=Command)
@handle_errors
def cache_info(json_out: JsonOpt = False) -> None:
    """Where the feature cache is, how full, and its size bound (SCISSOR_CACHE_DIR, SCISSOR_CACHE_MAX_GB)."""
    from scissor_cli.cache import FeatureCache, default_root

    cache = FeatureCache(default_root())
    render.cache_info(str(cache.root), len(cache.entries()), cache.size_bytes(), cache.max_bytes, as_json=json_out)


@cache_app.command("clear", cls=Command)
@handle_errors
def cache_clear() -> None:
    """Delete every cached video encoding."""
    from scissor_cli.cache import FeatureCache, default_root

    cache = FeatureCache(default_root())
    render.cache_cleared(str(cache.root), cache.clear())


@app.command(cls=Command)
@handle_errors
def version(json_out: JsonOpt = False) -> None:
    """Print scissor's version, Python's and its main dependencies' (without importing them)."""
    from scissor_cli.doctor import versions

    render.version(versions(), as_json=json_out)


@app.command(cls=Command, epilog="Examples:  scissor doctor   |   scissor doctor --json")
@handle_errors
def doctor(json_out: JsonOpt = False) -> None:
    """Check the environment: versions, CUDA and GPU memory, ffmpeg, caches, offline mode, the user config."""
    from scissor_cli.doctor import environment_report

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
    cls=Command,
    epilog="""[bold]Examples[/]

  scissor chat samples/bigbuckbunny.mp4

  scissor chat clip.mp4 --profile r10 --frames 16

  printf 'What happens?\\n/retention 0.1\\nAnd then?\\n' | scissor chat clip.mp4 --json""",
)
@handle_errors
@with_overrides()
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
    decode_workers: DecodeWorkersOpt = None,
    *,
    overrides: Overrides,
) -> None:
    """Talk about one video: the model and the video's tokens are loaded once, then ask question after question.

    On a terminal: line editing and history, answers streamed, /help for the commands (/retention, /tokens, /tau,
    /off re-compress without the vision tower; /frames, /stats, /reset, /video, /save, /quit). With stdin a pipe:
    one question or command per line, each answer on stdout."""
    p = _resolve(overrides)
    from scissor_cli import chat as chat_mod
    from scissor_cli import video as video_io

    decode_workers = video_io.check_decode_threads(decode_workers)  # /frames and /video decode with it too
    info = chat_mod.probe_video(video)  # a bad path or URL fails here, before the model loads
    interactive = sys.stdin.isatty()
    with render.stages() as on_status:
        vlm, load_s = _load(p, on_status)
        session = chat_mod.ChatSession(vlm, p, history=not no_history, load_s=load_s, decode_workers=decode_workers)
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
            except KeyboardInterrupt as e:
                if not interactive or isinstance(e, Terminated):  # SIGTERM/SIGHUP end the session
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
    cls=Command,
    epilog="""[bold]Examples[/]

  scissor serve --allow-files ~/videos

  scissor serve --profile r10 --frames 16 --max-batch 16

  SCISSOR_API_KEY=secret scissor serve --host 0.0.0.0 --port 8000""",
)
@handle_errors
@with_overrides()
def serve(
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    api_key: ApiKeyOpt = None,
    allow_files: AllowFilesOpt = None,
    no_urls: NoUrlsOpt = False,
    url_timeout: UrlTimeoutOpt = 30.0,
    max_video_mb: MaxVideoMbOpt = 512.0,
    max_batch: MaxBatchOpt = 8,
    max_queue: MaxQueueOpt = 64,
    served_model_name: ServedModelNameOpt = None,
    *,
    overrides: Overrides,
) -> None:
    """Serve an OpenAI-compatible API (/v1/chat/completions with video_url parts), the model loaded once.

    The compression and frame flags are the defaults of every request; a request's own fields (retention,
    tokens, tau, frames, ...) override them. Ctrl-C or SIGTERM stops it."""
    from scissor_cli import serve as serve_mod
    from scissor_cli.config import load_config

    config = load_config()  # read once: the server's profile and every request's
    p = _resolve(overrides, config)

    options = serve_mod.ServeOptions(
        host=host, port=port, api_key=api_key, allow_files=tuple(allow_files or ()), allow_urls=not no_urls,
        url_timeout_s=url_timeout, max_video_mb=max_video_mb, max_batch=max_batch, max_queue=max_queue,
        served_model_name=served_model_name,
    )  # fmt: skip
    serve_mod.validate_serve(options)  # before the model loads
    raise typer.Exit(serve_mod.run(p, options, overrides, config))


def main() -> None:
    """The `scissor` console script: app() with Ctrl-C as one line and exit 130 at any moment (SIGTERM 143,
    SIGHUP 129)."""
    run(app)


if __name__ == "__main__":
    main()

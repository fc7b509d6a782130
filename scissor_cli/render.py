"""Everything the terminal shows. Results go to stdout; progress, warnings and errors go to stderr.

No other module prints. ``--json`` output is written with ``json.dumps`` straight to stdout: no markup, one object
per line. Every write to stdout goes through ``_Stdout``, which turns a closed pipe (``scissor ask ... | head -1``)
into ``StdoutClosed`` so the CLI can end quietly, the way Unix tools do.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from scissor_cli.errors import ScissorError, StdoutClosed, Terminated, shorten

if TYPE_CHECKING:
    from scissor_cli.pipeline import Answer, Inspection
    from scissor_cli.profiles import ProfileEntry


class _Stdout:
    """``sys.stdout`` as it is at each call (CliRunner swaps it), with EPIPE raised as ``StdoutClosed``."""

    def write(self, text: str) -> int:
        try:
            return sys.stdout.write(text)
        except BrokenPipeError as e:
            raise StdoutClosed from e

    def flush(self) -> None:
        try:
            sys.stdout.flush()
        except BrokenPipeError as e:
            raise StdoutClosed from e

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, ... for rich
        return getattr(sys.stdout, name)


stdout = _Stdout()
out = Console(file=stdout, highlight=False, soft_wrap=True)  # type: ignore[arg-type]
err = Console(stderr=True, highlight=False, soft_wrap=True)


# ---------------------------------------------------------------------------------------------------- errors
MAX_LINE = 1000  # characters of an error's message or hint printed; a longer one says its length instead


def error(e: ScissorError) -> None:
    err.print(f"[bold red]error:[/] {escape(shorten(e.message, MAX_LINE))}")  # short whatever text it quotes
    if e.hint:
        err.print(f"[dim]hint:[/] {escape(shorten(e.hint, MAX_LINE))}")


def internal_error(e: BaseException) -> None:
    text = shorten(str(e), MAX_LINE) or "no message"
    err.print(f"[bold red]internal error:[/] {escape(type(e).__name__)}: {escape(text)}")
    err.print("[dim]hint:[/] rerun with SCISSOR_DEBUG=1 for the traceback, and report it with the command you ran")


def warn(text: str) -> None:
    err.print(f"[yellow]warning:[/] {escape(text)}")


@contextmanager
def library_warnings() -> Iterator[None]:
    """While a command runs, the library's ``ScissorWarning``s (``warnings.warn``) are ``warning:`` lines, every
    one of them; other warnings are shown as Python shows them."""
    import warnings

    from scissor_cli.errors import ScissorWarning

    with warnings.catch_warnings():
        warnings.simplefilter("always", ScissorWarning)
        python_show = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, ScissorWarning):
                warn(str(message))
            else:
                python_show(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def interrupted(message: str | None = None, signal_name: str | None = None) -> None:
    """The one line a Ctrl-C (or SIGTERM, SIGHUP: ``signal_name``) leaves (batch: how many jobs are saved and how
    to continue)."""
    by = f" ({signal_name})" if signal_name else ""
    err.print(f"[yellow]interrupted[/]{by}{': ' + escape(message) if message else ''}")


def written(what: str, path: str) -> None:
    err.print(f"[dim]{escape(what)} written to[/] {escape(path)}")


# ---------------------------------------------------------------------------------------------------- progress
class _Stages:
    """``on_status(text)`` starts a stage line; ``on_status.progress(done, total)`` turns it into a bar."""

    def __init__(self, progress: Progress):
        self._progress = progress
        self._task: Any = None

    def __call__(self, text: str) -> None:
        if self._task is not None:
            task = self._progress.tasks[self._task]
            self._progress.update(self._task, completed=task.total or 1, total=task.total or 1)
        self._task = self._progress.add_task(escape(text), total=None)

    def progress(self, done: int, total: int) -> None:
        if self._task is not None:
            self._progress.update(self._task, completed=done, total=total)


class _Silent:
    """``on_status`` off a terminal: a transient display cannot be erased there, so show nothing."""

    def __call__(self, text: str) -> None:
        pass

    def progress(self, done: int, total: int) -> None:
        pass


@contextmanager
def stages() -> Iterator[_Stages | _Silent]:
    """A line per stage (model load, decode, vision tower, ...) on stderr, with a bar where progress is known.

    Only on a terminal: piped or captured, stderr gets nothing but warnings and errors (no stray blank line)."""
    if not err.is_terminal:
        yield _Silent()
        return
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )
    with progress:
        yield _Stages(progress)


def _print_table(table: Table) -> None:
    """A table on stdout without the trailing spaces rich pads its rows with (they end up in files and diffs)."""
    with out.capture() as captured:
        out.print(table)
    stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))
    stdout.flush()


def write_json(obj: Any) -> None:
    stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    stdout.flush()


# ---------------------------------------------------------------------------------------------------- ask
def _fmt_s(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _tau(tau: float, tau_temporal: float | None) -> str:
    return f"{tau:.4g}" + (f" (temporal {tau_temporal:.4g})" if tau_temporal not in (None, tau) else "")


def _tokens_line(tokens: dict[str, int], retention: float) -> str:
    return f"{tokens['original']:,} → {tokens['spatial']:,} → {tokens['final']:,}  ({retention * 100:.1f} % kept)"


def _budget_line(budget: dict[str, Any], tau: float | None) -> str:
    """'10 % (627 tokens) → tau 0.9046 found' or '500 tokens → tau 0.9046 found'."""
    n = f"{budget['tokens']:,} token{'s' if budget['tokens'] != 1 else ''}"
    asked = f"{budget['retention'] * 100:.4g} % ({n})" if budget.get("retention") is not None else n
    return f"{asked} → tau {tau:.4g} found" if tau is not None else asked


def _time_line(t: dict[str, float], stages: str) -> str:
    """The stage times with model load first and the command's wall time last (imports included in load)."""
    load = f"load {_fmt_s(t['load'])}, " if "load" in t else ""
    total = f"; total {_fmt_s(t['total'])}" if "total" in t else ""
    return f"{load}{stages}{total}"


def _compression_rows(table: Table, a: Any) -> None:
    """The rows every answer shows (an ``Answer``, or a chat session's stats): token counts, budget, tau/epsilon,
    estimated prefill cost."""
    table.add_row("visual tokens", "original → spatial → final: " + _tokens_line(a.tokens, a.retention))
    if a.tau is None:
        table.add_row("compression", "off")
    else:
        if a.budget:
            table.add_row("budget", _budget_line(a.budget, a.tau))
        table.add_row("tau / epsilon", f"{_tau(a.tau, a.tau_temporal)} / {a.epsilon:.4g}")
    table.add_row("LLM prefill", f"{a.tflops['before']:.3g} → {a.tflops['after']:.3g} TFLOPs (estimated)")


def answers(items: Sequence[Answer], show_timestamps: bool = False) -> None:
    for a in items:
        out.print(f"[bold]Q:[/] {escape(a.question)}")
        out.print(f"[bold green]A:[/] {escape(a.answer)}")
        out.print()
    if not items:
        return
    a = items[0]
    table = Table(show_header=False, box=None, pad_edge=False, title=None)
    table.add_column(style="dim")
    table.add_column(overflow="fold")  # wrap long paths, never cut them
    table.add_row("video", escape(a.video))
    table.add_row("frames", f"{a.frames}" + (f"  ({escape(a.note)})" if a.note else ""))
    if show_timestamps:
        table.add_row("timestamps", ", ".join(f"{t:.2f}s" for t in a.timestamps))
    _compression_rows(table, a)
    t = a.timings_s
    vision = "from cache" if a.cache_hit else f"decode {_fmt_s(t['decode'])}, vision {_fmt_s(t['vision'])}"
    table.add_row(
        "time",
        _time_line(
            t,
            f"{vision}, compression {_fmt_s(t['compression'])}, prefill {_fmt_s(t['prefill'])}, "
            f"generation {_fmt_s(t['generation'])}",
        ),
    )
    if len(items) > 1:
        table.add_row("", "(questions batched: prefill and generation are the batch's)")
    prefilled = [x.prefill_tokens for x in items if x.prefill_tokens is not None]
    if prefilled:
        shared = " (the video once: its prefix is shared)" if len(items) > 1 else ""
        table.add_row("prefilled", f"{sum(prefilled):,} prompt tokens run through the LLM{shared}")
    table.add_row("model", f"{escape(a.model)} on {a.device} ({a.dtype})")
    table.add_row("profile", escape(str(a.profile.get("name", ""))))
    _print_table(table)


# ---------------------------------------------------------------------------------------------------- inspect
def inspection(insp: Inspection, timings: dict[str, float] | None = None, show_per_frame: bool = True) -> None:
    """``timings``: load and total seconds measured by the CLI (absent with --video-only)."""
    i = insp.info
    t = timings or {}
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="dim")
    table.add_column(overflow="fold")  # wrap long paths, never cut them
    table.add_row("video", escape(insp.video or i.path))
    kind = "still image" if i.is_image else f"{i.codec}, {i.fps:.3g} fps, {i.n_frames} frames, {i.duration:.2f} s"
    table.add_row(
        "stream",
        f"{kind}, {i.width}×{i.height}"
        + (f", rotated {i.rotation}°" if i.rotation else "")
        + f"  [dim](read with {i.backend})[/]",
    )
    plan = ", ".join(f"{n}@{t:.2f}s" for n, t in zip(insp.indices, insp.timestamps, strict=True))
    n = len(insp.indices)
    table.add_row("frame plan", f"{n} frame{'s' if n != 1 else ''}: {plan}")
    if insp.note:
        table.add_row("note", escape(insp.note))
    c = insp.compressed
    if c is not None and insp.encoded is not None:
        e = insp.encoded
        table.add_row("model", escape(insp.model or "") + (f" on {insp.device} ({insp.dtype})" if insp.device else ""))
        table.add_row(
            "visual tokens",
            "original → spatial → final: "
            + _tokens_line({"original": c.n_original, "spatial": c.n_spatial, "final": c.n_final}, c.retention),
        )
        if c.tau is not None:
            if insp.budget:
                table.add_row("budget", _budget_line(insp.budget, c.tau))
            table.add_row("tau / epsilon", f"{_tau(c.tau, c.tau_temporal)} / {c.epsilon:.4g}")
        if insp.tflops:
            table.add_row("LLM prefill", f"{insp.tflops['before']:.3g} → {insp.tflops['after']:.3g} TFLOPs (est.)")
        src = "from cache" if e.cache_hit else f"decode {_fmt_s(e.decode_s)} ({e.backend}), vision {_fmt_s(e.vision_s)}"
        table.add_row("time", _time_line(t, f"{src}, compression {_fmt_s(c.compression_s)}"))
        if show_per_frame:
            table.add_row("spatial per frame", " ".join(str(n) for n in c.spatial_per_frame))
    _print_table(table)
    if insp.sweep and c is not None:
        from scissor_cli.sweep import level_text

        levels = insp.sweep_levels
        title = "tokens by budget (one encoding)" if levels else "retention by tau (one encoding)"
        sweep = Table(title=title, title_justify="left")
        cols = ("level", "tau (searched)") if levels else ("tau",)
        for col in (*cols, "after spatial", "final", "retention"):
            sweep.add_column(col, justify="right")
        for i, (tau, n_spatial, n_final) in enumerate(insp.sweep):
            cells = [level_text(levels[i])] if levels else []
            cells += ["-" if tau is None else f"{tau:.3g}", f"{n_spatial:,}", f"{n_final:,}"]
            sweep.add_row(*cells, f"{n_final / c.n_original * 100:.1f} %")
        _print_table(sweep)


# ---------------------------------------------------------------------------------------------------- profiles
def profile_list(entries: Sequence[ProfileEntry], as_json: bool = False) -> None:
    if as_json:
        write_json([{"name": e.name, "source": e.source, "description": e.description, "path": str(e.path)}
                    for e in entries])  # fmt: skip
        return
    table = Table(box=None, pad_edge=False)
    table.add_column("name", style="bold")
    table.add_column("source", style="dim")
    table.add_column("description")
    for e in entries:
        table.add_row(escape(e.name), e.source, escape(e.description))
    _print_table(table)


def profile_detail(text: str) -> None:
    """A profile as YAML (``profiles.profile_yaml``): plain text, so it can be redirected into a file and loaded."""
    stdout.write(text)
    stdout.flush()


# ---------------------------------------------------------------------------------------------------- batch
class BatchProgress:
    """``BatchView`` for the terminal, on stderr. On a terminal: a progress bar with rate and ETA, one line per
    failure. Off a terminal (a pipe, a log file): one plain line per job, ``[12/240] ok clips/a.mp4 (3.1 s)``, the
    time being the wall time since the previous line, split evenly between the rows of one ``generate`` call.
    ``quiet``: nothing. Nothing pending: no bar at all."""

    def __init__(self, quiet: bool = False, live: bool | None = None) -> None:
        self._quiet = quiet
        self._live = err.is_terminal if live is None else live
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=err,
            transient=False,
            redirect_stdout=False,  # with -o - the records are stdout: never route them into the bar's stderr
        )
        self._started = False  # the live display runs only once there is something to show
        self._task: Any = None
        self._n_pending = self._n_finished = 0
        self._last = time.perf_counter()
        self._share_s, self._n_share_left = 0.0, 0  # rows of one generate call share its wall time

    def __enter__(self) -> BatchProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._started:
            self._progress.__exit__(*exc)

    def start(self, n_total: int, n_skipped: int) -> None:
        self._n_pending = n_total - n_skipped
        if self._quiet:
            return
        if n_skipped:
            err.print(f"[dim]resuming: {n_skipped} of {n_total} jobs already in the output[/]")
        if self._live and self._n_pending:
            self._progress.__enter__()
            self._started = True
            self._task = self._progress.add_task("jobs", total=self._n_pending, rate="")

    def note(self, text: str) -> None:
        if self._quiet:
            return
        if self._task is not None:
            self._progress.update(self._task, description=escape(text))
        else:
            err.print(f"[dim]{escape(text)}[/]")

    def status(self, text: str) -> None:
        if not self._n_finished:  # the first job's time starts with its video, not with the model load
            self._last = time.perf_counter()
        if self._task is not None and not self._quiet:
            self._progress.update(self._task, description=escape(text))

    def job_done(self, record: dict[str, Any]) -> None:
        self._n_finished += 1
        now = time.perf_counter()
        elapsed, self._last = now - self._last, now
        if self._n_share_left:  # a batch-mate of the previous record: same generate call, same share
            self._n_share_left -= 1
        else:
            n_rows = record.get("batch_rows") or 1
            self._share_s, self._n_share_left = elapsed / n_rows, n_rows - 1
        if self._quiet:
            return
        ok = record.get("status") == "ok"
        video = escape(str(record.get("video")))
        if isinstance(record.get("level"), dict):  # a sweep: which level of the video this record is
            from scissor_cli.sweep import level_text

            video += f" @ {escape(level_text(record['level']))}"
        if self._task is None:  # off a terminal: a plain line per job
            n = f"[{self._n_finished}/{self._n_pending}]"
            if ok:
                err.print(f"{escape(n)} ok {video} ({self._share_s:.1f} s)")
            else:
                err.print(f"{escape(n)} [red]error[/] {video}: {escape(str(record.get('error')))}")
            return
        if not ok:
            self._progress.console.print(f"[red]failed:[/] {video}: {escape(str(record.get('error')))}")
        self._progress.advance(self._task)
        task = self._progress.tasks[self._task]
        rate = f"{task.completed / task.elapsed:.2f} jobs/s" if task.elapsed else ""
        self._progress.update(self._task, description="jobs", rate=rate)


def batch_to_stdout() -> None:
    err.print("[yellow]note:[/] records go to stdout as JSONL; stdout cannot be resumed, so an interrupted run "
              "starts over (use -o FILE to continue where it stopped)")  # fmt: skip


def batch_summary(summary: Any, to_stderr: bool = False) -> None:
    """Every record of the output (the numbers of <output>.summary.json), then this run's own counts."""
    totals = summary.totals
    table = Table(title="batch summary", title_justify="left", show_header=False, box=None, pad_edge=False)
    table.add_column(style="dim")
    table.add_column()
    n_error = totals["n_error"]
    table.add_row(
        "records",
        f"{totals['n_records']}: {totals['n_ok']} ok, " + (f"[red]{n_error} failed[/]" if n_error else "0 failed"),
    )
    if totals.get("mean_retention") is not None:
        table.add_row("mean retention", f"{totals['mean_retention'] * 100:.1f} %")
    acc = totals.get("accuracy")
    if acc:
        table.add_row("accuracy", f"{acc['overall'] * 100:.1f} % ({acc['n_correct']}/{acc['n_scored']})")
        for group, values in acc.get("by_group", {}).items():
            for name, v in values.items():
                table.add_row(
                    f"  {escape(group)}={escape(str(name))}",
                    f"{v['accuracy'] * 100:.1f} % ({v['n_correct']}/{v['n_scored']})",
                )
    this_run = f"{summary.n_done} done, " + (f"[red]{summary.n_failed} failed[/]" if summary.n_failed else "0 failed")
    this_run += f", {summary.n_skipped} already in the output"
    if summary.mean_time_s is not None:
        this_run += f"; {_fmt_s(summary.mean_time_s)} per job"
    table.add_row("this run", this_run)
    table.add_row("config", summary.config_hash)
    table.add_row("output", escape(summary.output if summary.output != "-" else "stdout"))
    if summary.summary_path:
        table.add_row("summary", escape(summary.summary_path))
    console = err if to_stderr else out
    console.print(table)
    if totals.get("levels"):
        _print_wide(console, level_table(totals["levels"], "by level"))


def _pct(x: float | None) -> str:
    return "" if x is None else f"{x * 100:.1f} %"


def _num(x: float | None, fmt: str = "{:.3g}") -> str:
    return "" if x is None else fmt.format(x)


def level_table(rows: Sequence[dict[str, Any]], title: str, label: str = "level") -> Table:
    """One row per level (or profile) of ``scoring.level_rows``; the accuracy columns only when answers are known,
    one extra column per task/category."""
    from scissor_cli.sweep import level_text

    scored = any(r.get("accuracy") for r in rows)
    groups = sorted(
        {(g, n) for r in rows if r.get("accuracy") for g, v in r["accuracy"]["by_group"].items() for n in v}
    )
    table = Table(title=title, title_justify="left")
    table.add_column(label, no_wrap=True)
    for col in ("n", "failed"):
        table.add_column(col, justify="right")
    if scored:
        table.add_column("accuracy", justify="right")
        for g, n in groups:
            table.add_column(escape(f"{g}={n}"), justify="right")
        table.add_column("vs 100 %", justify="right")
    # mean retention, mean visual tokens to the LLM, mean estimated prefill TFLOPs, mean seconds per answer
    for col in ("retention", "tokens", "TFLOPs", "s/answer"):
        table.add_column(col, justify="right")
    for r in rows:
        name = r["level"] if isinstance(r["level"], str) else level_text(r["level"])
        cells = [escape(name), str(r["n"]), str(r["n_error"])]
        if scored:
            acc = r.get("accuracy")
            cells.append(f"{_pct(acc['overall'])} ({acc['n_correct']}/{acc['n_scored']})" if acc else "")
            for g, n in groups:
                v = acc["by_group"].get(g, {}).get(n) if acc else None
                cells.append(_pct(v["accuracy"]) if v else "")
            cells.append(_pct(r.get("relative_accuracy")))
        cells += [
            _pct(r.get("mean_retention")),
            _num(r.get("mean_visual_tokens"), "{:,.0f}"),
            _num(r.get("mean_prefill_tflops")),
            _num(r.get("mean_answer_s"), "{:.2f}"),
        ]
        table.add_row(*cells)
    return table


def report_table(report: Any) -> None:
    """``scissor report``'s default output (a ``report.Report``)."""
    title = f"{', '.join(report.files)}: by {report.by}"
    rows = [{**row, "level": label} for label, row in zip(report.labels, report.rows, strict=True)]
    _print_wide(out, level_table(rows, escape(title), label=report.by))


def _print_wide(console: Console, table: Table) -> None:
    """Off a terminal (a file, a pipe) a wide table keeps its full width instead of wrapping at 80 columns."""
    if console.is_terminal:
        console.print(table)
        return
    from rich.measure import Measurement

    needed = Measurement.get(console, console.options.update(width=10_000), table).maximum
    Console(file=console.file, width=max(console.width, needed), highlight=False, soft_wrap=True).print(table)


def write_text(text: str) -> None:
    """Text made for files and other programs (Markdown, CSV): as is, no markup, no wrapping."""
    sys.stdout.write(text)
    sys.stdout.flush()


def note(text: str) -> None:
    err.print(f"[dim]{escape(text)}[/]")


def _size(n_bytes: int) -> str:
    """Bytes in the largest unit that keeps a digit before the point: 1.00 GiB, 12.3 MiB, 45.0 KiB, 0 B."""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.3g} {unit}" if n_bytes < 100 * scale else f"{n_bytes / scale:.0f} {unit}"
    return f"{n_bytes} B"


def cache_info(root: str, n_entries: int, n_bytes: int, max_bytes: int, as_json: bool = False) -> None:
    if as_json:
        write_json({"path": root, "entries": n_entries, "bytes": n_bytes, "max_bytes": max_bytes})
        return
    noun = "encoding" if n_entries == 1 else "encodings"
    out.print(f"{escape(root)}: {n_entries} {noun}, {_size(n_bytes)} of {_size(max_bytes)}")


def cache_cleared(root: str, n_removed: int) -> None:
    out.print(f"removed {n_removed} cached encodings from {escape(root)}")


def version(versions: dict[str, str | None], as_json: bool = False) -> None:
    if as_json:
        write_json(versions)
        return
    out.print(", ".join(f"{name} {v or '(not installed)'}" for name, v in versions.items()))


def doctor(report: dict[str, Any], as_json: bool = False) -> None:
    """``scissor doctor``: one row per thing that decides whether (and how fast) scissor runs here."""
    if as_json:
        write_json(report)
        return
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="dim")
    table.add_column(overflow="fold")  # wrap long paths, never cut them
    for name, v in report["versions"].items():
        table.add_row(name, escape(v) if v else "[red]not installed[/]")
    cuda = report["cuda"]
    if cuda["available"]:
        gpus = "; ".join(f"{g['index']}: {escape(g['name'])}, {g['memory_gib']} GiB" for g in cuda["gpus"])
        table.add_row("CUDA", f"{cuda['version']}  {gpus}")
    else:
        built = f" (torch built for CUDA {cuda['version']})" if cuda["version"] else ""
        table.add_row("CUDA", f"not available{built}: models run on " + ("mps" if report.get("mps") else "the CPU"))
    auto = report.get("dtype_auto")
    if auto:
        table.add_row("dtype auto", f"{auto['dtype']} on {auto['device']}: {escape(auto['why'])}")
    for tool in ("ffmpeg", "ffprobe"):
        v = report[tool]
        table.add_row(tool, escape(v) if v else "[red]not found[/] (install ffmpeg; needed for most videos)")
    fc = report["feature_cache"]
    table.add_row(
        "feature cache",
        f"{escape(fc['path'])}: {fc['entries']} {'entry' if fc['entries'] == 1 else 'entries'}, "
        f"{_size(fc['bytes'])} of {_size(fc['max_bytes'])}",
    )
    table.add_row("model cache", escape(report["hf_cache"]))
    table.add_row("offline", "yes (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)" if report["offline"] else "no")
    cfg = report["config"]
    table.add_row("config", escape(cfg["path"]) if cfg["path"] else "none")
    table.add_row("default model", escape(report["default_model"]))
    _print_table(table)


# ---------------------------------------------------------------------------------------------------- chat
CHAT_PROMPT = ">>> "


def _chat_tokens(s: Any) -> str:
    kept = f"{s.tokens['final']:,} visual tokens ({s.retention * 100:.1f} % of {s.tokens['original']:,})"
    if s.tau is None:
        return f"{kept}, compression off"
    how = f"budget {_budget_line(s.budget, s.tau)}" if s.budget else f"tau {_tau(s.tau, s.tau_temporal)}"
    return f"{kept}, {how}"


def chat_stats(s: Any) -> None:
    """A chat's video once it is prepared (and on /stats): on stderr, so stdout carries only answers."""
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="dim")
    table.add_column(overflow="fold")
    table.add_row("video", escape(s.video))
    table.add_row("frames", f"{s.frames}" + (f"  ({escape(s.note)})" if s.note else ""))
    _compression_rows(table, s)
    t = s.timings_s
    vision = "from cache" if s.cache_hit else f"decode {_fmt_s(t['decode'])}, vision {_fmt_s(t['vision'])}"
    table.add_row("time", f"load {_fmt_s(t['load'])}, {vision}, compression {_fmt_s(t['compression'])}")
    limit = f" of {s.max_context:,}" if s.max_context else ""
    turns = f"{s.n_history} earlier turn{'s' if s.n_history != 1 else ''}"
    table.add_row("context", f"{s.n_context:,}{limit} tokens before the next question ({turns})")
    table.add_row("model", f"{escape(s.model)} on {s.device} ({s.dtype})")
    with err.capture() as captured:
        err.print(table)
    err.file.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))
    err.file.flush()


def chat_intro() -> None:
    err.print("[dim]Ask about the video. /help lists the commands; Ctrl-C stops an answer, Ctrl-D ends.[/]")


# C0 controls and DEL except newline and tab: a model's text must not move the cursor or restyle the terminal
_TERMINAL_CONTROLS = {c: None for c in (*range(32), 127) if chr(c) not in "\n\t"}


def chat_text(piece: str) -> None:
    """A piece of an answer as it is generated (no markup; on a terminal, without control characters)."""
    if stdout.isatty():
        piece = piece.translate(_TERMINAL_CONTROLS)
    stdout.write(piece)
    stdout.flush()


def chat_turn(turn: Any, as_json: bool = False, streamed: bool = False) -> None:
    """A turn's answer on stdout (ended, when it was streamed) and its one-line cost on stderr; --json: the record."""
    if as_json:
        write_json(turn.to_dict())
    else:
        stdout.write(("" if streamed else turn.answer.answer) + "\n")
        stdout.flush()
    a, t = turn.answer, turn.answer.timings_s
    n_visual = a.tokens["final"]
    parts = [
        f"turn {turn.n}",
        f"{n_visual:,} visual + {turn.n_prompt_tokens - n_visual:,} text tokens in",
        f"{turn.n_new_tokens:,} out",
        f"{a.prefill_tokens:,} prefilled, {turn.n_prompt_tokens - a.prefill_tokens:,} from the cache"
        if a.prefill_tokens is not None and a.prefill_tokens < turn.n_prompt_tokens
        else "all prefilled",
        f"prefill {_fmt_s(t['prefill'])}, generation {_fmt_s(t['generation'])}",
    ]
    if turn.max_context:
        parts[2] += f" (context {turn.n_prompt_tokens + turn.n_new_tokens:,} of {turn.max_context:,})"
    prepared = t["decode"] + t["vision"] + t["compression"]
    if t["decode"] + t["vision"]:
        parts.append(f"video prepared in {_fmt_s(prepared)}")
    elif prepared:  # a /command re-compressed the features in memory
        parts.append(f"SCC {_fmt_s(prepared)}")
    stopped = " [yellow](stopped)[/]" if turn.stopped else ""
    err.print(f"[dim]{escape(' · '.join(parts))}[/]{stopped}")


def chat_change(change: Any) -> None:
    """What a /command changed: the visual tokens before and after, and whether the vision tower ran again."""
    before, after = change.before, change.after
    how = "decoded and encoded again" if change.vision_tower else "SCC on the features in memory, no vision tower"
    frames = f"{before.frames} → {after.frames} frames; " if before.frames != after.frames else ""
    video = f"now {escape(after.video)}; " if before.video != after.video else ""
    err.print(
        f"{escape(change.command)}: {video}{frames}{_chat_tokens(after)}  [dim](was {_chat_tokens(before)}; {how})[/]"
    )
    if change.n_forgotten:
        err.print(f"[dim]the conversation starts over ({change.n_forgotten} earlier turns forgotten)[/]")


def chat_reset(n_forgotten: int) -> None:
    err.print(f"conversation reset: {n_forgotten} earlier turn{'s' if n_forgotten != 1 else ''} forgotten")


def chat_help(commands: Sequence[tuple[str, str]]) -> None:
    width = max(len(usage) for usage, _ in commands)
    for usage, what in commands:
        err.print(f"  [bold]{escape(usage.ljust(width))}[/]  {escape(what)}")
    err.print("  [dim]anything else is a question; Ctrl-C stops an answer and keeps the session[/]")


def chat_stopped(text: str = "answer stopped") -> None:
    err.print(f"[yellow]{escape(text)}[/]")


def chat_lines(interactive: bool, history_file: str | None = None) -> Iterator[str]:
    """Input lines: on a terminal with line editing and history (stdlib readline; ``history_file`` kept between
    sessions), where Ctrl-C discards the line being typed and Ctrl-D ends; otherwise stdin's lines as they come."""
    if not interactive:
        for line in sys.stdin:
            yield line.rstrip("\n")
        return
    try:
        import readline  # importing it gives input() line editing and history
    except ImportError:  # a Python built without it (Windows): plain input(), no history
        readline = None  # type: ignore[assignment]
        history_file = None
    if readline is not None and history_file:
        with contextlib.suppress(OSError):
            readline.read_history_file(history_file)
        readline.set_history_length(1000)
    prompt_to_stderr = not stdout.isatty()  # `scissor chat v > log`: keep the prompt out of the log
    try:
        while True:
            try:
                if prompt_to_stderr:
                    err.file.write(CHAT_PROMPT)
                    err.file.flush()
                line = input("" if prompt_to_stderr else CHAT_PROMPT)
            except KeyboardInterrupt as e:
                if isinstance(e, Terminated):  # SIGTERM/SIGHUP end the session; Ctrl-C only the line
                    raise
                err.print("\n[dim](Ctrl-D or /quit ends the session)[/]")
                continue
            except EOFError:
                err.print()
                return
            yield line
    finally:
        if readline is not None and history_file:
            with contextlib.suppress(OSError):
                os.makedirs(os.path.dirname(history_file), exist_ok=True)
                readline.write_history_file(history_file)


# ---------------------------------------------------------------------------------------------------- serve
def serve_ready(url: str, model: str, notes: str) -> None:
    """``scissor serve``'s one line once the model is loaded: where it listens and what it serves."""
    err.print(f"serving {escape(model)} at {escape(url)} [dim]({escape(notes)})[/]")


def serve_stopped(text: str) -> None:
    err.print(f"[dim]{escape(text)}[/]")

"""The ``scissor`` process around the Typer app: signals, a closed stdout, and the one error seam.

Ctrl-C and a closed stdout are handled here, the way Unix tools do: one ``interrupted`` line and exit 130 at any
moment (SIGTERM and SIGHUP alike: the same cleanup and line, exit 143 and 129); a reader that goes away
(``| head -1``) ends the command quietly with exit 0. cli.py imports this module before typer and rich, so the
handlers are in place while those import.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

_IMPORTED_AT = time.perf_counter()  # ~ process start when run as `scissor` (the interpreter's start-up aside)
# Ctrl-C state: "raise" is False until main() runs: an interrupt during the imports below has nothing to clean up,
# so the handler exits on the spot (a KeyboardInterrupt there would escape as a traceback from the import line).
# SIGTERM and SIGHUP take the same path ("signum" says which came first; the exit code is 128 + it).
_sigint = {"seen": False, "reported": False, "raise": False, "main": False}
_STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def _exit_code() -> int:
    """130 after Ctrl-C, 143 after SIGTERM, 129 after SIGHUP: what a shell reports for a command they ended."""
    return 128 + int(_sigint.get("signum", signal.SIGINT))


def _signal_note() -> str:
    signum = _sigint.get("signum", signal.SIGINT)
    return "" if signum == signal.SIGINT else f" ({signal.Signals(signum).name})"


def _on_sigint(signum: int, frame: object) -> None:
    """SIGINT, SIGTERM and SIGHUP: unwind as a KeyboardInterrupt (SIGTERM/SIGHUP: its subclass Terminated), so
    the command's cleanup runs and it ends with one line; during the imports, or on a second signal, exit at once."""
    if _sigint["seen"] or not _sigint["raise"]:  # during imports, or a second signal while the first unwinds
        _sigint.setdefault("signum", signum)
        if not _sigint["reported"]:
            _sigint["reported"] = True
            with contextlib.suppress(OSError):  # SIGHUP: the terminal may be gone
                os.write(2, f"interrupted{_signal_note()}\n".encode())
        os._exit(_exit_code())
    _sigint["seen"] = True
    _sigint["signum"] = signum
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    from scissor_cli.errors import Terminated

    raise Terminated(signum)


def _install_handlers() -> None:
    """Ctrl-C where Python's own handler is; SIGTERM/SIGHUP where they are at their default (killing us without
    cleanup). An ignored SIGHUP (``nohup scissor batch ...``) stays ignored."""
    if signal.getsignal(signal.SIGINT) in (signal.default_int_handler, _on_sigint):
        signal.signal(signal.SIGINT, _on_sigint)
    for signum in _STOP_SIGNALS:
        if signal.getsignal(signum) in (signal.SIG_DFL, _on_sigint):
            signal.signal(signum, _on_sigint)


def _running_as_command() -> bool:
    """This process is the `scissor` command (console script or python -m scissor_cli), not a library user."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return os.path.basename(sys.argv[0] or "") in ("scissor", "scissor.exe") or (
        getattr(spec, "name", None) == "scissor_cli.__main__"
    )


if _running_as_command() and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    _install_handlers()

import typer  # noqa: E402 - after the handler, so Ctrl-C while typer and rich import is one clean line

from scissor_cli import render  # noqa: E402
from scissor_cli.errors import Interrupted, ScissorError, StdoutClosed, debug_enabled  # noqa: E402

F = TypeVar("F", bound=Callable[..., Any])


def _report_interrupt(message: str | None = None) -> None:
    if not _sigint["reported"]:
        _sigint["reported"] = True
        with contextlib.suppress(OSError):  # SIGHUP: the terminal may be gone
            render.interrupted(message, _signal_note().strip(" ()") or None)


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
    such as an ffmpeg child killed by the same Ctrl-C) ends it as one ``interrupted`` line with exit 130 (143
    after SIGTERM, 129 after SIGHUP)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not _sigint["main"]:  # in-process (tests): time the command, not the test session
            _command_clock["start"] = time.perf_counter()
        try:
            with render.library_warnings():
                return fn(*args, **kwargs)
        except typer.Exit:
            raise
        except StdoutClosed:
            _quiet_stdout()
            raise typer.Exit(0) from None
        except Interrupted as e:
            if debug_enabled():
                render.err.print_exception()
            _report_interrupt(e.message)
            raise typer.Exit(_exit_code() if _sigint["seen"] else e.exit_code) from None
        except KeyboardInterrupt:
            if debug_enabled():
                render.err.print_exception()
            _report_interrupt()
            raise typer.Exit(_exit_code()) from None
        except ScissorError as e:
            if debug_enabled():
                render.err.print_exception()
            if _sigint["seen"]:
                _report_interrupt()
                raise typer.Exit(_exit_code()) from None
            render.error(e)
            raise typer.Exit(e.exit_code) from None
        except Exception as e:
            if debug_enabled():
                raise
            if _sigint["seen"]:
                _report_interrupt()
                raise typer.Exit(_exit_code()) from None
            render.internal_error(e)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def run(app: Callable[[], Any]) -> None:
    """The `scissor` console script's body (``cli.main``): app() with Ctrl-C as one line and exit 130 at any
    moment (SIGTERM 143, SIGHUP 129)."""
    _sigint["main"] = True
    if signal.getsignal(signal.SIGINT) in (signal.default_int_handler, _on_sigint):
        _sigint["raise"] = True  # from here on a signal unwinds (closing progress bars, saving batch work)
        _install_handlers()
    was_devnull = _stdout_is_devnull()
    try:
        app()
    except SystemExit as e:
        if _sigint["seen"]:  # however the command ended (typer turns a stray KeyboardInterrupt into exit 130)
            _report_interrupt()
            raise SystemExit(_exit_code()) from None
        # rich's and typer's own exit on EPIPE, e.g. `scissor ask --help | head -1`
        if e.code == 1 and _stdout_reader_gone(was_devnull):
            _quiet_stdout()
            raise SystemExit(0) from None
        raise
    except KeyboardInterrupt:
        _report_interrupt()
        raise SystemExit(_exit_code()) from None

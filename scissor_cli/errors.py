"""The one error seam. Core code raises these (``from e``); the CLI prints one line plus a hint and exits
with the class's code. Standard library only."""

from __future__ import annotations

import os
import string
from collections.abc import Mapping, Sequence


def debug_enabled() -> bool:
    """``SCISSOR_DEBUG`` is set to something other than empty, 0, false or no: tracebacks and full logs are shown."""
    return os.environ.get("SCISSOR_DEBUG", "").strip() not in ("", "0", "false", "no")


class ScissorError(Exception):
    """Something the user can act on: ``message`` says what is wrong, ``hint`` what to do about it."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class OptionError(ScissorError):
    """An option value out of range or contradictory (``--tau 2``, ``--retention`` with ``--tokens``).

    ``keys``: the settings it is about (``"sampling.n_frames"``). Then ``message`` and ``hint`` are templates in
    which ``{0}``, ``{1}``, ... stand for the keys and ``{0:=}`` for "the key set to" (``sampling.n_frames = 8`` in
    a profile's words, ``--frames 8`` in a flag's); ``spelled`` formats them as a front end spells its settings.
    Unspelled, the text names the dotted keys (what a profile file says). Values put into a template go through
    ``literal``."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None, keys: Sequence[str] = ()):
        self.keys = tuple(keys)
        self.template = (message, hint)
        if self.keys:
            message, hint = _fill(self.template, self.keys, " =")
        super().__init__(message, hint)

    def spelled(self, names: Mapping[str, str], assign: str = "") -> OptionError:
        """The same error naming each key by ``names[key]`` (a front end's spelling; a key not in ``names`` keeps
        its dotted name), ``{0:=}`` as the name + ``assign`` (``--frames 8``; " =": ``frames = 8``)."""
        if not self.keys:
            return self
        e = OptionError(*_fill(self.template, [names.get(k, k) for k in self.keys], assign))
        e.keys, e.template = self.keys, self.template
        return e


class _Names(string.Formatter):
    def __init__(self, assign: str):
        self.assign = assign

    def format_field(self, value: object, format_spec: str) -> str:
        return f"{value}{self.assign}" if format_spec == "=" else format(value, format_spec)


def _fill(template: tuple[str, str | None], names: Sequence[str], assign: str) -> tuple[str, str | None]:
    message, hint = template
    fmt = _Names(assign)
    return fmt.format(message, *names), None if hint is None else fmt.format(hint, *names)


def literal(value: object) -> str:
    """``repr(value)`` for an ``OptionError`` template: its braces are text, not places for keys."""
    return repr(value).replace("{", "{{").replace("}", "}}")


class ProfileError(ScissorError):
    """A profile that cannot be found, parsed or validated."""

    exit_code = 3


class VideoError(ScissorError):
    """A path that is not a readable video (missing, empty, corrupt, audio-only, ...)."""

    exit_code = 4


class ModelError(ScissorError):
    """A checkpoint that cannot be found, downloaded or loaded."""

    exit_code = 5


class ManifestError(ScissorError):
    """A batch manifest or output file that cannot be read or written."""

    exit_code = 6


class ScissorWarning(Warning):
    """Something went wrong and was repaired, worth one line (e.g. a corrupt cache entry, deleted and recomputed).
    Library code raises it with ``warnings.warn``; the CLI renders it as ``warning: ...``."""


class Interrupted(ScissorError):
    """Ctrl-C (SIGINT), SIGTERM or SIGHUP: the message says what was kept (e.g. how many batch jobs are saved).
    The CLI exits 128 + the signal's number: 130, 143 or 129."""

    exit_code = 130


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised by the CLI's handler where the signal lands. A KeyboardInterrupt, so that every
    cleanup a Ctrl-C runs (temporary files, decode workers, batch's saved count) runs too; code that turns Ctrl-C
    into "stop this step and go on" (chat) re-raises it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class StdoutClosed(Exception):
    """The reader of stdout went away (EPIPE): what was written stays written, the rest has nowhere to go.
    Raised by render (and batch's ``-o -`` lines); the CLI ends quietly with exit 0, the way Unix tools do."""


def shorten(text: str, limit: int = 200) -> str:
    """``text`` if it has at most ``limit`` characters, else its first ``limit`` and how long it was:
    ``"What is … (104857600 characters)"``. Keeps records and printed lines short whatever a user passed."""
    text = str(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters)"

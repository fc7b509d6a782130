"""The one error seam. Core code raises these (``from e``); the CLI prints one line plus a hint and exits
with the class's code. Standard library only."""

from __future__ import annotations


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
    """An option value out of range or contradictory (``--tau 2``, ``--retention`` with ``--tokens``)."""

    exit_code = 2


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

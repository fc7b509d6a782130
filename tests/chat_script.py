"""Drive a ``ChatSession`` through a scripted conversation, as the terminal loop would (test helper)."""

from __future__ import annotations

from collections.abc import Sequence


def replies(session, clip, lines: Sequence[str]) -> list:
    """Open ``clip`` in ``session``, hand it each line (questions and ``/commands``) and return the turns the
    questions produced, in order."""
    from scissor_cli.chat import handle

    session.open(clip)
    turns = []
    for line in lines:
        reply = handle(session, line)
        if not line.startswith("/"):
            turns.append(reply)
    return turns

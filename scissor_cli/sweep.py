"""Sweeps: one record per job and level (``Sweep("retention", (1.0, 0.5, 0.1))``, the CLI's comma lists), and the
level helpers batch, report and render share (a record's ``level``, its text and sort key). Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from scissor_cli.errors import OptionError
from scissor_cli.options import Profile

# ------------------------------------------------------------------------------------------------ levels (sweeps)
SWEEP_AXES = ("retention", "tokens", "tau")


def level_text(level: dict | None) -> str:
    """``{"retention": 0.1}`` -> ``retention=0.1`` (the part after ``@`` in a sweep record's id)."""
    if not level:
        return "?"
    ((axis, value),) = level.items()
    return f"{axis}={value:g}" if isinstance(value, (int, float)) else f"{axis}={value}"


def level_key(level: dict | None) -> tuple:
    if not level:
        return ("", 0.0)
    ((axis, value),) = level.items()
    return (str(axis), float(value) if isinstance(value, (int, float)) else 0.0)


def level_from_key(key: tuple) -> dict | None:
    if not key[0]:
        return None
    return {key[0]: int(key[1]) if key[0] == "tokens" else key[1]}


def level_order(item: tuple) -> tuple:
    # axes in SWEEP_AXES order, each from the most to the least kept (the paper's table: 100 % first)
    (axis, value), _ = item
    return (SWEEP_AXES.index(axis) if axis in SWEEP_AXES else len(SWEEP_AXES), axis, -value)


def record_level(record: dict) -> dict | None:
    """A record's sweep level: its ``level`` field, else read from its run's ``config`` (a single-level run):
    compression off -> ``{"retention": 1.0}``, a retention or token budget, else the threshold (tau) used."""
    level = record.get("level")
    if isinstance(level, dict) and len(level) == 1:
        return level
    config = record.get("config")
    compression = config.get("compression") if isinstance(config, dict) else None
    if not isinstance(compression, dict):
        return None
    if compression.get("enabled") is False:
        return {"retention": 1.0}
    for axis in ("retention", "tokens"):
        if compression.get(axis) is not None:
            return {axis: compression[axis]}
    tau = compression.get("tau") if compression.get("tau") is not None else record.get("tau")
    return {"tau": tau} if isinstance(tau, (int, float)) else None


# ------------------------------------------------------------------------------------------------------- sweeps
@dataclass(frozen=True)
class Sweep:
    """Several levels of one setting in one run: ``axis`` is retention (1 = uncompressed), tokens or tau."""

    axis: str
    values: tuple[float | int, ...]

    def level(self, value: float | int) -> dict[str, float | int]:
        return {self.axis: int(value) if self.axis == "tokens" else float(value)}

    def levels(self) -> list[dict[str, float | int]]:
        return [self.level(v) for v in self.values]

    def profile_for(self, profile: Profile, value: float | int) -> Profile:
        """``profile`` at one level, by the flags' rule: a retention or token level replaces any budget and tau
        (retention 1: compression off); a tau level sets the threshold and drops any budget. Always validated."""
        from scissor_cli.options import validate

        c = profile.compression
        if self.axis == "retention":
            off = value == 1  # 1: every token, the model's own path (not SCC with a no-op budget)
            c = replace(c, enabled=not off, retention=None if off else float(value), tokens=None, tau=None)
        elif self.axis == "tokens":
            c = replace(c, enabled=True, retention=None, tokens=int(value), tau=None)
        else:
            c = replace(c, enabled=True, tau=float(value), retention=None, tokens=None)
        return validate(replace(profile, compression=c))

    def base_profile(self, profile: Profile) -> Profile:
        """What the run's ``config`` is made from: the profile with the swept setting left unset, so that one
        output holds every level of the sweep (each record's ``level`` says which)."""
        c = profile.compression
        if self.axis == "tau":
            c = replace(c, enabled=True, tau=None)
        else:
            c = replace(c, enabled=True, retention=None, tokens=None)
        return replace(profile, compression=c)


def parse_levels(flag: str, text: str | None) -> list[float | int] | None:
    """``"1,0.5,0.1"`` -> ``[1.0, 0.5, 0.1]`` (``--tokens``: integers); None for None. Repeats are dropped,
    the order is kept. Raises OptionError naming ``flag`` for anything that is not such a list."""
    if text is None:
        return None
    kind = int if flag == "--tokens" else float
    parts = [p.strip() for p in str(text).split(",")]
    example = "--tokens 1000,500,200" if kind is int else f"{flag} 1,0.5,0.35,0.1,0.05"
    if not parts or any(not p for p in parts):
        raise OptionError(f"{flag} {text!r} has an empty value", hint=f"give a number or a comma list: {example}")
    values: list[float | int] = []
    for part in parts:
        try:
            value = kind(part)
        except ValueError:
            what = "an integer" if kind is int else "a number"
            raise OptionError(f"{flag}: {part!r} is not {what}", hint=f"e.g. {example}") from None
        if value not in values:
            values.append(value)
    return values


def sweep_from_flags(retention: str | None, tokens: str | None, tau: str | None) -> tuple[Sweep | None, dict]:
    """(the sweep, or None, and the single values left for the profile) from the batch command's three flags.
    Two lists at once is an OptionError (one sweep axis per run)."""
    given = {"retention": parse_levels("--retention", retention), "tokens": parse_levels("--tokens", tokens),
             "tau": parse_levels("--tau", tau)}  # fmt: skip
    lists = [axis for axis in SWEEP_AXES if given[axis] is not None and len(given[axis]) > 1]
    if len(lists) > 1:
        raise OptionError(
            f"{' and '.join('--' + a for a in lists)} are both lists: a run sweeps one setting",
            hint="sweep one of them and give the other one value, or run the sweeps into separate outputs",
        )
    singles = {axis: (v[0] if v is not None and axis not in lists else None) for axis, v in given.items()}
    if not lists:
        return None, singles
    axis = lists[0]
    return Sweep(axis, tuple(given[axis])), singles

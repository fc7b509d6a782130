"""YAML profiles -> ``Profile`` (strictly), and name resolution.

A profile file holds any of the sections of ``options.Profile`` (``sampling``, ``compression``, ``generation``,
``model``) plus a ``description``. Keys are the dataclass field names; ``auto`` (or ``null``) means "let scissor
decide" where a field allows None. Anything else is an error naming the file, the dotted key and what is allowed.

Where profiles come from, first match wins: a path (anything ending in .yaml/.yml or naming an existing file),
then the user's folder (``$SCISSOR_PROFILES_DIR``, else ``~/.config/scissor/profiles``), then the built-in
``profiles/`` folder shipped with scissor. Precedence of values: built-in defaults < profile < command-line flags.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from scissor_cli.errors import OptionError, ProfileError
from scissor_cli.options import SECTIONS, Profile, validate

SUFFIXES = (".yaml", ".yml")
TOP_KEYS = ("description", *SECTIONS)


@dataclass(frozen=True)
class ProfileEntry:
    name: str
    description: str
    source: str  # "built-in" | "user"
    path: Path


def builtin_dir() -> Path:
    """The shipped profiles: ``scissor_cli/builtin_profiles`` when installed, ``profiles/`` in a checkout."""
    try:
        installed = Path(str(resources.files("scissor_cli.builtin_profiles")))
        if installed.is_dir() and any(installed.glob("*.yaml")):
            return installed
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parent.parent / "profiles"


def user_dir() -> Path:
    env = os.environ.get("SCISSOR_PROFILES_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "scissor" / "profiles"


def _entries(folder: Path, source: str) -> dict[str, ProfileEntry]:
    found = {}
    if folder.is_dir():
        for path in sorted(p for p in folder.iterdir() if p.suffix in SUFFIXES):
            found[path.stem] = ProfileEntry(path.stem, _description(path), source, path)
    return found


def _description(path: Path) -> str:
    try:
        data = _read_yaml(path)
    except ProfileError as e:
        return f"(invalid: {e.message})"
    return str(data.get("description", "")) if isinstance(data, dict) else "(invalid: not a mapping)"


def list_profiles() -> list[ProfileEntry]:
    """Built-in profiles, then user profiles; a user profile with a built-in's name shadows it."""
    merged = {**_entries(builtin_dir(), "built-in"), **_entries(user_dir(), "user")}
    return sorted(merged.values(), key=lambda e: (e.source != "built-in", e.name))


def find_profile(name_or_path: str) -> Path:
    candidate = Path(name_or_path).expanduser()
    if name_or_path.endswith(SUFFIXES) or os.sep in name_or_path or candidate.is_file():
        if candidate.is_dir():
            raise ProfileError(f"profile {name_or_path} is a directory", hint="give one .yaml file or a profile name")
        if not candidate.is_file():
            raise ProfileError(
                f"profile file {name_or_path} does not exist",
                hint="check the path, or give a profile name from `scissor profiles list`",
            )
        return candidate
    for folder in (user_dir(), builtin_dir()):
        for suffix in SUFFIXES:
            path = folder / f"{name_or_path}{suffix}"
            if path.is_file():
                return path
    names = ", ".join(e.name for e in list_profiles()) or "none found"
    raise ProfileError(
        f"unknown profile {name_or_path!r}", hint=f"available profiles: {names}; or give a path to a .yaml file"
    )


def _read_yaml(path: Path) -> Any:
    import yaml  # light (pure Python); kept local so `import scissor_cli.profiles` stays cheap

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ProfileError(f"cannot read profile {path}: {e.strerror or e}", hint="check the file's permissions") from e
    except UnicodeDecodeError as e:
        raise ProfileError(f"profile {path} is not UTF-8 text", hint="save it as a UTF-8 YAML file") from e
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = ""
        mark = getattr(e, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ProfileError(
            f"profile {path} is not valid YAML{where}: {problem}",
            hint="fix the YAML syntax (indentation, colons, quotes)",
        ) from e


def _field_kind(annotation: str) -> tuple[str, bool]:
    """'float | None' -> ('float', True). Annotations are strings (``from __future__ import annotations``)."""
    parts = [p.strip() for p in annotation.split("|")]
    optional = "None" in parts
    base = next(p for p in parts if p != "None")
    return base, optional


def _coerce(path: Path, key: str, value: Any, annotation: str) -> Any:
    base, optional = _field_kind(annotation)
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        if optional:
            return None
        raise ProfileError(f"{path}: {key} cannot be {value!r}", hint=f"{key} needs a {base} value")
    ok = {
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "str": isinstance(value, (str, int, float)) and not isinstance(value, bool),
    }[base]
    if not ok:
        allowed = {"bool": "true or false", "int": "an integer", "float": "a number", "str": "a string"}[base]
        if optional:
            allowed += " or auto"
        raise ProfileError(f"{path}: {key} = {value!r} is not {allowed}", hint=f"set {key} to {allowed}")
    if base == "float":
        return float(value)
    if base == "str":
        return str(value)
    return value


def load_profile(name_or_path: str | None = None) -> Profile:
    """The resolved profile for a name or path (None: the built-in defaults, i.e. the ``default`` profile)."""
    if name_or_path is None:
        name_or_path = "default"
    path = find_profile(name_or_path)
    data = _read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProfileError(
            f"profile {path} must be a mapping of sections, not {type(data).__name__}",
            hint=f"top-level keys allowed: {', '.join(TOP_KEYS)}",
        )
    profile = Profile(name=path.stem)
    for key, value in data.items():
        if key not in TOP_KEYS:
            raise ProfileError(f"{path}: unknown key {key!r}", hint=f"allowed top-level keys: {', '.join(TOP_KEYS)}")
        if key == "description":
            profile = replace(profile, description="" if value is None else str(value))
            continue
        if value is None:
            continue
        if not isinstance(value, dict):
            raise ProfileError(
                f"{path}: {key} must be a mapping, not {type(value).__name__}",
                hint=f"allowed keys under {key}: {', '.join(f.name for f in fields(SECTIONS[key]))}",
            )
        known = {f.name: f for f in fields(SECTIONS[key])}
        changes = {}
        for sub, sub_value in value.items():
            dotted = f"{key}.{sub}"
            if sub not in known:
                raise ProfileError(
                    f"{path}: unknown key {dotted!r}", hint=f"allowed keys under {key}: {', '.join(known)}"
                )
            changes[sub] = _coerce(path, dotted, sub_value, str(known[sub].type))
        profile = replace(profile, **{key: replace(getattr(profile, key), **changes)})
    try:
        return validate(profile)
    except OptionError as e:
        raise ProfileError(f"{path}: {e.message}", hint=e.hint) from e

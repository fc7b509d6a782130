"""YAML profiles -> ``Profile`` (strictly), and name resolution.

A profile file holds any of the sections of ``options.Profile`` (``sampling``, ``compression``, ``generation``,
``model``) plus a ``description``. Keys are the dataclass field names; ``auto`` (or ``null``) means "let scissor
decide" where a field allows None. Anything else is an error naming the file, the dotted key and what is allowed.

Names and paths are told apart by how they look, never by what happens to be in the working directory: anything
with a path separator or ending in .yaml/.yml is a file path; anything else is a profile name, looked up in the
user's folder (``$SCISSOR_PROFILES_DIR``, else ``$XDG_CONFIG_HOME/scissor/profiles``, else
``~/.config/scissor/profiles``), then in the built-in ``profiles/`` folder shipped with scissor. So a file ``r10``
in the working directory never hijacks ``--profile r10`` (``--profile ./r10`` means the file).

Precedence of values: built-in defaults < user config (``config.py``) < profile < command-line flags.
``profile_yaml`` prints a profile as a file that loads back to the same profile.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from scissor_cli.errors import OptionError, ProfileError
from scissor_cli.options import SECTIONS, Profile, normalize_dtype, validate

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
        data = read_yaml(path)
    except ProfileError as e:
        return f"(invalid: {e.message})"
    return str(data.get("description", "")) if isinstance(data, dict) else "(invalid: not a mapping)"


def list_profiles() -> list[ProfileEntry]:
    """Built-in profiles, then user profiles; a user profile with a built-in's name shadows it."""
    merged = {**_entries(builtin_dir(), "built-in"), **_entries(user_dir(), "user")}
    return sorted(merged.values(), key=lambda e: (e.source != "built-in", e.name))


def is_path(name_or_path: str) -> bool:
    """A profile path has a separator or a .yaml/.yml ending; anything else is a name."""
    seps = {"/", os.sep, os.altsep} - {None}
    return name_or_path.endswith(SUFFIXES) or any(sep in name_or_path for sep in seps)


def find_profile(name_or_path: str) -> Path:
    candidate = Path(name_or_path).expanduser()
    if is_path(name_or_path):
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
    import difflib

    names = [e.name for e in list_profiles()]
    close = difflib.get_close_matches(name_or_path, names, n=1, cutoff=0.5)
    message = f"unknown profile {name_or_path!r}" + (f" (did you mean {close[0]}?)" if close else "")
    hint = f"available profiles: {', '.join(names) or 'none found'}"
    if candidate.is_file():
        hint += f"; to use the file {name_or_path} here, write --profile ./{name_or_path}"
    else:
        hint += "; or give a path to a .yaml file"
    raise ProfileError(message, hint=hint)


def read_yaml(path: Path, what: str = "profile") -> Any:
    """Parsed YAML of a profile (or the user config: ``what``), or ProfileError naming the file and the line."""
    import yaml  # light (pure Python); kept local so `import scissor_cli.profiles` stays cheap

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ProfileError(f"cannot read {what} {path}: {e.strerror or e}", hint="check the file's permissions") from e
    except UnicodeDecodeError as e:
        raise ProfileError(f"{what} {path} is not UTF-8 text", hint="save it as a UTF-8 YAML file") from e
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = ""
        mark = getattr(e, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ProfileError(
            f"{what} {path} is not valid YAML{where}: {problem}",
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
        if base == "str" and value is not None:  # device and dtype: "auto" is one of their own values
            return "auto"
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


def load_profile(name_or_path: str | None = None, base: Profile | None = None) -> Profile:
    """The resolved profile for a name or path (None: the built-in defaults, i.e. the ``default`` profile).

    ``base``: the values the profile's keys override (the user config's model/device/dtype); default ``Profile()``.
    """
    if name_or_path is None:
        name_or_path = "default"
    path = find_profile(name_or_path)
    data = read_yaml(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProfileError(
            f"profile {path} must be a mapping of sections, not {type(data).__name__}",
            hint=f"top-level keys allowed: {', '.join(TOP_KEYS)}",
        )
    profile = replace(base or Profile(), name=path.stem, description="")
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
            if dotted == "model.dtype":
                changes[sub] = normalize_dtype(changes[sub])
        profile = replace(profile, **{key: replace(getattr(profile, key), **changes)})
    try:
        return validate(profile)
    except OptionError as e:
        raise ProfileError(f"{path}: {e.message}", hint=e.hint) from e


# What "auto"/null means for each optional field, written as a comment next to it by ``profile_yaml``.
_NULL_MEANS = {
    "sampling.fps": "null: n_frames spread uniformly; a number: frames per second (capped by n_frames)",
    "sampling.start": "null: the beginning; seconds",
    "sampling.end": "null: the end; seconds",
    "sampling.memory_budget": "auto: half of the available memory; or a size (8G, 512M) or a fraction (0.5)",
    "compression.tau": "auto: the checkpoint's mm_zip_tau, else the paper's 0.9 (leave auto with a budget)",
    "compression.epsilon": "auto: the checkpoint's mm_zip_epsilon, else the paper's 0.05",
    "compression.tau_temporal": "auto: same as tau",
    "compression.retention": "budget: keep at most this fraction of the visual tokens (tau searched per video)",
    "compression.tokens": "budget: keep at most this many visual tokens",
    "generation.seed": "seeds sampling when temperature > 0",
    "model.revision": "null: the default branch",
    "model.newline": "auto: llava-hf checkpoints yes, original ones no",
}
_AUTO = (
    "sampling.memory_budget",
    "compression.tau",
    "compression.epsilon",
    "compression.tau_temporal",
    "model.newline",
)


def _yaml_scalar(value: Any) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True, width=10**9).removesuffix("\n...\n").strip()


def profile_yaml(profile: Profile, source: str) -> str:
    """``profile`` as YAML that ``load_profile`` reads back to the same settings: every key, with comments saying
    where it came from and what auto/null means. Copy it into a file, edit, and pass it to ``--profile``."""
    lines = [f"# profile {profile.name} ({source})", "# copy into a .yaml file, edit, and use with --profile FILE"]
    lines.append(f"description: {_yaml_scalar(profile.description)}")
    data = profile.to_dict()
    for section in SECTIONS:
        lines.append(f"{section}:")
        for key, value in data[section].items():
            dotted = f"{section}.{key}"
            shown = "auto" if value is None and dotted in _AUTO else _yaml_scalar(value)
            note = _NULL_MEANS.get(dotted)
            lines.append(f"  {key}: {shown}" + (f"  # {note}" if note else ""))
    return "\n".join(lines) + "\n"

"""The user's defaults: a small YAML file and ``SCISSOR_MODEL``.

The config file is ``$SCISSOR_CONFIG`` when set, else ``$XDG_CONFIG_HOME/scissor/config.yaml``, else
``~/.config/scissor/config.yaml``. It may set four keys, loaded as strictly as a profile (unknown key or bad value:
an error naming the file and the key)::

    model: llava-hf/llava-onevision-qwen2-7b-ov-hf   # hub id or local folder
    device: cuda:1
    dtype: bf16
    cache_dir: /data/scissor-cache                   # the feature cache (like SCISSOR_CACHE_DIR)

Precedence, lowest first: built-in defaults < config file < ``SCISSOR_MODEL`` < profile < flags. A profile that
names a model beats the user's default model (the profile was written for it); a flag beats everything. An
explicit ``SCISSOR_CACHE_DIR`` beats the file's ``cache_dir`` (``cache.default_root``). Standard library + PyYAML.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from scissor_cli.errors import OptionError, ProfileError
from scissor_cli.options import Profile, normalize_dtype, validate

KEYS = ("model", "device", "dtype", "cache_dir")


@dataclass(frozen=True)
class UserConfig:
    path: Path | None  # the file read, None when there is none
    model: str | None = None
    device: str | None = None
    dtype: str | None = None
    cache_dir: str | None = None
    env_model: str | None = None  # SCISSOR_MODEL

    def base_profile(self) -> Profile:
        """The built-in defaults with this config's (and SCISSOR_MODEL's) model settings: what profiles override."""
        p = Profile()
        changes = {"model": self.model, "device": self.device, "dtype": self.dtype}
        if self.env_model:
            changes["model"] = self.env_model
        kept = {k: v for k, v in changes.items() if v is not None}
        return replace(p, model=replace(p.model, **kept)) if kept else p


def config_path() -> tuple[Path, bool]:
    """(the config file's path, whether SCISSOR_CONFIG named it explicitly)."""
    env = os.environ.get("SCISSOR_CONFIG", "").strip()
    if env:
        return Path(env).expanduser(), True
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "scissor" / "config.yaml", False


def load_config() -> UserConfig:
    """Read the config file (if any) and SCISSOR_MODEL; raise ProfileError naming the file and key when invalid."""
    path, explicit = config_path()
    env_model = os.environ.get("SCISSOR_MODEL", "").strip() or None
    if not path.exists():
        if explicit:
            raise ProfileError(
                f"config file {path} (SCISSOR_CONFIG) does not exist", hint="fix the path or unset SCISSOR_CONFIG"
            )
        return UserConfig(None, env_model=env_model)
    if path.is_dir():
        raise ProfileError(
            f"config file {path} is a directory", hint=f"it should be a YAML file with {', '.join(KEYS)}"
        )
    from scissor_cli.profiles import read_yaml

    data = read_yaml(path, what="config file")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProfileError(f"config file {path} must be a mapping", hint=f"allowed keys: {', '.join(KEYS)}")
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in KEYS:
            raise ProfileError(f"{path}: unknown key {key!r}", hint=f"allowed keys: {', '.join(KEYS)}")
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            raise ProfileError(f"{path}: {key} = {value!r} is not a string", hint=f"set {key} to a non-empty string")
        values[key] = normalize_dtype(value.strip()) if key == "dtype" else value.strip()
    config = UserConfig(path, env_model=env_model, **values)
    try:
        validate(config.base_profile())
    except OptionError as e:  # the file's keys are the model section's, without "model."
        source = f"{path} or SCISSOR_MODEL" if env_model else str(path)
        e = e.spelled({key: key.removeprefix("model.") for key in e.keys}, assign=" =")
        raise ProfileError(f"{source}: {e.message}", hint=e.hint) from e
    return config

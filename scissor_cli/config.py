"""The user's defaults (a small YAML file and ``SCISSOR_MODEL``) and the environment report behind ``scissor doctor``.

The config file is ``$SCISSOR_CONFIG`` when set, else ``$XDG_CONFIG_HOME/scissor/config.yaml``, else
``~/.config/scissor/config.yaml``. It may set four keys, loaded as strictly as a profile (unknown key or bad value:
an error naming the file and the key)::

    model: llava-hf/llava-onevision-qwen2-7b-ov-hf   # hub id or local folder
    device: cuda:1
    dtype: bf16
    cache_dir: /data/scissor-cache                   # the feature cache (like SCISSOR_CACHE_DIR)

Precedence, lowest first: built-in defaults < config file < ``SCISSOR_MODEL`` < profile < flags. A profile that
names a model beats the user's default model (the profile was written for it); a flag beats everything. An
explicit ``SCISSOR_CACHE_DIR`` beats the file's ``cache_dir``. Standard library + PyYAML; torch is imported only by
``environment_report``.
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
    except OptionError as e:
        source = f"{path} or SCISSOR_MODEL" if env_model else str(path)
        raise ProfileError(f"{source}: {e.message.replace('model.', '')}", hint=e.hint) from e
    return config


def apply_cache_dir(config: UserConfig) -> None:
    """The config's cache_dir becomes the feature cache's folder unless SCISSOR_CACHE_DIR says otherwise."""
    if config.cache_dir and not os.environ.get("SCISSOR_CACHE_DIR"):
        os.environ["SCISSOR_CACHE_DIR"] = str(Path(config.cache_dir).expanduser())


# ---------------------------------------------------------------------------------------------------- doctor
def _tool_version(tool: str) -> str | None:
    """First line of ``tool -version`` (ffmpeg, ffprobe), e.g. 'ffmpeg version 6.1.1-3ubuntu5'; None if missing."""
    import shutil
    import subprocess

    exe = shutil.which(tool)
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "-version"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    first = (out.stdout or "").splitlines()[:1]
    return first[0].split(" Copyright")[0].strip() if first else None


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    """scissor and its main dependencies' versions from package metadata (nothing heavy is imported)."""
    import platform

    from scissor_cli import __version__

    out: dict[str, str | None] = {"scissor": __version__, "python": platform.python_version()}
    for dist in ("torch", "transformers", "decord"):
        out[dist] = _dist_version(dist)
    return out


def environment_report() -> dict[str, Any]:
    """What ``scissor doctor`` shows: versions, the accelerator, ffmpeg, the caches, offline mode, the config."""
    from scissor_cli.cache import FeatureCache

    config = load_config()
    apply_cache_dir(config)
    report: dict[str, Any] = {"versions": versions()}
    gpus: list[dict[str, Any]] = []
    cuda: dict[str, Any] = {"available": False, "version": None, "gpus": gpus}
    try:
        import torch

        cuda["version"] = torch.version.cuda
        if torch.cuda.is_available():
            cuda["available"] = True
            for i in range(torch.cuda.device_count()):
                props = torch.cuda.get_device_properties(i)
                gpus.append({"index": i, "name": props.name, "memory_gib": round(props.total_memory / 1024**3, 1)})
        report["mps"] = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
        from scissor_cli.devices import auto_dtype

        report["dtype_auto"] = auto_dtype()  # what --dtype auto picks here, and why
    except ImportError:
        report["mps"] = False
    report["cuda"] = cuda
    report["ffmpeg"] = _tool_version("ffmpeg")
    report["ffprobe"] = _tool_version("ffprobe")
    cache = FeatureCache()
    report["feature_cache"] = {
        "path": str(cache.root),
        "entries": len(cache.entries()),
        "bytes": cache.size_bytes(),
        "max_bytes": cache.max_bytes,
    }
    hf_home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface"
    )
    report["hf_cache"] = os.environ.get("HF_HUB_CACHE") or os.path.join(hf_home, "hub")
    offline = any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on") for v in
                  ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))  # fmt: skip
    report["offline"] = offline
    report["config"] = {
        "path": str(config.path) if config.path else None,
        "model": config.model,
        "device": config.device,
        "dtype": config.dtype,
        "cache_dir": config.cache_dir,
        "SCISSOR_MODEL": config.env_model,
    }
    report["default_model"] = config.base_profile().model.model
    return report

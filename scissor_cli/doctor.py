"""What ``scissor version`` and ``scissor doctor`` report: the versions of scissor and its main dependencies (from
package metadata, nothing heavy imported) and the environment (the accelerator, ffmpeg, the caches, offline mode,
the user config). torch is imported only by ``environment_report``."""

from __future__ import annotations

import os
from typing import Any

from scissor_cli.config import load_config


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
    from scissor_cli.cache import FeatureCache, default_root

    config = load_config()
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
    cache = FeatureCache(default_root(config))
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

"""On-disk cache of encoded, uncompressed video tokens ([F, T, D]), so a second question about the same clip skips
the vision tower (on CPU ~15 s per frame for the real 0.5B model).

Key: sha256 of the video file's bytes + the frame plan (indices) + model id + revision + dtype; any change in
those means different features. One safetensors file per entry, written atomically (tmp file + ``os.replace``),
so a crash never leaves a half-written entry under a real name. The directory is size-bounded: after each
``put`` the least recently used entries (by mtime, which ``get`` refreshes) are removed until it fits.

Each entry carries its key, the sha256 of its tensor's bytes, its shape and dtype (safetensors metadata); ``get``
verifies them, plus finite values and the shape the caller expects, so an entry that loads but is wrong (bit rot,
a truncated or edited file, NaN, an entry of an older scissor without a checksum) is deleted and reported as a
``ScissorWarning``, and the caller recomputes: never an answer from a bad entry. No transformers here;
torch/safetensors imported lazily.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from scissor_cli.errors import ScissorWarning

if TYPE_CHECKING:
    import torch

    from scissor_cli.config import UserConfig

DEFAULT_MAX_BYTES = 2 * 1024**3  # 2 GiB: ~270 clips of 8 frames x 196 x 896 fp32 (5.6 MB each)
SUFFIX = ".safetensors"
_TENSOR = "features"
FORMAT = "scissor-features-2"  # entries of version 1 had no checksum: unverifiable, so recomputed
_HASH_CHUNK = 1 << 20
# (path, size, mtime_ns) -> sha256 of the file: hashing a large video once per process is enough
_file_hashes: dict[tuple[str, int, int], str] = {}


def default_root(config: UserConfig | None = None) -> Path:
    """$SCISSOR_CACHE_DIR, else the user config's ``cache_dir`` (``config``, default ``load_config()``), else
    $XDG_CACHE_HOME/scissor/features, else ~/.cache/scissor/features."""
    if os.environ.get("SCISSOR_CACHE_DIR"):
        return Path(os.environ["SCISSOR_CACHE_DIR"]).expanduser()
    if config is None:
        from scissor_cli.config import load_config

        config = load_config()
    if config.cache_dir:
        return Path(config.cache_dir).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "scissor" / "features"


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of the file's content (memoised per path, size and mtime within the process)."""
    st = os.stat(path)
    memo = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if memo not in _file_hashes:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                h.update(chunk)
        _file_hashes[memo] = h.hexdigest()
    return _file_hashes[memo]


def default_max_bytes() -> int:
    """$SCISSOR_CACHE_MAX_GB (a number of GiB), else 2 GiB."""
    value = os.environ.get("SCISSOR_CACHE_MAX_GB", "").strip()
    if not value:
        return DEFAULT_MAX_BYTES
    try:
        gib = float(value)
    except ValueError:
        gib = -1.0
    if not gib >= 0:
        from scissor_cli.errors import OptionError

        raise OptionError(f"SCISSOR_CACHE_MAX_GB={value!r} is not a size", hint="set it to a number of GiB, e.g. 4")
    return int(gib * 1024**3)


class FeatureCache:
    """``get``/``put`` video tokens by ``key``; evicts least recently used entries beyond ``max_bytes``."""

    def __init__(self, root: str | os.PathLike | None = None, max_bytes: int | None = None):
        self.root = Path(root).expanduser() if root is not None else default_root()
        self.max_bytes = int(max_bytes) if max_bytes is not None else default_max_bytes()

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.root)!r}, max_bytes={self.max_bytes})"

    @staticmethod
    def key(path, indices: Sequence[int], model_name: str, revision: str | None, dtype) -> str:
        """Hex key for one clip's features: file content + frame indices + model id + revision + dtype."""
        spec = {
            "file": file_digest(path),
            "indices": [int(i) for i in indices],
            "model": str(model_name),
            "revision": revision,
            "dtype": str(dtype).removeprefix("torch."),
        }
        return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        if not key or not all(c in "0123456789abcdef" for c in key):
            raise ValueError(f"cache keys are hex digests, got {key!r}")
        return self.root / f"{key}{SUFFIX}"

    def has(self, key: str) -> bool:
        """Whether an entry exists (not read: batch's decode-ahead asks this for every video it would decode)."""
        return self._path(key).is_file()

    def get(self, key: str, device=None, shape: Sequence[int] | None = None, dtype=None) -> torch.Tensor | None:
        """The cached tensor (on ``device``, default CPU), or None on a miss.

        ``shape`` (F, T, D): the entry must hold 1 to F frames of exactly T x D, None there matching any size (a
        video that ends early caches fewer frames than planned); ``dtype``: the dtype it must have. An entry that
        fails to load or to verify (module docstring) is deleted with a ``ScissorWarning`` naming why, and is a
        miss."""
        path = self._path(key)
        if not path.is_file():
            return None
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
            tensor = load_file(str(path), device="cpu")[_TENSOR]
        except (SafetensorError, OSError, KeyError) as e:  # truncated or garbled file, no features tensor
            return self._bad(path, f"cannot be read ({type(e).__name__})")
        problem = _verify(tensor, meta, key, shape, dtype)
        if problem is not None:
            return self._bad(path, problem)
        try:
            os.utime(path)  # mark as recently used
        except OSError:
            pass
        return tensor if device is None else tensor.to(device)

    @staticmethod
    def _bad(path: Path, why: str) -> None:
        path.unlink(missing_ok=True)
        warnings.warn(
            f"feature cache entry {path.name[:12]}… {why}: deleted, and the video is encoded again",
            ScissorWarning,
            stacklevel=3,
        )
        return None

    def put(self, key: str, tensor: torch.Tensor) -> bool:
        """Store ``tensor`` under ``key`` with its checksum; returns False when it is larger than the whole cache
        or holds NaN/inf (not stored)."""
        import torch
        from safetensors.torch import save_file

        path = self._path(key)
        data = tensor.detach().to("cpu").contiguous()
        if data.numel() * data.element_size() > self.max_bytes:
            return False
        if not bool(torch.isfinite(data).all()):  # would fail verification on every read
            return False
        meta = {
            "format": FORMAT,
            "key": key,
            "sha256": tensor_digest(data),
            "shape": json.dumps(list(data.shape)),
            "dtype": str(data.dtype).removeprefix("torch."),
        }
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".tmp-", suffix=SUFFIX)
        os.close(fd)
        try:
            save_file({_TENSOR: data}, tmp, metadata=meta)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.evict(keep=path)
        return True

    def entries(self) -> list[tuple[Path, int, float]]:
        """(path, bytes, mtime) of every entry, least recently used first."""
        if not self.root.is_dir():
            return []
        out = []
        for p in self.root.glob(f"*{SUFFIX}"):
            if p.name.startswith(".tmp-"):
                continue
            try:
                st = p.stat()
            except OSError:  # removed by a concurrent process
                continue
            out.append((p, st.st_size, st.st_mtime))
        return sorted(out, key=lambda e: e[2])

    def size_bytes(self) -> int:
        return sum(n for _, n, _ in self.entries())

    def evict(self, keep: Path | None = None) -> int:
        """Remove least recently used entries until the cache fits in ``max_bytes``; returns how many."""
        entries = self.entries()
        total = sum(n for _, n, _ in entries)
        n_removed = 0
        for p, n, _ in entries:
            if total <= self.max_bytes:
                break
            if p == keep:
                continue
            p.unlink(missing_ok=True)
            total -= n
            n_removed += 1
        return n_removed

    def clear(self) -> int:
        """Remove every entry; returns how many."""
        entries = self.entries()
        for p, _, _ in entries:
            p.unlink(missing_ok=True)
        return len(entries)


def tensor_digest(tensor: torch.Tensor) -> str:
    """sha256 of a CPU tensor's bytes (any dtype, bf16 included)."""
    import torch

    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return hashlib.sha256(flat.view(torch.uint8).numpy()).hexdigest()


def _verify(tensor: torch.Tensor, meta: dict[str, str], key: str, shape: Sequence[int] | None, dtype) -> str | None:
    """Why a loaded entry cannot be trusted, or None."""
    import torch

    if meta.get("format") != FORMAT or "sha256" not in meta:
        return "has no checksum (written by an older scissor)"
    if meta.get("key") != key:
        return "was stored under another key"
    held, held_dtype = list(tensor.shape), str(tensor.dtype).removeprefix("torch.")
    if meta.get("shape") != json.dumps(held) or meta.get("dtype") != held_dtype:
        return f"holds {held} {held_dtype}, not what it recorded"
    if tensor_digest(tensor) != meta["sha256"]:
        return "does not match its checksum"
    if not bool(torch.isfinite(tensor).all()):
        return "contains NaN or infinite values"
    if shape is not None:
        n, *rest = shape
        fits = all(want is None or got == want for got, want in zip(held[1:], rest, strict=False))
        if tensor.ndim != len(shape) or not fits or not 1 <= held[0] <= n:
            rest_text = " x ".join("any" if r is None else str(r) for r in rest)
            return f"has shape {held}, not up to {n} frames of {rest_text}"
    if dtype is not None and held_dtype != str(dtype).removeprefix("torch."):
        return f"holds {held_dtype}, not {str(dtype).removeprefix('torch.')}"
    return None

"""FeatureCache: keys, round trip, atomic writes, corrupt entries, LRU size bound, default location."""

import os
import time

import pytest
import torch

from scissor_cli.cache import FeatureCache, default_root


@pytest.fixture
def video(tmp_path):
    p = tmp_path / "clip.mp4"
    p.write_bytes(b"not really a video, but bytes to hash" * 100)
    return p


def test_key_depends_on_content_plan_model_revision_dtype(video, tmp_path):
    base = FeatureCache.key(video, [0, 5, 9], "m", None, torch.float32)
    assert base == FeatureCache.key(video, (0, 5, 9), "m", None, "float32"), "same inputs must give the same key"
    other = tmp_path / "copy.mp4"
    other.write_bytes(video.read_bytes())
    assert FeatureCache.key(other, [0, 5, 9], "m", None, torch.float32) == base, "key is content, not path"
    variants = [
        FeatureCache.key(video, [0, 5, 8], "m", None, torch.float32),
        FeatureCache.key(video, [0, 5, 9], "m2", None, torch.float32),
        FeatureCache.key(video, [0, 5, 9], "m", "abc123", torch.float32),
        FeatureCache.key(video, [0, 5, 9], "m", None, torch.bfloat16),
    ]
    assert len({base, *variants}) == 5, "indices, model, revision and dtype must each change the key"
    time.sleep(0.01)
    video.write_bytes(b"different content")
    assert FeatureCache.key(video, [0, 5, 9], "m", None, torch.float32) != base, "edited file must miss"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_is_exact_and_atomic(tmp_path, dtype):
    cache = FeatureCache(tmp_path / "c")
    t = torch.randn(3, 16, 8).to(dtype)
    assert cache.get("ab" * 32) is None
    assert cache.put("ab" * 32, t)
    got = cache.get("ab" * 32)
    assert got.dtype == dtype and torch.equal(got, t)
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["ab" * 32 + ".safetensors"], "no temp files left"


def test_corrupt_entry_is_a_miss_and_removed(tmp_path):
    cache = FeatureCache(tmp_path)
    cache.put("cd" * 32, torch.ones(4, 4))
    path = tmp_path / ("cd" * 32 + ".safetensors")
    path.write_bytes(path.read_bytes()[:20])  # truncated
    assert cache.get("cd" * 32) is None
    assert not path.exists(), "a corrupt entry must be deleted"


def test_entry_without_features_is_a_miss_and_removed(tmp_path):
    from safetensors.torch import save_file

    cache = FeatureCache(tmp_path)
    path = tmp_path / ("ce" * 32 + ".safetensors")
    save_file({"something_else": torch.ones(2)}, str(path))
    assert cache.get("ce" * 32) is None and not path.exists()


def test_lru_eviction_by_mtime(tmp_path):
    one = torch.zeros(256)  # 1 KiB + header per entry
    cache = FeatureCache(tmp_path, max_bytes=3 * 1200)
    keys = [f"{i:064x}" for i in range(3)]
    for i, k in enumerate(keys):
        cache.put(k, one)
        old = time.time() - 100 + i
        os.utime(tmp_path / f"{k}.safetensors", (old, old))
    assert cache.get(keys[0]) is not None  # touch: key 0 becomes the most recently used
    cache.put(f"{3:064x}", one)
    left = {p.stem for p, _, _ in cache.entries()}
    assert keys[1] not in left, f"the least recently used entry must go first, left: {sorted(left)}"
    assert keys[0] in left and f"{3:064x}" in left
    assert cache.size_bytes() <= cache.max_bytes


def test_too_large_is_not_stored(tmp_path):
    cache = FeatureCache(tmp_path, max_bytes=100)
    assert cache.put("ef" * 32, torch.zeros(1000)) is False
    assert cache.get("ef" * 32) is None


def test_bad_key_is_rejected(tmp_path):
    with pytest.raises(ValueError):
        FeatureCache(tmp_path).get("../etc/passwd")


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv("SCISSOR_CACHE_DIR", str(tmp_path / "x"))
    assert default_root() == tmp_path / "x"
    assert FeatureCache().root == tmp_path / "x"
    monkeypatch.delenv("SCISSOR_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_root() == tmp_path / "xdg" / "scissor" / "features"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_root() == __import__("pathlib").Path.home() / ".cache" / "scissor" / "features"


def test_clear(tmp_path):
    cache = FeatureCache(tmp_path)
    cache.put("01" * 32, torch.ones(2))
    cache.put("02" * 32, torch.ones(2))
    assert cache.clear() == 2 and cache.entries() == []


def test_a_bug_while_reading_is_not_taken_for_a_corrupt_entry(tmp_path, monkeypatch):
    import safetensors.torch

    cache = FeatureCache(tmp_path)
    cache.put("0f" * 32, torch.ones(3))

    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug, not a bad file")

    monkeypatch.setattr(safetensors.torch, "load_file", broken)
    with pytest.raises(ZeroDivisionError):
        cache.get("0f" * 32)
    assert (tmp_path / ("0f" * 32 + ".safetensors")).exists(), "a good entry must not be deleted on a bug"

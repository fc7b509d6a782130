"""FeatureCache: keys, round trip, atomic writes, corrupt entries, LRU size bound, default location."""

import json
import os
import time

import pytest
import torch
from media import pattern_clip

from scissor_cli.cache import FeatureCache, default_root
from scissor_cli.errors import ScissorWarning


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
    with pytest.warns(ScissorWarning, match="cannot be read"):
        assert cache.get("cd" * 32) is None
    assert not path.exists(), "a corrupt entry must be deleted"


def test_entry_without_features_is_a_miss_and_removed(tmp_path):
    from safetensors.torch import save_file

    cache = FeatureCache(tmp_path)
    path = tmp_path / ("ce" * 32 + ".safetensors")
    save_file({"something_else": torch.ones(2)}, str(path))
    with pytest.warns(ScissorWarning, match="cannot be read"):
        assert cache.get("ce" * 32) is None and not path.exists()


def test_lru_eviction_by_mtime(tmp_path):
    one = torch.zeros(256)  # 1 KiB + header (key, checksum, shape) per entry: ~1.4 KB
    cache = FeatureCache(tmp_path, max_bytes=3 * 1500)
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


# ---------------------------------------------------------------------------------------------- verification
KEY = "ab" * 32


def _rewrite(path, tensor, **meta_changes):
    """Replace an entry's tensor (and metadata fields), keeping the rest of its metadata as written."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    meta.update(meta_changes)
    save_file({"features": tensor}, str(path), metadata={k: v for k, v in meta.items() if v is not None})


def _corrupt(path, kind, good):
    from scissor_cli.cache import tensor_digest

    if kind == "truncated":
        path.write_bytes(path.read_bytes()[:-7])
    elif kind == "flipped byte":  # plausible wrong values: loads fine, only the checksum tells
        data = bytearray(path.read_bytes())
        data[-3] ^= 0x10
        path.write_bytes(bytes(data))
    elif kind == "nan":  # a consistent entry (its checksum recomputed) holding NaN
        bad = good.clone()
        bad[0, 0, 0] = float("nan")
        _rewrite(path, bad, sha256=tensor_digest(bad))
    elif kind == "wrong shape":  # consistent, but not what the key implies (frames x tokens x hidden)
        bad = good[:, :-1].contiguous()
        _rewrite(path, bad, sha256=tensor_digest(bad), shape=json.dumps(list(bad.shape)))
    elif kind == "no checksum":  # written by an older scissor: the right values, but unverifiable
        _rewrite(path, good, sha256=None, format=None)
    else:
        raise AssertionError(kind)


CORRUPTIONS = {
    "truncated": "cannot be read",
    "flipped byte": "does not match its checksum",
    "nan": "contains NaN",
    "wrong shape": "has shape [3, 15, 8], not up to 3 frames of 16 x 8",
    "no checksum": "has no checksum",
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_an_entry_that_fails_verification_is_deleted_with_a_warning(tmp_path, kind):
    cache = FeatureCache(tmp_path)
    good = torch.randn(3, 16, 8)
    cache.put(KEY, good)
    assert torch.equal(cache.get(KEY, shape=(3, 16, 8), dtype=torch.float32), good), "a good entry verifies"
    path = tmp_path / (KEY + ".safetensors")
    _corrupt(path, kind, good)
    with pytest.warns(ScissorWarning) as caught:
        assert cache.get(KEY, shape=(3, 16, 8), dtype=torch.float32) is None
    assert len(caught) == 1 and CORRUPTIONS[kind] in str(caught[0].message), [str(w.message) for w in caught]
    assert "deleted" in str(caught[0].message) and KEY[:12] in str(caught[0].message)
    assert not path.exists(), "a bad entry must not be read again"


def test_shape_and_dtype_the_caller_expects(tmp_path):
    cache = FeatureCache(tmp_path)
    cache.put(KEY, torch.ones(2, 16, 8))
    assert cache.get(KEY, shape=(4, 16, 8)) is not None, "fewer frames than planned: a video that ended early"
    with pytest.warns(ScissorWarning, match="holds float32, not bfloat16"):
        assert cache.get(KEY, shape=(4, 16, 8), dtype=torch.bfloat16) is None
    cache.put(KEY, torch.ones(2, 16, 8))
    with pytest.warns(ScissorWarning, match="not up to 4 frames of 16 x 9"):
        assert cache.get(KEY, shape=(4, 16, 9)) is None


def test_non_finite_features_are_not_stored(tmp_path):
    cache = FeatureCache(tmp_path)
    assert cache.put(KEY, torch.tensor([[[1.0, float("inf")]]])) is False
    assert cache.entries() == []


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return pattern_clip(tmp_path_factory.mktemp("media") / "clip.mp4", seconds=1)


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_ask_recomputes_a_bad_entry_and_says_so(tiny_hf_dir, clip, tmp_path, monkeypatch, kind):
    """End to end: the answer after a bad entry equals the fresh one, is not a cache hit, and one warning line says
    what happened; the recomputed entry serves the next run."""
    from typer.testing import CliRunner

    from scissor_cli.cli import app

    monkeypatch.setenv("SCISSOR_CACHE_DIR", str(tmp_path / "cache"))
    args = ["ask", clip, "What is happening?", "--model", str(tiny_hf_dir), "--frames", "3"]
    args += ["--max-new-tokens", "4", "--json"]

    def ask():
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout), result.stderr

    fresh, _ = ask()
    (entry,) = (tmp_path / "cache").glob("*.safetensors")
    from safetensors.torch import load_file

    _corrupt(entry, kind, load_file(str(entry))["features"])
    again, err = ask()
    assert again["cache_hit"] is False and again["answer"] == fresh["answer"] and again["tokens"] == fresh["tokens"]
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and " ".join(CORRUPTIONS[kind].split()[:2]) in warnings[0], err
    third, err = ask()
    assert third["cache_hit"] is True and third["answer"] == fresh["answer"] and "warning" not in err

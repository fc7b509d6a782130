"""Pipeline seams the CLI tests cannot reach directly: what a cache hit reports."""

from __future__ import annotations

import subprocess

from scissor_cli.cache import FeatureCache
from scissor_cli.model import load_model
from scissor_cli.options import ModelOptions, Profile
from scissor_cli.pipeline import encode_video, model_fingerprint, resolve_profile


def test_a_cache_hit_with_fewer_frames_than_planned_says_so(tiny_hf_dir, tmp_path):
    clip = tmp_path / "clip.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=10", "-t", "1",
                    "-pix_fmt", "yuv420p", str(clip)], check=True, timeout=60)  # fmt: skip
    vlm = load_model(ModelOptions(model=str(tiny_hf_dir)))
    profile = resolve_profile(vlm, Profile().override(sampling={"n_frames": 6}))
    cache = FeatureCache(tmp_path / "cache")
    first = encode_video(vlm, str(clip), profile, cache=cache)
    assert first.note is None and len(first.indices) == 6
    # as if the file had ended early when it was encoded: the entry holds 4 of the 6 planned frames
    key = cache.key(str(clip), first.indices, model_fingerprint(vlm), vlm.revision, str(vlm.dtype))
    cache.put(key, first.features[:4])
    again = encode_video(vlm, str(clip), profile, cache=cache)
    assert again.cache_hit and len(again.indices) == 4 == again.features.shape[0]
    assert again.note and "only 4 of 6 planned frames" in again.note

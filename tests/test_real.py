"""Tier (d): real checkpoints from the Hugging Face hub (or its local cache). Deselected by default (``slow``/``gpu``);
run with ``make test-all`` or ``pytest -m slow`` on a machine that has the weights. Each test skips, saying why,
when its checkpoint is not available, so the tier never fails for lack of a download."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SAMPLE = str(Path(__file__).resolve().parent.parent / "samples" / "bigbuckbunny.mp4")
HF_05B = os.environ.get("SCISSOR_TEST_MODEL", "llava-hf/llava-onevision-qwen2-0.5b-ov-hf")


def _load_or_skip(model_id: str, **kw):
    from scissor_cli.errors import ModelError
    from scissor_cli.model import load_model
    from scissor_cli.options import ModelOptions

    try:
        return load_model(ModelOptions(model=model_id, **kw))
    except ModelError as e:
        pytest.skip(f"{model_id} not available here: {e.message}")


@pytest.fixture(scope="module")
def vlm():
    return _load_or_skip(HF_05B)


@pytest.mark.slow
def test_real_05b_identity_path_and_a_sensible_answer(vlm):
    from scissor_cli.options import Profile
    from scissor_cli.pipeline import answer

    p = Profile().override(sampling={"n_frames": 8}, generation={"max_new_tokens": 32})
    [a] = answer(vlm, SAMPLE, "What animal is in this video?", p)
    assert a.tokens["original"] == 8 * 196, "LLaVA-OneVision pools 27x27 patches to 14x14 per frame"
    assert a.tokens["final"] < a.tokens["original"]
    assert any(w in a.answer.lower() for w in ("rabbit", "bunny", "hare")), a.answer


@pytest.mark.slow
def test_real_05b_budget_profiles_meet_their_budgets(vlm):
    from scissor_cli.options import Profile
    from scissor_cli.pipeline import compress_video, encode_video, resolve_profile

    p = resolve_profile(vlm, Profile().override(sampling={"n_frames": 8}))
    encoded = encode_video(vlm, SAMPLE, p)
    for ratio in (0.5, 0.35, 0.1, 0.05):
        c = compress_video(encoded, p.override(compression={"retention": ratio}))
        assert c.n_final <= ratio * c.n_original, (ratio, c.n_final)


@pytest.mark.gpu
def test_real_05b_on_gpu_in_bf16():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    vlm = _load_or_skip(HF_05B, device="cuda")
    assert str(vlm.dtype) in ("torch.bfloat16", "torch.float16")

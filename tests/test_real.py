"""Tier (d): real checkpoints from the Hugging Face hub (or its local cache). Deselected by default (``slow``/``gpu``);
run with ``pytest -m slow`` on a machine that has the weights: asked for by name, a checkpoint that does not resolve
fails the test (a run meant to check the real weights must not pass by skipping). ``make test-all`` (``-m ""``, every
tier) skips instead, saying why, so it never fails for lack of a download."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from published_keys import published_keys

SAMPLE = str(Path(__file__).resolve().parent.parent / "samples" / "bigbuckbunny.mp4")
HF_05B = os.environ.get("SCISSOR_TEST_MODEL", "llava-hf/llava-onevision-qwen2-0.5b-ov-hf")
# original-layout 0.5B checkpoints: lmms-lab's LLaVA-OneVision and the LLaVA-Scissor authors' baseline
ORIGINAL_05B = ["lmms-lab/llava-onevision-qwen2-0.5b-ov", "BBBBCHAN/LLaVA-Scissor-baseline-0.5B"]
QUESTION = "What animal is in this video?"
_ASKED = {"slow": False}  # set per module from -m: did this run ask for the slow tier by name?


def asks_for(markexpr: str, marker: str) -> bool:
    """Whether a ``-m`` expression names ``marker`` other than as ``not marker`` ("slow", "slow or gpu": yes;
    "", "not slow": no)."""
    words = re.findall(r"[A-Za-z_]+", markexpr)
    return any(w == marker and (i == 0 or words[i - 1] != "not") for i, w in enumerate(words))


@pytest.fixture(autouse=True, scope="module")
def _slow_asked(request):
    _ASKED["slow"] = asks_for(request.config.option.markexpr or "", "slow")


def _folder_or_skip(model_id: str) -> Path:
    """The checkpoint's local folder (fetched into the Hugging Face cache when online). When unavailable: a failure
    under ``-m slow``, a skip otherwise."""
    from scissor_cli.checkpoint import resolve_model_dir
    from scissor_cli.errors import ModelError

    try:
        return resolve_model_dir(model_id)
    except ModelError as e:
        why = f"{model_id} not available here: {e.message}"
        if _ASKED["slow"]:
            pytest.fail(f"{why} (-m slow asks for the real checkpoints; make test-all skips them instead)")
        pytest.skip(why)


def _load_or_skip(model_id: str, **kw):
    """Skips only when the checkpoint is not there: once it is, a load error is a failure."""
    from scissor_cli.model import load_model
    from scissor_cli.options import ModelOptions

    _folder_or_skip(model_id)
    return load_model(ModelOptions(model=model_id, **kw))


@pytest.fixture(scope="module")
def vlm():
    return _load_or_skip(HF_05B)


@pytest.mark.slow
def test_real_05b_identity_path_and_a_sensible_answer(vlm):
    from scissor_cli.options import Profile
    from scissor_cli.pipeline import answer

    p = Profile().override(sampling={"n_frames": 8}, generation={"max_new_tokens": 32})
    [a] = answer(vlm, SAMPLE, QUESTION, p)
    assert a.tokens["original"] == 8 * 196, "LLaVA-OneVision pools 27x27 patches to 14x14 per frame"
    assert a.tokens["final"] < a.tokens["original"]
    assert any(w in a.answer.lower() for w in ("rabbit", "bunny", "hare")), a.answer


@pytest.mark.slow
def test_real_05b_no_compress_equals_transformers_processor_path(vlm, monkeypatch):
    """``--no-compress`` greedy output is token for token what transformers' own LLaVA-OneVision path generates
    from the same 8 frames: its processor (chat template, <video> expansion, video preprocessing) + generate."""
    pytest.importorskip("torchvision", reason="transformers' video processor needs torchvision")
    import torch
    from transformers import AutoProcessor

    from scissor_cli import video as video_io
    from scissor_cli.options import Profile
    from scissor_cli.pipeline import answer

    generated = []
    real = vlm.generate

    def spy(requests, gen, **kwargs):
        out = real(requests, gen, **kwargs)
        generated.append(out)
        return out

    monkeypatch.setattr(vlm, "generate", spy)
    profile = Profile().override(sampling={"n_frames": 8}, compression={"enabled": False}, model={"cache": False})
    profile = profile.override(generation={"max_new_tokens": 32})
    [ours] = answer(vlm, SAMPLE, QUESTION, profile)
    assert ours.tokens["final"] == ours.tokens["original"] == 8 * 196

    frames = video_io.sample_frames(SAMPLE, n_frames=8).frames  # the frames answer() decoded
    processor = AutoProcessor.from_pretrained(str(vlm.model_dir))
    conversation = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(text=text, videos=[frames], do_sample_frames=False, return_tensors="pt").to(vlm.device)
    inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(vlm.dtype)
    with torch.inference_mode():
        out = vlm.hf_model.generate(**inputs, do_sample=False, max_new_tokens=32)
    reference = out[0, inputs["input_ids"].shape[1] :].tolist()
    eos = set(vlm._eos_ids())
    reference = reference[: next((i for i, t in enumerate(reference) if t in eos), len(reference))]
    assert len(reference) >= 3, f"degenerate reference answer {reference}"
    assert generated[0].token_ids[0] == reference, (ours.answer, vlm.tokenizer.decode(reference))


@pytest.mark.slow
@pytest.mark.parametrize("model_id", ORIGINAL_05B)
def test_real_original_05b_stores_the_published_names_and_loads(model_id):
    """The original-layout checkpoint holds exactly the tensors tests/published_keys.py lists (24 Qwen2 layers,
    26 SigLIP layers, tied embeddings: no lm_head), loads with none missing or unexpected, and answers sensibly."""
    from safetensors import safe_open

    from scissor_cli.options import Profile
    from scissor_cli.pipeline import answer

    folder = _folder_or_skip(model_id)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        pytest.skip(f"{model_id} has no safetensors weights here (scissor refuses pickles unless allowed)")
    stored = set()
    for f in files:
        with safe_open(str(f), framework="pt") as weights:
            stored |= set(weights.keys())  # noqa: SIM118 - safe_open is not a dict
    stored = {k for k in stored if not k.endswith(".rotary_emb.inv_freq")}  # buffers some old checkpoints keep
    config = json.loads((folder / "config.json").read_text())
    expected = published_keys(config["num_hidden_layers"], 26, tied=bool(config.get("tie_word_embeddings")))
    assert stored == expected, f"extra {sorted(stored - expected)[:5]}, missing {sorted(expected - stored)[:5]}"

    vlm = _load_or_skip(model_id)  # raises on any missing or unexpected weight
    assert vlm.layout == "llava-next" and vlm.hf_model.config.vision_config.num_hidden_layers == 26
    assert vlm.tokens_per_frame == 196 and not vlm.newline
    if config.get("model_type") == "llava_qwen_zip":
        assert (vlm.default_tau, vlm.default_epsilon) == (config["mm_zip_tau"], config["mm_zip_epsilon"])
    p = Profile().override(sampling={"n_frames": 8}, generation={"max_new_tokens": 32})
    [a] = answer(vlm, SAMPLE, QUESTION, p)
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


def test_slow_tier_is_asked_for_only_by_name():
    """Not marked: runs by default, guarding the rule that makes ``-m slow`` fail rather than skip."""
    assert asks_for("slow", "slow") and asks_for("gpu or slow", "slow") and asks_for("slow and not gpu", "slow")
    assert not asks_for("", "slow") and not asks_for("not slow", "slow")
    assert not asks_for("not gpu and not slow and not lmms_eval", "slow")

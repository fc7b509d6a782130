"""Qwen2.5-VL and Qwen3-VL on tiny random checkpoints: transformers' own path equals scissor's with compression off,
the compressed prefill equals a full-length forward with the dropped tokens masked out, batching changes nothing,
and the preprocessing is the processors' (where torchvision imports)."""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from media import _encode, pattern_clip

from scissor_cli.errors import ModelError
from scissor_cli.model import load_model
from scissor_cli.options import CompressionOptions, GenerationOptions, ModelOptions, Profile, SamplingOptions
from scissor_cli.pipeline import answer, compress_video, encode_video, resolve_profile

QUESTION = "What is happening in this video?"
GREEDY = GenerationOptions(max_new_tokens=12, temperature=0.0)
FAMILIES = ["qwen2_5_vl", "qwen3_vl"]


@pytest.fixture(scope="module")
def qwen_dirs(tiny_qwen25_dir, tiny_qwen3_dir):
    return {"qwen2_5_vl": tiny_qwen25_dir, "qwen3_vl": tiny_qwen3_dir}


@pytest.fixture(scope="module")
def qwen_vlms(qwen_dirs):
    return {f: load_model(ModelOptions(model=str(d), device="cpu", dtype="float32")) for f, d in qwen_dirs.items()}


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return pattern_clip(tmp_path_factory.mktemp("qwen") / "clip.mp4")


@pytest.fixture(scope="module")
def repeated_clip(tmp_path_factory):
    """8 lossless frames A B A B C D C D at 1 fps: temporal patches 1 and 2 are the same, and 3 and 4. (At 10 fps
    Qwen2.5-VL would give patches 1 to 3 one temporal position: 2 tokens per second x 0.2 s a patch.)"""
    rng = np.random.default_rng(0)
    a, b, c, d = (rng.integers(0, 256, (64, 96, 3), dtype=np.uint8) for _ in range(4))
    frames = np.stack([a, b, a, b, c, d, c, d])
    out = tmp_path_factory.mktemp("qwen") / "repeated.mkv"
    return str(_encode(frames, out, "-c:v", "ffv1", "-pix_fmt", "bgr0", fps=1))


def profile(directory, n_frames=8, **compression) -> Profile:
    comp = CompressionOptions(**compression) if compression else CompressionOptions(enabled=False)
    return resolve_profile(
        None,
        Profile(
            sampling=SamplingOptions(n_frames=n_frames),
            model=ModelOptions(model=str(directory), cache=False),
            compression=comp,
            generation=GREEDY,
        ),
    )


def processor_inputs(vlm, family: str, encoded, question: str):
    """What transformers' processor gives ``generate`` for these frames: the chat template, the video placeholder
    expanded by the processor's own ``replace_video_token`` (timestamps and second_per_grid_ts from the frame
    indices and the video's fps, via transformers' VideoMetadata), and the pixels."""
    from transformers.video_utils import VideoMetadata

    from scissor_cli import video as video_io
    from scissor_cli.families.qwen_preprocess import preprocess

    s = vlm.family_settings
    info = encoded.info
    clip = video_io.sample_frames(encoded.path, n_frames=len(encoded.indices), info=info)
    assert tuple(clip.indices) == tuple(encoded.indices)
    size = vlm.family.frame_size(s, *clip.frames.shape[:3])
    pixels, grid = preprocess(clip.frames, size, s.mean, s.std, s.patch, s.merge, s.temporal)
    grid = torch.tensor([grid])
    metadata = VideoMetadata(total_num_frames=info.n_frames, fps=info.fps, frames_indices=list(clip.indices))
    conv = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}]
    text = vlm.tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
    fake = types.SimpleNamespace(
        video_processor=types.SimpleNamespace(merge_size=s.merge, temporal_patch_size=s.temporal),
        video_token="<|video_pad|>", vision_start_token="<|vision_start|>", vision_end_token="<|vision_end|>",
    )  # fmt: skip
    extra = {}
    if family == "qwen2_5_vl":
        from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor

        text = text.replace("<|video_pad|>", Qwen2_5_VLProcessor.replace_video_token(fake, {"video_grid_thw": grid}, 0))
        extra["second_per_grid_ts"] = torch.tensor([s.temporal / metadata.sampled_fps])
    else:
        from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor

        fake._calculate_timestamps = lambda *a: Qwen3VLProcessor._calculate_timestamps(fake, *a)
        inputs = {"video_grid_thw": grid, "video_metadata": [metadata]}
        wrapper = "<|vision_start|><|video_pad|><|vision_end|>"  # collapsed to the expansion, as the processor does
        text = text.replace(wrapper, Qwen3VLProcessor.replace_video_token(fake, inputs, 0))
    ids = vlm.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    types_ = (ids == s.video_id).int() * 2
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values_videos=pixels,
                video_grid_thw=grid, mm_token_type_ids=types_, **extra)  # fmt: skip


def reference_answer(vlm, inputs) -> str:
    with torch.inference_mode():
        vlm.hf_model.model.rope_deltas = None
        out = vlm.hf_model.generate(**inputs, max_new_tokens=GREEDY.max_new_tokens, do_sample=False,
                                    eos_token_id=vlm._eos_ids(), pad_token_id=vlm.tokenizer.pad_token_id)  # fmt: skip
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    eos = set(vlm._eos_ids())
    new = new[: next((i for i, t in enumerate(new) if t in eos), len(new))]
    assert len(new) >= 3, f"degenerate reference generation {new}"
    return vlm.tokenizer.decode(new, skip_special_tokens=True).strip()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("n_frames", [8, 7])
def test_no_compress_answer_equals_transformers_own_path(qwen_vlms, qwen_dirs, clip, family, n_frames):
    """``answer()`` with compression off == generate with the processor's inputs (7 frames: the last is repeated to
    make the second temporal patch whole)."""
    vlm = qwen_vlms[family]
    prof = profile(qwen_dirs[family], n_frames=n_frames)
    got = answer(vlm, clip, QUESTION, prof)[0]
    encoded = encode_video(vlm, clip, prof)
    assert got.tokens["original"] == got.tokens["final"] == encoded.layout.n_tokens
    assert got.answer == reference_answer(vlm, processor_inputs(vlm, family, encoded, QUESTION))


def seam_prefill(vlm, video_tokens, question=QUESTION):
    """The last prompt position's logits of scissor's ``generate`` inputs (one forward: generate's prefill)."""
    inputs, _ = vlm.family.generate_inputs(vlm, [(video_tokens, question)], (), vlm.tokenizer.pad_token_id)
    with torch.inference_mode():
        return vlm.hf_model(**inputs).logits[0, -1], inputs


def masked_full_prefill(vlm, compressed, question=QUESTION):
    """A forward over the *uncompressed* prompt with its own positions, where each kept token sits at its
    representative's column and every dropped video token is masked out of attention."""
    from scissor_cli.families.qwen import QwenTokens

    kept: QwenTokens = compressed.tokens
    video = kept.video
    s = vlm.family_settings
    before, after = vlm._prompt_pieces(question, ())
    ids = torch.tensor([vlm._tokenize_pieces([*before, (vlm.family.video_text(video), False), *after])])
    pos = vlm.family.rope_index(vlm, ids, (ids == s.video_id).int() * 2, video)
    n = ids.shape[1]
    cols = (ids[0] == s.video_id).nonzero().squeeze(1)
    rep_cols = cols[kept.representative]
    dropped = torch.ones(n, dtype=torch.bool)
    dropped[cols] = True
    dropped[~torch.isin(torch.arange(n), cols)] = False
    dropped[rep_cols] = False
    full = torch.zeros(video.n_tokens, s.dim)
    full[kept.representative] = kept.tokens
    allowed = torch.tril(torch.ones(n, n, dtype=torch.bool)) & ~dropped[None, :]
    allowed |= torch.eye(n, dtype=torch.bool)
    mask4 = torch.where(allowed, 0.0, torch.finfo(torch.float32).min)[None, None]
    outputs = types.SimpleNamespace(tokens=full, video=video, deepstack=None)
    if kept.deepstack is not None:
        outputs.deepstack = torch.zeros(video.n_tokens, kept.deepstack.shape[1])
        outputs.deepstack[kept.representative] = kept.deepstack
    enc = vlm.family.encoder_outputs(vlm, [outputs])
    positions = torch.cat([torch.arange(n)[None, None], pos], 0)
    with torch.inference_mode():
        vlm.hf_model.model.rope_deltas = None
        return vlm.hf_model(input_ids=ids, attention_mask=mask4, position_ids=positions,
                            mm_encoder_outputs={"video": enc}).logits[0, -1]  # fmt: skip


@pytest.mark.parametrize("family", FAMILIES)
def test_compressed_prefill_equals_masked_full_forward(qwen_vlms, qwen_dirs, repeated_clip, family):
    """tau close to 1 on A B A B C D C D: SCC keeps the first of each repeated temporal patch; the kept tokens keep
    their representatives' positions, so the short prompt computes what the full one does with the rest masked."""
    vlm = qwen_vlms[family]
    prof = profile(qwen_dirs[family], tau=0.9999)
    encoded = encode_video(vlm, repeated_clip, prof)
    compressed = compress_video(encoded, prof)
    t, h, w = encoded.layout.grid
    assert t == 4 and compressed.n_final == 2 * h * w, compressed.n_final  # patches 2 and 4 merged away
    rep = compressed.tokens.representative.tolist()
    assert rep == list(range(h * w)) + list(range(2 * h * w, 3 * h * w))
    ours, inputs = seam_prefill(vlm, compressed.tokens)
    ref = masked_full_prefill(vlm, compressed)
    assert torch.allclose(ours, ref, atol=1e-4, rtol=0), f"max |dlogit| {(ours - ref).abs().max().item()}"
    if family == "qwen3_vl":  # every temporal patch keeps its timestamp text, tokens or not
        text = vlm.tokenizer.decode(inputs["input_ids"][0])
        assert text.count("<|vision_start|>") == 4 and text.count("seconds>") == 4, text


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_answers_equal_one_at_a_time(qwen_vlms, qwen_dirs, clip, repeated_clip, family):
    """Two questions on one video and one on another video, compressed to different lengths: one generate call
    gives what three separate calls give."""
    vlm = qwen_vlms[family]
    prof = profile(qwen_dirs[family], tau=0.9)
    a = compress_video(encode_video(vlm, clip, prof), prof).tokens
    b = compress_video(encode_video(vlm, repeated_clip, profile(qwen_dirs[family], tau=0.9999)), prof).tokens
    assert a.tokens.shape[0] != b.tokens.shape[0]
    requests = [(a, QUESTION), (a, "How many people appear in the clip?"), (b, "Describe the video in detail.")]
    together = vlm.generate(requests, GREEDY)
    alone = [vlm.generate([r], GREEDY) for r in requests]
    assert together.texts == [o.texts[0] for o in alone]
    assert together.token_ids == [o.token_ids[0] for o in alone]
    assert together.n_prompt_tokens == [o.n_prompt_tokens[0] for o in alone]


def _video_prefix(vlm, tokens, question) -> int:
    """Tokens of the request's prompt up to its video's last ``<|vision_end|>`` (what rows about one video share)."""
    inputs, _ = vlm.family.generate_inputs(vlm, [(tokens, question)], (), vlm._pad_id())
    ids = inputs["input_ids"][0].tolist()
    return len(ids) - ids[::-1].index(vlm.tokenizer.convert_tokens_to_ids("<|vision_end|>"))


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_video_prefix_is_prefilled_once_with_identical_answers(qwen_vlms, qwen_dirs, clip, repeated_clip,
                                                                     family):  # fmt: skip
    """Two videos, two questions each (of different lengths), in one call: each video's prefix (system turn + the
    video, with its vision outputs and DeepStack) is prefilled once, and every greedy answer is the one
    ``share_prefix=False`` and one call per question give."""
    vlm = qwen_vlms[family]
    prof = profile(qwen_dirs[family], tau=0.9)
    a = compress_video(encode_video(vlm, clip, prof), prof).tokens
    b = compress_video(encode_video(vlm, repeated_clip, profile(qwen_dirs[family], tau=0.9999)), prof).tokens
    requests = [(a, QUESTION), (b, "How many?"), (a, "Describe the video in great detail."), (b, QUESTION)]
    shared = vlm.generate(requests, GREEDY)
    plain = vlm.generate(requests, GREEDY, share_prefix=False)
    alone = [vlm.generate([r], GREEDY) for r in requests]
    assert shared.token_ids == plain.token_ids == [o.token_ids[0] for o in alone], "the shared prefix changed an answer"
    assert all(len(ids) >= 3 for ids in shared.token_ids), shared.token_ids
    assert plain.n_prefill_tokens == plain.n_prompt_tokens == shared.n_prompt_tokens
    full = shared.n_prompt_tokens
    prefix = [_video_prefix(vlm, video, q) for video, q in requests]
    assert shared.n_prefill_tokens == [full[0], full[1], full[2] - prefix[2], full[3] - prefix[3]], (
        "each video's prefix counts once, on its first request"
    )
    sampled = GenerationOptions(max_new_tokens=8, temperature=0.9, seed=5)
    assert vlm.generate(requests, sampled).token_ids == vlm.generate(requests, sampled, share_prefix=False).token_ids


@pytest.mark.parametrize("family", FAMILIES)
def test_questions_about_one_video_share_its_prefill_through_answer(qwen_vlms, qwen_dirs, clip, family):
    vlm = qwen_vlms[family]
    prof = profile(qwen_dirs[family], tau=0.9)
    questions = [QUESTION, "Describe the video in detail.", "How many?"]
    together = answer(vlm, clip, questions, prof)
    alone = [answer(vlm, clip, q, prof)[0] for q in questions]
    assert [x.answer for x in together] == [x.answer for x in alone], "prefix reuse changed a greedy answer"
    full = [x.prefill_tokens for x in alone]
    visual = together[0].tokens["final"]
    shared = [x.prefill_tokens for x in together]
    assert shared[0] == full[0] and all(s < f - visual for s, f in zip(shared[1:], full[1:], strict=True))
    assert sum(shared) < sum(full) - 2 * visual, "three questions: the video's prefix once"


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_rows_about_one_video_share_its_prefill(qwen_vlms, qwen_dirs, clip, repeated_clip, family, tmp_path):
    """The batch runner: two questions about one video and one about another in a batch of 4 answer as batches of
    1 do, and the shared video's prefix is prefilled once."""
    from scissor_cli.batch import run_batch
    from scissor_cli.jobs import Job

    vlm = qwen_vlms[family]
    prof = profile(qwen_dirs[family], tau=0.9)
    jobs = [Job("a1", clip, QUESTION), Job("a2", clip, "Describe the video in detail."),
            Job("b1", repeated_clip, QUESTION)]  # fmt: skip
    answers, prefilled = {}, {}
    for batch_size in (1, 4):
        out = tmp_path / f"b{batch_size}.jsonl"
        summary = run_batch(lambda: vlm, jobs, str(out), prof, batch_size=batch_size)
        assert summary.n_done == len(jobs)
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert {r["batch_rows"] for r in records} == ({1} if batch_size == 1 else {3}), records
        answers[batch_size] = {r["id"]: r["answer"] for r in records}
        prefilled[batch_size] = {r["id"]: r["prefill_tokens"] for r in records}
        visual = {r["id"]: r["tokens"]["final"] for r in records}
    assert answers[1] == answers[4], "batched rows with a shared prefix must answer like one call per question"
    assert prefilled[4]["a1"] == prefilled[1]["a1"] and prefilled[4]["b1"] == prefilled[1]["b1"]
    assert prefilled[4]["a2"] < prefilled[1]["a2"] - visual["a2"], "the second question reuses the video's prefix"


# Runs in a fresh interpreter: the shim must come before transformers decides torchvision is missing.
_COMPARE = """
import json, sys, types
import numpy as np, torch
where, family, n_frames, height, width, settings = sys.argv[1:7]
s = json.loads(settings)
try:
    import torchvision  # noqa: F401
except (ImportError, RuntimeError):
    for name in list(sys.modules):
        if name.startswith("torchvision"):
            del sys.modules[name]
    sys.path.insert(0, where)
    for name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
        sys.modules.setdefault(name, types.ModuleType(name))
    import torchvision  # noqa: F401
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
from scissor_cli.families.qwen import Qwen25VL, Qwen3VL, QwenSettings
from scissor_cli.families.qwen_preprocess import preprocess
n_frames, height, width = int(n_frames), int(height), int(width)
cls = Qwen2VLVideoProcessor if family == "qwen2_5_vl" else Qwen3VLVideoProcessor
proc = cls(size={"shortest_edge": s["min_pixels"], "longest_edge": s["max_pixels"]}, image_mean=s["mean"],
           image_std=s["std"], patch_size=s["patch"], merge_size=s["merge"], temporal_patch_size=s["temporal"],
           do_sample_frames=False, cap_pixels_per_frame=False)
frames = np.random.default_rng(n_frames).integers(0, 256, (n_frames, height, width, 3), dtype=np.uint8)
ref = proc(videos=[frames], return_tensors="pt")
fam = Qwen25VL if family == "qwen2_5_vl" else Qwen3VL
size = fam.frame_size(None, QwenSettings(**{**s, "mean": tuple(s["mean"]), "std": tuple(s["std"])}), n_frames,
                      height, width)
pixels, grid = preprocess(frames, size, s["mean"], s["std"], s["patch"], s["merge"], s["temporal"])
assert ref.video_grid_thw[0].tolist() == list(grid), (ref.video_grid_thw, grid)
assert torch.equal(pixels, ref.pixel_values_videos), (pixels - ref.pixel_values_videos).abs().max()
print("same", list(grid))
"""


def _torchvision_dir() -> str | None:
    """Where a torchvision for the comparison is: importable already (None returned as ""), or the folder
    SCISSOR_TEST_TORCHVISION names, holding a PyPI torchvision (pip install --no-deps --target DIR) that a test-only
    shim imports beside the CPU torch by stubbing its two op-registration modules."""
    import importlib.util

    if importlib.util.find_spec("torchvision") is not None:
        return ""
    where = os.environ.get("SCISSOR_TEST_TORCHVISION")
    return where if where and (Path(where) / "torchvision").is_dir() else None


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("n_frames, height, width", [(8, 64, 96), (5, 90, 160), (4, 300, 200)])
def test_preprocessing_matches_transformers_video_processor(qwen_vlms, family, n_frames, height, width):
    """Bit for bit: resize size, pixels and patch order, odd frame counts padded (5), upscaled and downscaled."""
    import dataclasses
    import json
    import subprocess

    where = _torchvision_dir()
    if where is None:
        pytest.skip("transformers' Qwen video processors need torchvision; set SCISSOR_TEST_TORCHVISION to a folder "
                    "holding a PyPI torchvision (pip install --no-deps --target) to compare")  # fmt: skip
    settings = json.dumps(dataclasses.asdict(qwen_vlms[family].family_settings))
    run = subprocess.run([sys.executable, "-c", _COMPARE, where, family, str(n_frames), str(height), str(width),
                          settings], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0 and run.stdout.startswith("same"), run.stderr[-3000:]


def test_unknown_family_is_refused_with_its_model_type(tmp_path):
    from scissor_cli.families import family_of

    with pytest.raises(ModelError) as e:
        family_of({"model_type": "internvl", "architectures": ["InternVLForConditionalGeneration"]}, "some/model")
    message = str(e.value)
    assert "internvl" in message and "Qwen2.5-VL (qwen2_5_vl)" in message and "Qwen3-VL (qwen3_vl)" in message
    assert "LLaVA-OneVision" in message and e.value.exit_code == 5


@pytest.mark.parametrize("family", FAMILIES)
def test_older_transformers_is_refused_naming_the_version(qwen_dirs, family, monkeypatch):
    import transformers

    from scissor_cli.families import QWEN2_5_VL, QWEN3_VL

    fam = QWEN2_5_VL if family == "qwen2_5_vl" else QWEN3_VL
    monkeypatch.setattr(transformers, "__version__", "5.0.0")
    with pytest.raises(ModelError) as e:
        load_model(ModelOptions(model=str(qwen_dirs[family]), device="cpu"))
    assert f"needs transformers >= {fam.min_transformers}" in str(e.value) and "5.0.0" in str(e.value)
    assert e.value.exit_code == 5
    monkeypatch.setattr(transformers, "__version__", fam.min_transformers)
    assert load_model(ModelOptions(model=str(qwen_dirs[family]), device="cpu")).family is fam

"""pipeline.py end to end on a tiny random checkpoint: with compression off the LLM sees exactly transformers' own
video tokens; the feature cache (through ``encode_video``); seeds recorded so that sampled answers reproduce; the
checkpoint's own SCC settings; URLs and stdin."""

from __future__ import annotations

import functools
import http.server
import subprocess
import threading

import pytest
import torch
from tiny_checkpoint import build_tiny_checkpoint
from typer.testing import CliRunner

from scissor_cli import video as video_io
from scissor_cli.cache import FeatureCache
from scissor_cli.cli import app
from scissor_cli.model import load_model, preprocess_frames
from scissor_cli.options import ModelOptions, Profile
from scissor_cli.pipeline import answer, compress_video, encode_video, model_fingerprint, resolve_profile

QUESTION = "What is happening in this video?"


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """2 s of ffmpeg's moving test pattern at 10 fps: every frame differs from the others."""
    path = tmp_path_factory.mktemp("pipeline") / "clip.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=10", "-t", "2",
                    "-pix_fmt", "yuv420p", "-movflags", "+faststart", str(path)], check=True, timeout=60)  # fmt: skip
    return path


@pytest.fixture(scope="module")
def vlm(tiny_hf_dir):
    return load_model(ModelOptions(model=str(tiny_hf_dir), dtype="float32"))


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SCISSOR_CACHE_DIR", str(tmp_path / "cache"))


def _capture_generate(vlm, monkeypatch) -> list:
    """Record every ``generate`` call's requests and output on this model."""
    calls = []
    real = vlm.generate

    def spy(requests, gen):
        out = real(requests, gen)
        calls.append((requests, out))
        return out

    monkeypatch.setattr(vlm, "generate", spy)
    return calls


def test_no_compress_answer_is_transformers_own_path(vlm, clip, monkeypatch):
    """Through answer(): every frame's tokens, in frame-major order, reach the LLM: the logits and the greedy
    answer equal transformers' LLaVA-OneVision path on the same frames (expanded <video> ids + pixel values)."""
    profile = Profile().override(sampling={"n_frames": 5}, compression={"enabled": False})
    profile = profile.override(generation={"max_new_tokens": 12}, model={"cache": False})
    calls = _capture_generate(vlm, monkeypatch)
    (result,) = answer(vlm, str(clip), QUESTION, profile)
    ((requests, generated),) = calls
    ((tokens, question),) = requests
    n_video = 5 * vlm.tokens_per_frame
    assert result.tokens == {"original": n_video, "spatial": n_video, "final": n_video}
    assert tokens.shape == (n_video, vlm.hidden_size), "every token of every frame goes to the LLM"

    # transformers' own path on the same frames
    frames = video_io.sample_frames(str(clip), n_frames=5).frames
    pixels = preprocess_frames(frames, vlm.image_size, vlm.mean, vlm.std)[None]
    tok, cfg = vlm.tokenizer, vlm.hf_model.config
    conv = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}]
    ids = tok(tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)).input_ids
    p = ids.index(cfg.video_token_index)
    ids = torch.tensor([ids[:p] + [cfg.video_token_index] * (n_video + 1) + ids[p + 1 :]])  # + image_newline
    model = vlm.hf_model
    with torch.inference_mode():
        ref_logits = model(input_ids=ids, pixel_values_videos=pixels).logits
        ours = vlm.embed_request(tokens, question)[None]
        assert ours.shape[1] == ids.shape[1], "sequence length differs from transformers' expanded prompt"
        our_logits = model(inputs_embeds=ours).logits
        ref = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            pixel_values_videos=pixels,
            max_new_tokens=12,
            do_sample=False,
            suppress_tokens=vlm.suppress_ids,
            eos_token_id=vlm._eos_ids(),
            pad_token_id=tok.pad_token_id,
        )[0, ids.shape[1] :].tolist()
    diff = (our_logits - ref_logits).abs().max().item()
    assert torch.equal(our_logits, ref_logits), (
        f"the LLM saw other video tokens than transformers' (max |dlogit| {diff})"
    )
    eos = set(vlm._eos_ids())
    ref = ref[: next((i for i, t in enumerate(ref) if t in eos), len(ref))]
    assert len(ref) >= 3, f"degenerate reference generation {ref}"
    assert generated.token_ids[0] == ref and result.answer == tok.decode(ref, skip_special_tokens=True).strip()


def test_no_compress_keeps_frame_major_order(vlm, clip):
    profile = resolve_profile(vlm, Profile().override(sampling={"n_frames": 3}, compression={"enabled": False}))
    encoded = encode_video(vlm, str(clip), profile, cache=None)
    features = encoded.features  # [F, T, D]
    compressed = compress_video(encoded, profile)
    f, t = features.shape[:2]
    for i in (0, t - 1, t, f * t - 1):  # token i is frame i // T, position i % T
        assert torch.equal(compressed.tokens[i], features[i // t, i % t]), f"token {i} is out of place"


def test_cache_hit_skips_the_vision_tower(vlm, clip, tmp_path, monkeypatch):
    calls = []
    hook = vlm.hf_model.model.vision_tower.register_forward_hook(lambda *a: calls.append(1))
    cache = FeatureCache(tmp_path / "features")
    profile = resolve_profile(vlm, Profile().override(sampling={"n_frames": 4}))
    try:
        first = encode_video(vlm, str(clip), profile, cache=cache)
        n_calls = len(calls)
        second = encode_video(vlm, str(clip), profile, cache=cache)
        other_plan = encode_video(vlm, str(clip), profile.override(sampling={"n_frames": 3}), cache=cache)
    finally:
        hook.remove()
    assert n_calls >= 1 and not first.cache_hit and len(cache.entries()) == 2
    assert second.cache_hit and second.backend == "cache" and len(calls) == n_calls + 1, (
        "a cache hit must not run the vision tower; another frame plan must"
    )
    assert torch.equal(second.features, first.features) and second.indices == first.indices
    assert not other_plan.cache_hit and other_plan.features.shape[0] == 3


def test_a_cache_hit_with_fewer_frames_than_planned_says_so(vlm, clip, tmp_path):
    profile = resolve_profile(vlm, Profile().override(sampling={"n_frames": 6}))
    cache = FeatureCache(tmp_path / "cache")
    first = encode_video(vlm, str(clip), profile, cache=cache)
    assert first.note is None and len(first.indices) == 6
    # as if the file had ended early when it was encoded: the entry holds 4 of the 6 planned frames
    key = cache.key(str(clip), first.indices, model_fingerprint(vlm), vlm.revision, str(vlm.dtype))
    cache.put(key, first.features[:4])
    again = encode_video(vlm, str(clip), profile, cache=cache)
    assert again.cache_hit and again.indices == first.indices[:4] and again.timestamps == first.timestamps[:4]
    assert again.note and "only 4 of 6 planned frames" in again.note


def test_stdin_shares_the_files_cache_entry_and_urls_are_not_cached(vlm, clip, tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    profile = resolve_profile(vlm, Profile().override(sampling={"n_frames": 4}))
    from_file = encode_video(vlm, str(clip), profile, cache=cache)
    with open(clip, "rb") as stdin, video_io.opened("-", stdin=stdin) as info:
        from_stdin = encode_video(vlm, "-", profile, cache=cache, info=info)
    assert from_stdin.cache_hit and from_stdin.path == "-", "the same bytes on stdin are the same cache entry"
    assert torch.equal(from_stdin.features, from_file.features)

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(clip.parent))
    handler.func.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{clip.name}"
        empty = FeatureCache(tmp_path / "url-cache")
        from_url = encode_video(vlm, url, profile, cache=empty)
    finally:
        server.shutdown()
        server.server_close()
    assert not from_url.cache_hit and from_url.backend == "ffmpeg" and empty.entries() == []
    assert from_url.features.shape == from_file.features.shape


def test_checkpoint_tau_of_zero_is_used(tmp_path, clip):
    d = build_tiny_checkpoint(tmp_path / "zip0", layout="llava-next", zip_tau=0.0, zip_epsilon=0.1)
    vlm = load_model(ModelOptions(model=str(d), dtype="float32"))
    assert (vlm.default_tau, vlm.default_epsilon) == (0.0, 0.1)
    resolved = resolve_profile(vlm, Profile())
    assert (resolved.compression.tau, resolved.compression.epsilon) == (0.0, 0.1), "0.0 is a threshold, not unset"
    profile = Profile().override(sampling={"n_frames": 3}, generation={"max_new_tokens": 2}, model={"cache": False})
    (result,) = answer(vlm, str(clip), QUESTION, profile)
    assert result.tau == 0.0 and result.profile["compression"]["tau"] == 0.0
    assert result.tokens["final"] < result.tokens["original"], "tau 0 merges far more than the paper's 0.9"
    assert resolve_profile(None, Profile()).compression.tau == 0.9  # no checkpoint: the paper's value


def test_greedy_records_no_seed_and_sampling_records_the_drawn_one(vlm):
    greedy = resolve_profile(vlm, Profile())
    assert greedy.generation.seed is None and greedy.compression.seed == 0
    sampled = Profile().override(generation={"temperature": 1.0})
    seeds = {resolve_profile(vlm, sampled).generation.seed for _ in range(4)}
    assert None not in seeds and len(seeds) > 1, f"a seed must be drawn per run, got {seeds}"
    drawn = resolve_profile(vlm, sampled)
    assert drawn.compression.seed == drawn.generation.seed, "a drawn seed is used where --seed would be"
    fixed = resolve_profile(vlm, sampled.override(generation={"seed": 7}, compression={"seed": 7}))
    assert (fixed.generation.seed, fixed.compression.seed) == (7, 7)


def test_sampled_answer_reproduces_from_its_recorded_seed(tiny_hf_dir, clip):
    import json

    def ask(*extra):
        args = ["ask", str(clip), QUESTION, "--model", str(tiny_hf_dir), "--frames", "3", "--max-new-tokens", "10"]
        result = CliRunner().invoke(app, [*args, "--temperature", "1.5", "--json", *extra])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout.strip().splitlines()[-1])

    first, second = ask(), ask()
    seed = first["profile"]["generation"]["seed"]
    assert isinstance(seed, int) and seed != second["profile"]["generation"]["seed"], "each run draws its own seed"
    again = ask("--seed", str(seed))
    assert again["profile"]["generation"]["seed"] == seed
    assert again["answer"] == first["answer"], "--seed with the recorded seed must reproduce the sampled answer"


def test_a_profile_may_leave_the_generation_seed_unset(tmp_path):
    from scissor_cli.errors import OptionError
    from scissor_cli.profiles import load_profile

    path = tmp_path / "sampling.yaml"
    path.write_text("generation:\n  temperature: 0.7\n  seed: null\n")
    profile = load_profile(str(path))
    assert (profile.generation.temperature, profile.generation.seed) == (0.7, None)
    assert resolve_profile(None, profile).generation.seed is not None, "sampling without a seed draws one"
    path.write_text("generation:\n  seed: 12\n")
    assert load_profile(str(path)).generation.seed == 12
    with pytest.raises(OptionError, match="generation.seed"):
        Profile().override(generation={"seed": 1.5})


def test_questions_about_one_video_share_its_prefill(vlm, clip):
    profile = Profile().override(sampling={"n_frames": 4}, generation={"max_new_tokens": 8}, model={"cache": False})
    questions = ["What is happening?", "Describe the video in detail.", "How many?"]
    together = answer(vlm, str(clip), questions, profile)
    alone = [answer(vlm, str(clip), q, profile)[0] for q in questions]
    assert [a.answer for a in together] == [a.answer for a in alone], "prefix reuse changed a greedy answer"
    full = [a.prefill_tokens for a in alone]  # one question per call: every prompt token is prefilled
    visual = together[0].tokens["final"]
    assert full[0] == vlm.prompt_length(visual, questions[0])
    shared = [a.prefill_tokens for a in together]
    assert shared[0] == full[0] and all(s < f - visual for s, f in zip(shared[1:], full[1:], strict=True))
    prefix = len(vlm.prompt_ids(questions[0])[0]) + visual + int(vlm.newline)
    assert sum(shared) == sum(full) - 2 * prefix, "the video prefix is prefilled once for the three questions"
    assert together[1].to_dict()["prefill_tokens"] == shared[1]


# ---------------------------------------------------------------------------------------------------- VideoRun
def test_a_video_run_compresses_once_per_setting_and_answers_in_batches(vlm, clip, monkeypatch):
    import scissor_cli.pipeline as pipeline

    compressions = []
    real = pipeline.compress_video
    monkeypatch.setattr(pipeline, "compress_video", lambda e, p: compressions.append(p.compression) or real(e, p))
    profile = Profile().override(sampling={"n_frames": 4}, generation={"max_new_tokens": 3}, model={"cache": False})
    run = pipeline.VideoRun.open(vlm, str(clip), profile)
    half, tenth = profile.override(compression={"retention": 0.5}), profile.override(compression={"retention": 0.1})
    first = run.compressed(half)
    assert run.compressed(half) is first and len(compressions) == 1, "a setting already compressed runs SCC again"
    assert run.compressed(tenth).n_final < first.n_final and len(compressions) == 2
    assert run.compressed(half) is first and run.compressed() is run.compressed(run.profile)
    assert len(compressions) == 3, "the run's own setting once more, then nothing new"
    calls = _capture_generate(vlm, monkeypatch)
    questions = ["What?", "Who?", "Where?"]
    batched = run.answer(questions, half, batch_size=2)
    assert [len(requests) for requests, _ in calls] == [2, 1], "batch_size rows per generate call"
    assert [a.question for a in batched] == questions and {a.tokens["final"] for a in batched} == {first.n_final}
    (at_tenth,) = run.answer(["What?"], tenth)
    scc = run.compressed(tenth).result  # the records' names for SCC's own counts
    assert at_tenth.tokens == {"original": scc.n_input, "spatial": scc.n_spatial, "final": scc.n_output}
    assert (at_tenth.retention, at_tenth.tau, at_tenth.epsilon) == (scc.retention, scc.tau, scc.epsilon)
    assert scc.n_input > scc.n_spatial > scc.n_output, "counts this test cannot tell apart"
    assert [a.answer for a in batched] == [a.answer for a in run.answer(questions, half)], "batching changed one"
    assert len(compressions) == 3 and run.encoded.decode_s > 0, "one encoding, compressions reused"


def test_a_video_run_has_one_seed_for_scc_and_every_sampled_answer(vlm, clip):
    from scissor_cli.pipeline import VideoRun

    sampled = Profile().override(sampling={"n_frames": 3}, generation={"temperature": 1.0}, model={"cache": False})
    run = VideoRun.open(vlm, str(clip), sampled)
    seed = run.profile.generation.seed
    assert seed is not None and run.profile.compression.seed == seed, "the drawn seed is SCC's too"
    hotter = run.resolved(sampled.override(generation={"temperature": 1.5}, compression={"retention": 0.5}))
    assert (hotter.generation.seed, hotter.compression.seed) == (seed, seed), "a second draw inside one run"
    given = run.resolved(sampled.override(generation={"seed": 3}))
    assert given.generation.seed == 3, "a seed given is kept"
    greedy = VideoRun(vlm, run.encoded, Profile().override(sampling={"n_frames": 3}, model={"cache": False}))
    assert greedy.profile.generation.seed is None, "greedy decoding records no seed"
    later = greedy.resolved(greedy.profile.override(generation={"temperature": 1.0}))
    assert later.generation.seed == greedy.profile.compression.seed, "a later sampled question: the run's SCC seed"


def test_the_seed_rule_is_the_same_for_answer_batch_and_chat(vlm, clip, tmp_path):
    """One video, one question, sampling: answer() draws a seed; that seed, given back to answer(), to a batch run
    and to a chat session, gives the same sampled answer in each."""
    import json

    from scissor_cli.batch import run_batch
    from scissor_cli.chat import ChatSession
    from scissor_cli.jobs import Job

    profile = Profile().override(sampling={"n_frames": 3}, generation={"temperature": 1.5, "max_new_tokens": 10},
                                 compression={"retention": 0.5}, model={"cache": False})  # fmt: skip
    (drawn,) = answer(vlm, str(clip), QUESTION, profile)
    seed = drawn.profile["generation"]["seed"]
    assert isinstance(seed, int) and drawn.profile["compression"]["seed"] == seed
    seeded = profile.override(generation={"seed": seed}, compression={"seed": seed})  # what --seed sets
    (again,) = answer(vlm, str(clip), QUESTION, seeded)
    out = tmp_path / "batch.jsonl"
    run_batch(lambda: vlm, [Job("j", str(clip), QUESTION)], str(out), seeded, batch_size=1)
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    session = ChatSession(vlm, seeded, history=False)
    session.open(str(clip))
    turn = session.ask(QUESTION)
    answers = {"answer()": again.answer, "batch": record["answer"], "chat": turn.answer.answer}
    assert set(answers.values()) == {drawn.answer}, (drawn.answer, answers)
    assert record["profile"]["generation"]["seed"] == turn.answer.profile["generation"]["seed"] == seed
    other = answer(vlm, str(clip), QUESTION, profile.override(generation={"seed": seed + 1}))[0]
    assert other.answer != drawn.answer, "another seed must sample another answer (else this test cannot fail)"


def test_answer_to_dict_is_every_field_in_the_records_order():
    import dataclasses

    from scissor_cli.pipeline import Answer

    a = Answer(video="v.mp4", question="Q?", answer="A.", tokens={"original": 8, "spatial": 4, "final": 2},
               retention=0.25, tau=0.9, tau_temporal=None, epsilon=0.05, frames=2, timestamps=(0.0, 0.5),
               timings_s={"decode": 0.1}, tflops={"before": 1.0, "after": 0.5}, model="m", device="cpu",
               dtype="float32", cache_hit=False, note=None, profile={"sampling": {"n_frames": 2}},
               budget={"retention": 0.25, "tokens": 2}, prefill_tokens=30)  # fmt: skip
    d = a.to_dict()
    assert list(d) == ["video", "question", "answer", "tokens", "retention", "tau", "tau_temporal", "epsilon",
                       "budget", "frames", "timestamps", "timings_s", "tflops", "prefill_tokens", "model", "device",
                       "dtype", "engine", "cache_hit", "note", "profile"]  # fmt: skip
    assert d["engine"] == "hf", "an Answer built without one ran on the default engine"
    assert d["timestamps"] == [0.0, 0.5] and d["budget"] == {"retention": 0.25, "tokens": 2}
    d["tokens"]["final"] = 0
    assert a.tokens["final"] == 2, "the record's dicts are copies"

    @dataclasses.dataclass(frozen=True)
    class Later(Answer):
        added: int = 7

    assert list(Later(**dataclasses.asdict(a)).to_dict())[-1] == "added", "a new field is written, last"

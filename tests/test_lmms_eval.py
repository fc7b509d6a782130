"""lmms-eval tier (`make test-eval`): scissor as the lmms-eval model ``scissor``, offline, on a tiny random checkpoint.

Most tests need the ``eval`` extra (lmms-eval), so they carry the ``lmms_eval`` marker, which the default run
deselects; the first test (which modules import lmms_eval) runs in the default tier too.
The real ``lmms-eval`` command line runs in a subprocess on the ``scissor_smoke`` task (tests/lmms_tasks), reading
``scissor_smoke.jsonl`` from its working directory: the sample clip and clips made here, two questions each. One
clip is noise, which the tiny model keeps ~95 % of at the default tau: without the budget the 10 % check would fail.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

needs_lmms_eval = pytest.mark.lmms_eval

ROOT = Path(__file__).resolve().parent.parent
TASKS = ROOT / "tests" / "lmms_tasks"
SAMPLE = ROOT / "samples" / "bigbuckbunny.mp4"
QUESTIONS = ("What is happening in this video?", "How many people appear in the clip?")
OPTIONS = ["a dog", "a cat", "a car", "a person"]
FRAMES = 8
N_DOCS = 8  # 4 videos x 2 questions


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("SCISSOR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SCISSOR_PROFILES_DIR", str(tmp_path / "profiles"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("SCISSOR_DEBUG", raising=False)


def _env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HOME=str(tmp / "hf"),
        SCISSOR_CACHE_DIR=str(tmp / "cache"),
        SCISSOR_PROFILES_DIR=str(tmp / "profiles"),
        PYTHONPATH=str(ROOT),
    )
    env.pop("SCISSOR_DEBUG", None)
    return env


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_hf_dir):
    """A folder holding scissor_smoke.jsonl (absolute video paths): 4 videos x 2 questions = 8 docs."""
    from media import make_media

    root = tmp_path_factory.mktemp("lmms")
    media = make_media(root / "media")
    noise = root / "noise.mp4"  # incompressible: every frame random
    lavfi = "color=c=gray:s=96x64:r=10:d=4,noise=alls=100:allf=t+u"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", lavfi, "-pix_fmt", "yuv420p", str(noise)], check=True)
    videos = [str(SAMPLE), str(media.index_mp4), str(media.rot90), str(noise)]
    docs = [
        {"video": v, "question": q, "options": OPTIONS, "answer": "ABCD"[i % 4]}
        for i, (v, q) in enumerate((v, q) for v in videos for q in QUESTIONS)
    ]
    (root / "scissor_smoke.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    return root


def lmms_eval(workdir: Path, model_args: str, out: str, *extra: str, launcher=()) -> subprocess.CompletedProcess:
    cmd = [sys.executable, *launcher, "-m", "lmms_eval", "--model", "scissor", "--model_args", model_args]
    cmd += ["--tasks", "scissor_smoke", "--include_path", str(TASKS), "--batch_size", "1", "--output_path", out]
    return subprocess.run(
        [*cmd, *extra], cwd=workdir, env=_env(workdir), capture_output=True, text=True, timeout=600, check=False
    )


def outputs(folder: Path, kind: str) -> list[Path]:
    return sorted(Path(p) for p in glob.glob(str(folder / "**" / f"*_{kind}*"), recursive=True))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_only_the_plugin_imports_lmms_eval():
    """`import scissor_cli...` must stay light without the extra: lmms_eval appears in one module, and the entry
    point names that module's MANIFEST."""
    import ast

    importers = set()
    for path in sorted((ROOT / "scissor_cli").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "lmms_eval" or n.startswith("lmms_eval.") for n in names):
                importers.add(path.name)
    assert importers == {"lmms_eval_plugin.py"}, importers
    entry = '[project.entry-points."lmms_eval.models"]\nscissor = "scissor_cli.lmms_eval_plugin:MANIFEST"\n'
    assert entry in (ROOT / "pyproject.toml").read_text(), "the entry point must name the plugin's MANIFEST"


@needs_lmms_eval
def test_entry_point_registers_scissor():
    from lmms_eval.models import get_model

    from scissor_cli.lmms_eval_plugin import Scissor

    assert get_model("scissor") is Scissor, "the lmms_eval.models entry point must resolve --model scissor"


@needs_lmms_eval
def test_smoke_task_at_ten_percent(workdir, tiny_hf_dir):
    run = lmms_eval(workdir, f"pretrained={tiny_hf_dir},retention=0.1,max_frames_num={FRAMES}", "out10")
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stdout[-3000:] + run.stderr[-3000:]
    (results_file,) = outputs(workdir / "out10", "results.json")
    results = json.loads(results_file.read_text())["results"]["scissor_smoke"]
    assert 0.0 <= results["acc,none"] <= 1.0, f"accuracy metric missing: {results}"

    (stats_file,) = outputs(workdir / "out10", "scissor_stats_rank0")
    assert stats_file.parent == results_file.parent, "the stats file sits beside lmms-eval's results"
    records = read_jsonl(stats_file)
    samples = [r for r in records if not r.get("summary")]
    assert sorted((r["task"], r["doc_id"]) for r in samples) == [("scissor_smoke", i) for i in range(N_DOCS)]
    for r in samples:
        assert r["retention"] <= 0.1, f"doc {r['doc_id']} kept {r['retention']:.1%} of its tokens"
        assert r["tokens"]["final"] <= 0.1 * r["tokens"]["original"] and r["tokens"]["original"] > 0
        assert r["frames"] == FRAMES
        assert r["tokens"]["final"] < r["prefill_tokens"], "alone in its batch, a sample prefills its whole prompt"
    (summary,) = [r for r in records if r.get("summary")]
    assert summary["task"] == "scissor_smoke" and summary["n_samples"] == N_DOCS
    assert summary["mean_retention"] == pytest.approx(sum(r["retention"] for r in samples) / N_DOCS)
    assert records[-1] is not None and records[-1].get("summary"), "the per-task mean is the last line"
    # one encoding per video: the second question about a video reuses it
    shared = {r["doc_id"]: r["encoding_shared"] for r in samples}
    assert shared == {i: i % 2 == 1 for i in range(N_DOCS)}


@needs_lmms_eval
def test_no_compress_answers_match_scissor_ask(workdir, tiny_hf_dir):
    run = lmms_eval(workdir, f"pretrained={tiny_hf_dir},no_compress=True,frames={FRAMES}", "out_full", "--log_samples")
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stdout[-3000:] + run.stderr[-3000:]
    (samples_file,) = outputs(workdir / "out_full", "samples_scissor_smoke")
    samples = {s["doc_id"]: s for s in read_jsonl(samples_file)}
    docs = read_jsonl(workdir / "scissor_smoke.jsonl")
    stats = [r for r in read_jsonl(outputs(workdir / "out_full", "scissor_stats")[0]) if not r.get("summary")]
    assert all(r["retention"] == 1.0 for r in stats), "no_compress=True sends every token"

    for video in dict.fromkeys(d["video"] for d in docs):
        ids = [i for i, d in enumerate(docs) if d["video"] == video]
        prompts = [samples[i]["input"] for i in ids]  # the task's full prompt (pre_prompt, options, post_prompt)
        more = [arg for p in prompts[1:] for arg in ("-q", p)]
        cmd = [sys.executable, "-m", "scissor_cli", "ask", video, prompts[0], *more]
        cmd += ["--no-compress", "--frames", str(FRAMES), "--max-new-tokens", "8", "--model", str(tiny_hf_dir)]
        ask = subprocess.run([*cmd, "--json"], env=_env(workdir), capture_output=True, text=True, timeout=300)
        assert ask.returncode == 0, ask.stderr
        answers = [json.loads(line)["answer"] for line in ask.stdout.splitlines() if line.strip()]
        got = [samples[i]["filtered_resps"] for i in ids]
        got = [g[0] if isinstance(g, list) else g for g in got]
        assert got == answers, f"{video}: lmms-eval answers {got} != scissor ask --no-compress {answers}"
    assert len({s["filtered_resps"] if isinstance(s["filtered_resps"], str) else s["filtered_resps"][0]
                for s in samples.values()}) > 1, "answers all equal: the comparison would prove nothing"  # fmt: skip


@needs_lmms_eval
def test_two_processes_write_one_stats_file_each(workdir, tiny_hf_dir):
    """torchrun, 2 CPU processes: lmms-eval shards the docs; each rank writes its own stats file, none collide."""
    launcher = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2")
    run = lmms_eval(workdir, f"pretrained={tiny_hf_dir},retention=0.1,max_frames_num=4", "out_mp", launcher=launcher)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stdout[-3000:] + run.stderr[-3000:]
    assert len(outputs(workdir / "out_mp", "results.json")) == 1
    # each rank stamps its file with its own clock: the two stamps can straddle a second, so order by rank
    files = sorted(outputs(workdir / "out_mp", "scissor_stats"), key=lambda f: f.name.rsplit("_", 1)[-1])
    assert [f.name.rsplit("_", 1)[-1] for f in files] == ["rank0.jsonl", "rank1.jsonl"], files
    per_rank = [[r for r in read_jsonl(f) if not r.get("summary")] for f in files]
    assert all(r["rank"] == rank for rank, records in enumerate(per_rank) for r in records)
    ids = [sorted(r["doc_id"] for r in records) for records in per_rank]
    assert ids[0] and ids[1] and sorted(ids[0] + ids[1]) == list(range(N_DOCS)), f"docs per rank: {ids}"


@needs_lmms_eval
@pytest.mark.parametrize(
    "bad, words",
    [
        ("colour=red", ["unknown model_args colour"]),
        ("tau=2", ["error: tau 2.0 is out of range"]),
        ("retention=0", ["error: retention 0.0 is out of range"]),
    ],
)
def test_bad_model_args_fail_in_one_line(workdir, tiny_hf_dir, bad, words):
    run = lmms_eval(workdir, f"pretrained={tiny_hf_dir},{bad}", "out_bad")
    assert run.returncode == 2, f"exit {run.returncode}\n{run.stdout[-2000:]}\n{run.stderr[-2000:]}"
    assert "Traceback" not in run.stdout + run.stderr
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and all(w in errors[0] for w in words), lines
    assert lines[lines.index(errors[0]) + 1].startswith("hint:"), lines
    assert not outputs(workdir / "out_bad", "scissor_stats"), "nothing ran"


# ------------------------------------------------------------------------------------ in-process: the model class
@pytest.fixture(scope="module")
def model(tiny_hf_dir, tmp_path_factory):
    from scissor_cli.lmms_eval_plugin import Scissor

    out = tmp_path_factory.mktemp("inproc")
    argv = sys.argv
    sys.argv = ["lmms-eval", "--output_path", str(out / "out")]
    try:
        return Scissor.create_from_arg_string(
            f"pretrained={tiny_hf_dir},retention=0.5,max_frames_num=4", {"batch_size": "2", "device": None}
        )
    finally:
        sys.argv = argv


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    from media import make_media

    media = make_media(tmp_path_factory.mktemp("clips"))
    return [str(media.index_mp4), str(media.rot90)]


def requests(lm, docs, gen_kwargs, task="t"):
    from lmms_eval.api.instance import Instance

    lm.task_dict = {task: {"test": docs}}
    visual = lambda doc: doc["visual"]  # noqa: E731
    return [
        Instance(
            request_type="generate_until",
            arguments=(doc["question"], dict(gen_kwargs), visual, i, task, "test"),
            idx=0,
            metadata={"task": task, "doc_id": i, "repeats": 1},
        )
        for i, doc in enumerate(docs)
    ]


GREEDY = {"max_new_tokens": 8, "do_sample": False, "until": ["\n\n"]}


@needs_lmms_eval
def test_one_encoding_per_video_and_answers_in_request_order(model, clips, monkeypatch):
    import scissor_cli.pipeline as pipeline

    docs = [{"visual": [clips[i % 2]], "question": q} for i, q in enumerate(QUESTIONS * 3)]  # videos interleaved
    alone = [model.generate_until(requests(model, [d], GREEDY))[0] for d in docs]
    calls = []
    real = pipeline.encode_video
    monkeypatch.setattr(pipeline, "encode_video", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    together = model.generate_until(requests(model, docs, GREEDY))
    assert sorted(calls) == sorted(clips), f"each video encoded once, got {calls}"
    assert together == alone, "batched, grouped answers must come back in request order, equal to one-by-one"


@needs_lmms_eval
def test_decode_ahead_gives_the_same_answers_and_leaves_nothing_running(model, clips, monkeypatch):
    """The next videos decode in worker processes (model_args decode_workers, default as batch's); answers equal
    inline decoding's, torch's threads and the model's hook are restored, and no worker outlives the call."""
    import torch

    from scissor_cli import prefetch

    docs = [{"visual": [clips[i % 2]], "question": q} for i, q in enumerate(QUESTIONS * 2)]
    # no feature cache: the inline run would fill it, and cached videos are (rightly) never decoded ahead
    monkeypatch.setattr(model, "profile", model.profile.override(model={"cache": False}))
    threads = torch.get_num_threads()
    model.decode_workers = 0
    inline = model.generate_until(requests(model, docs, GREEDY))
    started = []
    real_start = prefetch.Prefetcher.start

    def start(self):
        real_start(self)
        started.append((self, list(self.pids)))

    monkeypatch.setattr(prefetch.Prefetcher, "start", start)
    from scissor_cli import video as video_io

    here = []  # decodes in this process (the workers are other processes)
    real_sample = video_io.sample_frames
    monkeypatch.setattr(video_io, "sample_frames", lambda *a, **k: here.append(a[0]) or real_sample(*a, **k))
    hooked = []  # whether the model's step hook (CoreShare) was installed, at each generate call
    real_generate = model.vlm.generate
    monkeypatch.setattr(
        model.vlm, "generate", lambda *a, **k: hooked.append(model.vlm.on_step) or real_generate(*a, **k)
    )
    model.decode_workers = 2
    try:
        ahead = model.generate_until(requests(model, docs, GREEDY))
    finally:
        model.decode_workers = 0
    assert hooked and all(isinstance(h, prefetch.CoreShare) for h in hooked), hooked
    assert ahead == inline, "decode-ahead changed an answer"
    ((prefetcher, pids),) = started
    assert prefetcher.n_sent == len(clips) and len(pids) == 2, "each video decoded once, in a worker"
    assert here == [], "the workers' frames were used, not decoded again here"
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # stopped and reaped: not even a zombie
    assert model.vlm.on_step is None and torch.get_num_threads() == threads


@needs_lmms_eval
def test_a_drawn_sampling_seed_is_in_the_stats_and_reproduces_the_answer(model, clips, monkeypatch):
    doc = [{"visual": [clips[0]], "question": QUESTIONS[0]}]
    sampled = {"max_new_tokens": 8, "do_sample": True, "temperature": 1.5}

    def last_record() -> dict:
        return [r for r in read_jsonl(model.stats_file) if not r.get("summary")][-1]

    import scissor_cli.pipeline as pipeline

    scc_seeds = []  # the seed SCC's sampled regime got, per video
    real = pipeline.compress_video
    monkeypatch.setattr(pipeline, "compress_video", lambda e, p: scc_seeds.append(p.compression.seed) or real(e, p))
    assert model.profile.generation.seed is None, "the fixture sets no seed: the plugin must draw one"
    first = model.generate_until(requests(model, doc, sampled))[0]
    seed = last_record()["seed"]
    assert isinstance(seed, int) and scc_seeds == [seed], "one seed for SCC and generation, as seed= would set"
    answers, seeds = {first}, {seed}
    for _ in range(3):  # each call draws afresh, and at temperature 1.5 the answers vary
        answers.add(model.generate_until(requests(model, doc, sampled))[0])
        seeds.add(last_record()["seed"])
    assert len(seeds) == 4 and len(answers) > 1, (seeds, answers)
    from scissor_cli.lmms_eval_plugin import parse_model_args

    given = parse_model_args({"seed": seed}).profile  # what seed=<recorded> in model_args sets
    replay = model.profile.override(generation={"seed": given.generation.seed},
                                    compression={"seed": given.compression.seed})  # fmt: skip
    monkeypatch.setattr(model, "profile", replay)
    assert model.generate_until(requests(model, doc, sampled))[0] == first, "the recorded seed reproduces it"
    assert last_record()["seed"] == seed and scc_seeds[-1] == seed, "a given seed is used and recorded as given"


@needs_lmms_eval
def test_generation_kwargs_until_and_max_new_tokens(model, clips):
    doc = [{"visual": [clips[0]], "question": QUESTIONS[0]}]
    full = model.generate_until(requests(model, doc, {"max_new_tokens": 8}))[0]
    assert len(full) > 2, f"the tiny model's answer is too short to test until: {full!r}"
    stop = full[1:3]
    cut = model.generate_until(requests(model, doc, {"max_new_tokens": 8, "until": [stop]}))[0]
    assert cut == full[: full.index(stop)], (full, stop, cut)
    short = model.generate_until(requests(model, doc, {"max_new_tokens": 1}))[0]
    assert len(short) < len(full) and full.startswith(short), (short, full)


@needs_lmms_eval
def test_generation_options_follow_hf_semantics():
    from scissor_cli.errors import OptionError
    from scissor_cli.lmms_eval_plugin import generation_options
    from scissor_cli.options import GenerationOptions

    base = GenerationOptions()
    assert generation_options(base, {"temperature": 0.7}).temperature == 0.0, "no do_sample: greedy"
    assert generation_options(base, {"do_sample": True, "temperature": 0.7, "top_p": 0.9}).temperature == 0.7
    assert generation_options(base, {"do_sample": True}).temperature == 1.0
    assert generation_options(base, {"max_new_tokens": 16}).max_new_tokens == 16
    with pytest.raises(OptionError, match="generation.temperature"):
        generation_options(base, {"do_sample": True, "temperature": 20})


@needs_lmms_eval
@pytest.mark.parametrize(
    "visual, words",
    [([], "has no video"), (None, "has no video"), (["a.mp4", "b.mp4"], "2 videos"), ("image", "Image objects")],
)
def test_non_video_docs_stop_with_one_error_naming_the_task(model, capsys, visual, words):
    from PIL import Image

    if visual == "image":
        visual = [Image.new("RGB", (8, 8))]
    with pytest.raises(SystemExit) as exit_info:
        model.generate_until(requests(model, [{"visual": visual, "question": "Q"}], GREEDY, task="imagetask"))
    assert exit_info.value.code == 4
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err[0].startswith("error: task imagetask") and words in err[0] and err[1].startswith("hint:"), err


@needs_lmms_eval
def test_unreadable_video_stops_naming_task_and_doc(model, tmp_path, capsys):
    bad = tmp_path / "notes.mp4"
    bad.write_text("a text file named .mp4\n")
    with pytest.raises(SystemExit) as exit_info:
        model.generate_until(requests(model, [{"visual": [str(bad)], "question": "Q"}], GREEDY, task="broken"))
    assert exit_info.value.code == 4
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not line.startswith("scissor:")]
    assert err[0].startswith("error: task broken (doc 0): ") and "notes.mp4" in err[0], err  # not on the bar's line
    assert err[1].startswith("hint:") and len(err) == 2, err


@needs_lmms_eval
def test_loglikelihood_names_the_alternative(model):
    from lmms_eval.api.instance import Instance

    req = Instance("loglikelihood", ("ctx", "A"), 0, metadata={"task": "egoschema_mcppl", "doc_id": 0, "repeats": 1})
    with pytest.raises(NotImplementedError, match="egoschema_mcppl.*generate_until"):
        model.loglikelihood([req])


@needs_lmms_eval
def test_model_args_mapping_and_messages(capsys, tiny_hf_dir):
    from scissor_cli.errors import OptionError
    from scissor_cli.lmms_eval_plugin import parse_model_args

    s = parse_model_args(
        {"pretrained": str(tiny_hf_dir), "tau": 1, "tau_temporal": 0.8, "epsilon": 0.1, "frames": 6, "seed": 3,
         "device": "cpu", "dtype": "float32", "newline": False, "offline": True, "batch_size": 4}
    )  # fmt: skip
    p = s.profile
    assert (p.compression.tau, p.compression.tau_temporal, p.compression.epsilon) == (1.0, 0.8, 0.1)
    assert (p.sampling.n_frames, p.compression.seed, p.generation.seed) == (6, 3, 3)
    assert (p.model.model, p.model.device, p.model.dtype) == (str(tiny_hf_dir), "cpu", "float32")
    assert (p.model.newline, p.model.offline, s.batch_size) == (False, True, 4)
    from scissor_cli.prefetch import default_decode_workers

    assert s.decode_workers == default_decode_workers() and parse_model_args({"decode_workers": 0}).decode_workers == 0
    assert parse_model_args({"max_frames_num": 12, "tokens": 20}).profile.sampling.n_frames == 12
    assert parse_model_args({"tokens": 20}).profile.compression.tokens == 20
    assert parse_model_args({"retention": 0.25}).profile.compression.retention == 0.25
    assert parse_model_args({"no_compress": True}).profile.compression.enabled is False
    assert parse_model_args({"profile": "r10"}).profile.compression.retention == pytest.approx(0.1)
    assert parse_model_args({}).cache_dir == os.environ["SCISSOR_CACHE_DIR"], "the folder, resolved once, handed on"
    assert parse_model_args({}).profile.model.engine == "hf"
    vllm = parse_model_args({"engine": "vllm", "tensor_parallel_size": 2, "max_model_len": 4096}).profile.model
    assert (vllm.engine, vllm.tensor_parallel_size, vllm.max_model_len) == ("vllm", 2, 4096)
    for args, message in [
        ({"no_compress": True, "tau": 0.5}, "no_compress contradicts tau"),
        ({"retention": 0.1, "tokens": 5}, "retention and tokens are both given"),
        ({"frames": 4, "max_frames_num": 8}, "disagree"),
        ({"tau": "high"}, "tau='high' is not a number"),
        ({"batch_size": 0}, "batch_size = 0"),
        ({"newline": "maybe"}, "newline='maybe'"),
        ({"device": "gpu"}, "device 'gpu' is out of range"),
        ({"decode_workers": -1}, "^decode_workers -1 is out of range"),
        ({"decode_workers": 1.5}, "decode_workers=1.5 is not an integer"),
        ({"engine": "tgi"}, "engine"),
        ({"tensor_parallel_size": 2}, "tensor_parallel_size"),
    ]:
        with pytest.raises(OptionError, match=message):
            parse_model_args(args)


@needs_lmms_eval
def test_each_rank_writes_its_own_stats_file(tiny_hf_dir, tmp_path, monkeypatch, capsys):
    from scissor_cli.lmms_eval_plugin import Scissor

    monkeypatch.setattr(sys, "argv", ["lmms-eval", "--output_path", str(tmp_path / "out")])
    monkeypatch.setenv("SCISSOR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    lm = Scissor(pretrained=str(tiny_hf_dir), device="cpu")
    assert (lm.rank, lm.world_size) == (1, 2)
    assert lm.stats_file.name.endswith("_scissor_stats_rank1.jsonl")
    with pytest.raises(SystemExit) as exit_info:
        Scissor(pretrained=str(tiny_hf_dir), device="cuda:0")
    assert exit_info.value.code == 2 and "puts all 2 processes on one GPU" in capsys.readouterr().err


@needs_lmms_eval
def test_a_context_the_model_cannot_hold_stops_before_any_decoding(model, clips, capsys, monkeypatch):
    import scissor_cli.pipeline as pipeline

    encoded = []
    monkeypatch.setattr(pipeline, "encode_video", lambda *a, **k: encoded.append(a[1]))
    docs = [{"visual": [clips[0]], "question": "What?"}, {"visual": [clips[1]], "question": "q" * 60_000}]
    with pytest.raises(SystemExit) as exit_info:
        model.generate_until(requests(model, docs, GREEDY, task="long"))
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err[0].startswith("error: task long doc 1's context is 60,000 characters long"), err
    assert "4,096 tokens" in err[0] and "qqqqqqqq" not in "".join(err)
    assert encoded == [], "every context is checked before the first video is decoded"


@needs_lmms_eval
def test_a_bad_cache_entry_is_one_warning_line_and_the_same_answer(model, clips, capsys, tmp_path):
    docs = [{"visual": [clips[0]], "question": "What?"}]
    model.cache_dir = str(tmp_path / "cache")  # the folder is resolved once per model: this test's own, empty
    fresh = model.generate_until(requests(model, docs, GREEDY))
    (entry,) = (tmp_path / "cache").glob("*.safetensors")
    data = bytearray(entry.read_bytes())
    data[-3] ^= 0x10  # plausible wrong values: only the checksum tells
    entry.write_bytes(bytes(data))
    capsys.readouterr()
    assert model.generate_until(requests(model, docs, GREEDY)) == fresh
    err = capsys.readouterr().err  # the warning may follow the progress bar's unfinished line
    assert err.count("warning: feature cache entry") == 1 and "does not match its checksum" in err, err

"""scissor as an lmms-eval model: ``lmms-eval --model scissor --model_args pretrained=...,retention=0.1``.

The only module that imports lmms_eval (installed with ``pip install "scissor-cli[eval]"``). lmms-eval 0.7 finds
it through the ``lmms_eval.models`` entry-point group (pyproject.toml), which points at ``MANIFEST``: a "simple"
model (``doc_to_visual`` + ``doc_to_text`` requests), so the tasks' own prompts are used unchanged.

What it runs is the library: ``load_model`` once, then per video a ``pipeline.VideoRun`` answering every question
about that video (one encoding, batches of ``batch_size`` questions).
``model_args`` are the CLI's flags under their lmms-eval names and go through the same settings -> profile
mapping and validation as the flags (``settings.resolve``), so a bad value stops with the CLI's one-line error (plus
a hint, naming the model_arg) before any sample runs. Per-sample token statistics go to
``<output_path>/<model>/..._scissor_stats_rank<R>.jsonl`` beside lmms-eval's results, one file per process.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from lmms_eval.models.registry_v2 import ModelManifest
from loguru import logger as eval_logger

from scissor_cli.errors import OptionError, ScissorError, VideoError, debug_enabled
from scissor_cli.options import GenerationOptions, Profile, validate

if TYPE_CHECKING:
    from scissor_cli.pipeline import Answer

MODEL_NAME = "scissor"
# The entry point's payload. lmms-eval loads every plugin's entry point at start-up (importing this module: light,
# torch and lmms_eval are loaded by then; the model itself loads only when `--model scissor` builds the class).
MANIFEST = ModelManifest(model_id=MODEL_NAME, simple_class_path=f"{__name__}.Scissor")

# model_arg -> (the settings.Overrides field it sets, its type). None: handled here.
MODEL_ARGS: dict[str, tuple[str | None, str]] = {
    "pretrained": ("model", "str"),
    "profile": ("profile", "str"),
    "tau": ("tau", "float"),
    "tau_temporal": ("tau_temporal", "float"),
    "epsilon": ("epsilon", "float"),
    "retention": ("retention", "float"),
    "tokens": ("tokens", "int"),
    "no_compress": ("no_compress", "bool"),
    "max_frames_num": ("frames", "int"),  # lmms-eval's usual name for the frame count
    "frames": ("frames", "int"),
    "device": ("device", "str"),
    "dtype": ("dtype", "str"),
    "batch_size": (None, "int"),
    "newline": ("newline", "bool|auto"),
    "seed": ("seed", "int"),
    "offline": ("offline", "bool"),
    "decode_workers": (None, "int"),
    "engine": ("engine", "str"),  # hf | vllm (docs/engines.md)
    "tensor_parallel_size": ("tensor_parallel_size", "int"),
    "gpu_memory_utilization": ("gpu_memory_utilization", "float"),
    "max_model_len": ("max_model_len", "int"),
}
# lmms-eval's evaluator passes these to every model (from --batch_size, --max_batch_size, --device).
HARNESS_ARGS = ("batch_size", "max_batch_size", "device")
ALTERNATIVE_TASKS = "videomme, mvbench, egoschema, mlvu_dev, nextqa_mc_test"


def _fail(e: ScissorError) -> NoReturn:
    """The CLI's error seam inside lmms-eval: one line + hint on stderr, the class's exit code.

    SystemExit, because lmms-eval catches every Exception, prints its traceback and exits 0."""
    from scissor_cli import render

    if debug_enabled():
        raise e
    render.error(e)
    raise SystemExit(e.exit_code)


def _coerce(key: str, value: Any, kind: str) -> Any:
    """lmms-eval hands model_args over as bool/int/float/str (``handle_arg_string``); give each the flag's type."""

    def bad(what: str) -> OptionError:
        return OptionError(f"model_args {key}={value!r} is not {what}", hint=f"e.g. {key}={EXAMPLES[kind]}")

    if kind in ("bool", "bool|auto"):
        if kind == "bool|auto" and isinstance(value, str) and value.strip().lower() in ("auto", "none", "null"):
            return None
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise bad("true or false" + (" or auto" if kind == "bool|auto" else ""))
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value.strip().isdigit():  # the harness's --batch_size arrives as text
            return int(value)
        raise bad("an integer")
    if kind == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad("a number")
    return str(value)


EXAMPLES = {"bool": "true", "bool|auto": "false", "int": "8", "float": "0.1", "str": "..."}


@dataclass(frozen=True)
class Settings:
    """What ``model_args`` resolve to: the validated profile plus the harness-only knobs."""

    profile: Profile
    batch_size: int
    pretrained: str | None  # as given (lmms-eval names its results folder after it)
    decode_workers: int  # processes decoding the next videos while the model works (0: inline)
    cache_dir: str | None = None  # the feature cache's folder (cache.default_root with the config read once)


def parse_model_args(args: dict[str, Any]) -> Settings:
    """model_args (lmms-eval's parsed ``key=value`` pairs) -> the validated profile, or ``OptionError`` /
    ``ProfileError`` with the CLI's message. Unknown keys are errors, not ignored."""
    from scissor_cli.cache import default_root
    from scissor_cli.config import load_config
    from scissor_cli.settings import Overrides, resolve, spelled

    unknown = sorted(k for k in args if k not in MODEL_ARGS and k != "max_batch_size")
    if unknown:
        raise OptionError(
            f"unknown model_args {', '.join(unknown)} for --model {MODEL_NAME}",
            hint=f"accepted: {', '.join(MODEL_ARGS)}",
        )
    values = {k: _coerce(k, v, MODEL_ARGS[k][1]) for k, v in args.items() if k in MODEL_ARGS and v is not None}
    if "frames" in values and "max_frames_num" in values and values["frames"] != values["max_frames_num"]:
        raise OptionError(
            f"max_frames_num={values['max_frames_num']} and frames={values['frames']} disagree",
            hint="give one of them (they are the same setting)",
        )
    batch_size = values.get("batch_size", 1)
    if batch_size < 1:
        raise OptionError(f"batch_size = {batch_size} is out of range", hint="batch_size must be an integer >= 1")
    from scissor_cli.prefetch import check_decode_workers, default_decode_workers

    decode_workers = values.get("decode_workers", default_decode_workers())
    overrides = {MODEL_ARGS[key][0]: value for key, value in values.items() if MODEL_ARGS[key][0] is not None}
    config = load_config()
    try:
        check_decode_workers(decode_workers)
        profile = resolve(Overrides(**overrides), config)
    except OptionError as e:
        raise spelled(e, "lmms") from e
    return Settings(profile=profile, batch_size=batch_size, pretrained=values.get("pretrained"),
                    decode_workers=decode_workers, cache_dir=str(default_root(config)))  # fmt: skip


def generation_options(base: GenerationOptions, gen_kwargs: dict[str, Any]) -> GenerationOptions:
    """A task's generation_kwargs over the profile's: lmms-eval/HF meaning, so sampling needs ``do_sample``
    (``temperature`` alone is ignored, as in ``generate``). A value out of range is the CLI's ``OptionError``."""
    changes: dict[str, Any] = {}
    if gen_kwargs.get("max_new_tokens") is not None:
        changes["max_new_tokens"] = gen_kwargs["max_new_tokens"]
    sample = bool(gen_kwargs.get("do_sample", False))
    temperature = gen_kwargs.get("temperature")
    if not sample:
        changes["temperature"] = 0.0
    elif temperature is not None:
        changes["temperature"] = float(temperature)
    elif base.temperature == 0:
        changes["temperature"] = 1.0  # do_sample without a temperature: HF's default
    if sample and gen_kwargs.get("top_p") is not None:
        changes["top_p"] = float(gen_kwargs["top_p"])
    gen = replace(base, **changes)
    validate(Profile(generation=gen))
    return gen


def stop_at(text: str, until: Sequence[str]) -> str:
    """The text before the first stop string (lmms-eval's ``until``), as a model that stopped there would give."""
    cut = len(text)
    for stop in until:
        if stop:
            i = text.find(stop)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]


def _until(gen_kwargs: dict[str, Any]) -> list[str]:
    until = gen_kwargs.get("until")
    if until is None:
        return []
    return [until] if isinstance(until, str) else [str(u) for u in until]


def video_of(visuals: Any, task: str, doc_id: Any) -> str:
    """The one video path of a doc, or a ``VideoError`` naming the task: scissor answers about one video."""
    items = [visuals] if isinstance(visuals, (str, os.PathLike)) else list(visuals or [])
    if not items:
        raise VideoError(
            f"task {task} (doc {doc_id}) has no video: scissor answers questions about videos",
            hint=f"run a video task ({ALTERNATIVE_TASKS}, ...); text-only tasks need another --model",
        )
    if not all(isinstance(v, (str, os.PathLike)) for v in items):
        kinds = sorted({type(v).__name__ for v in items})
        raise VideoError(
            f"task {task} (doc {doc_id}) gives {', '.join(kinds)} objects, not a video file",
            hint=f"scissor runs video tasks whose doc_to_visual returns file paths ({ALTERNATIVE_TASKS}, ...); "
            "use lmms-eval's llava_onevision model for image tasks",
        )
    if len(items) > 1:
        raise VideoError(
            f"task {task} (doc {doc_id}) gives {len(items)} videos for one question; scissor takes one",
            hint=f"run a one-video task ({ALTERNATIVE_TASKS}, ...)",
        )
    return os.fspath(items[0])


def _argv_option(argv: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def lmms_eval_output_path(argv: Sequence[str]) -> str | None:
    """lmms-eval's ``--output_path`` (from its command line, or the ``--config`` YAML it reads it from): the model
    is not told it, and the stats belong beside its results."""
    path = _argv_option(argv, "--output_path")
    config = _argv_option(argv, "--config")
    if path is None and config is not None and os.path.isfile(config):
        import yaml

        with open(config, encoding="utf-8") as f:
            data = yaml.safe_load(f)
        first = data[0] if isinstance(data, list) and data else data
        if isinstance(first, dict) and first.get("output_path"):
            path = str(first["output_path"])
    return path


def stats_path(output_path: str, pretrained: str | None, rank: int, argv: Sequence[str]) -> Path:
    """``<output_path>/<model name as lmms-eval sanitizes it>/<date>_scissor_stats_rank<R>.jsonl``."""
    from lmms_eval.loggers.evaluation_tracker import GeneralConfigTracker
    from lmms_eval.utils import get_datetime_str, sanitize_model_name

    name = GeneralConfigTracker._get_model_name(f"pretrained={pretrained}") if pretrained else ""
    timezone = _argv_option(argv, "--timezone") or "Asia/Singapore"  # lmms-eval's default, for its file names
    stamp = get_datetime_str(timezone=timezone)
    return Path(output_path) / sanitize_model_name(name) / f"{stamp}_scissor_stats_rank{rank}.jsonl"


@dataclass
class _Request:
    index: int  # position in the list lmms-eval passed
    task: str
    doc_id: Any
    video: str
    context: str
    gen: GenerationOptions
    until: list[str]


class Scissor(lmms):
    """LLaVA-OneVision with SCC token compression, as an lmms-eval "simple" model."""

    is_simple = True

    def __init__(self, **model_args: Any) -> None:
        super().__init__()
        try:
            self._setup(model_args)
        except ScissorError as e:
            _fail(e)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> Scissor:
        """model_args win over the harness's --batch_size/--device (the CLI always passes a batch size)."""
        from lmms_eval.utils import simple_parse_args_string

        try:
            args = simple_parse_args_string(arg_string)
        except ValueError as e:  # a pair without "=" ("tau0.5")
            _fail(OptionError(f"model_args {arg_string!r} is not key=value pairs: {e}", hint="e.g. retention=0.1"))
        harness = {k: v for k, v in (additional_config or {}).items() if v is not None and k in HARNESS_ARGS}
        return cls(**{**harness, **args})

    def _setup(self, model_args: dict[str, Any]) -> None:
        from scissor_cli.batch import dist_env, shard_device

        settings = parse_model_args(model_args)
        rank, world_size = dist_env()
        profile = shard_device(settings.profile)  # one GPU per process under accelerate launch / torchrun
        if world_size > 1 and settings.profile.model.device.startswith("cuda:"):
            raise OptionError(
                f"device={settings.profile.model.device} puts all {world_size} processes on one GPU",
                hint="use device=cuda (each process takes cuda:<local rank>)",
            )
        self._rank, self._world_size = rank, world_size
        self.batch_size_per_gpu = settings.batch_size
        self.decode_workers = settings.decode_workers
        self.cache_dir = settings.cache_dir
        argv = list(sys.argv)
        output_path = lmms_eval_output_path(argv)
        self.stats_file = stats_path(output_path, settings.pretrained, rank, argv) if output_path else None
        self._stats_out = None
        if self.stats_file is None and rank == 0:
            eval_logger.warning("scissor: no --output_path, so per-sample token statistics are not written")

        from scissor_cli.model import load_model
        from scissor_cli.pipeline import resolve_profile

        self.vlm = load_model(profile.model)
        self.profile = resolve_profile(self.vlm, profile)  # 'auto' tau/epsilon -> the values used, as recorded
        if rank == 0:
            c = self.profile.compression
            what = f"tau {c.tau}, budget {c.budget}" if c.enabled else "compression off"
            eval_logger.info(f"scissor: {self.vlm.name} on {self.vlm.device}, {what}, stats -> {self.stats_file}")

    # ---------------------------------------------------------------- what lmms-eval reads
    @property
    def device(self) -> Any:
        return self.vlm.device

    @property
    def batch_size(self) -> int:
        return self.batch_size_per_gpu

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def world_size(self) -> int:
        return self._world_size

    # ---------------------------------------------------------------- requests
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        task = requests[0].task_name if requests else "?"
        raise NotImplementedError(
            f"--model {MODEL_NAME} generates answers (generate_until); task {task} asks for loglikelihood "
            f"(output_type multiple_choice). Run the task's generate_until version instead, e.g. egoschema rather "
            f"than egoschema_mcppl ({ALTERNATIVE_TASKS} all generate)."
        )

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        task = requests[0].task_name if requests else "?"
        raise NotImplementedError(
            f"--model {MODEL_NAME} answers one question per video turn; task {task} is multi-round. "
            f"Run a single-turn video task ({ALTERNATIVE_TASKS})."
        )

    def generate_until(self, requests: list[Instance]) -> list[str]:
        from scissor_cli import render

        try:
            with render.library_warnings():  # e.g. a bad feature-cache entry: one "warning:" line, as in the CLI
                parsed = [self._parse(i, r) for i, r in enumerate(requests)]  # every doc checked before any runs
                return self._run(parsed, len(requests))
        except ScissorError as e:
            _fail(e)

    def _parse(self, index: int, request: Instance) -> _Request:
        context, gen_kwargs, doc_to_visual, doc_id, task, split = request.args
        gen_kwargs = dict(gen_kwargs or {})
        video = video_of(doc_to_visual(self.task_dict[task][split][doc_id]), task, doc_id)
        try:
            gen = generation_options(self.profile.generation, gen_kwargs)
        except OptionError as e:
            raise OptionError(f"task {task} generation_kwargs: {e.message}", hint=e.hint) from e
        context = str(context)
        self.vlm.check_question(context, reserve=gen.max_new_tokens, what=f"task {task} doc {doc_id}'s context")
        return _Request(index, task, doc_id, video, context, gen, _until(gen_kwargs))

    def _run(self, parsed: list[_Request], n: int) -> list[str]:
        from tqdm import tqdm

        from scissor_cli.cache import FeatureCache
        from scissor_cli.prefetch import decoding_ahead

        results: list[str | None] = [None] * n
        by_video: dict[str, list[_Request]] = {}
        for r in parsed:
            by_video.setdefault(r.video, []).append(r)
        seen: dict[str, list[float]] = {}  # task -> retention per sample, for the summary lines
        bar = tqdm(total=n, disable=self.rank != 0, desc="scissor")
        cache = FeatureCache(self.cache_dir) if self.profile.model.cache else None
        try:
            # the next videos decode in worker processes while the model answers this one (batch's decode-ahead);
            # also on an error or Ctrl-C, no worker or ffmpeg child outlives the block
            with decoding_ahead(list(by_video), self.profile, self.decode_workers, self.vlm, cache) as ahead:
                for video, group in by_video.items():
                    for r, a, n_batch, shared in self._answer_video(video, group, ahead, cache):
                        text = stop_at(a.answer, r.until)
                        results[r.index] = text
                        self._write(_stats_record(r, a, text, n_batch, shared=shared, rank=self.rank))
                        seen.setdefault(r.task, []).append(a.retention)
                        bar.update(1)
        finally:
            bar.close()  # ends its line, so an error starts on a fresh one
        for task, values in seen.items():
            self._write({"task": task, "summary": True, "n_samples": len(values), "mean_retention": _mean(values)})
        return [r if r is not None else "" for r in results]

    def _answer_video(
        self, video: str, group: list[_Request], ahead: Any = None, cache: Any = None
    ) -> Iterator[tuple[_Request, Answer, int, bool]]:
        """Every question about one video from one encoding, ``batch_size`` questions per ``generate`` call.
        Yields (request, answer, rows in its generate call, whether the encoding was made for an earlier one).
        ``ahead``: the decode-ahead ``Prefetcher`` holding this video's frames (None: decode here)."""
        from scissor_cli.pipeline import VideoRun

        # A task that samples without a seed: the run's profile carries its generation settings, so the one seed
        # rule (resolve_profile) draws a seed for this video, used where seed= would be (SCC's sampled regime and
        # every sampled row of the video), and the recorded seed reproduces it.
        sampled = next((r.gen for r in group if r.gen.temperature > 0 and r.gen.seed is None), None)
        base = self.profile if sampled is None else replace(self.profile, generation=sampled)
        try:
            decoded = ahead.take(video) if ahead is not None else None  # raises this video's decode error
            run = VideoRun.open(self.vlm, video, base, cache=cache, decoded=decoded)
            if self.vlm.on_step is not None:
                self.vlm.on_step()  # SCC takes the threads the decoders leave now
            run.compressed()
        except ScissorError as e:  # name the docs: lmms-eval's task data holds the bad video
            docs = ", ".join(f"doc {r.doc_id}" for r in group[:3]) + (", ..." if len(group) > 3 else "")
            raise type(e)(f"task {group[0].task} ({docs}): {e.message}", hint=e.hint) from e
        first = True
        for chunk in _chunks(group, self.batch_size_per_gpu):
            answers = run.answer([r.context for r in chunk], replace(run.profile, generation=chunk[0].gen))
            for r, a in zip(chunk, answers, strict=True):
                yield r, a, len(chunk), not first
                first = False

    def _write(self, record: dict[str, Any]) -> None:
        if self.stats_file is None:
            return
        if self._stats_out is None:
            self.stats_file.parent.mkdir(parents=True, exist_ok=True)
            self._stats_out = self.stats_file.open("a", encoding="utf-8")
        self._stats_out.write(json.dumps(record) + "\n")
        self._stats_out.flush()  # a crash keeps every finished sample


def _chunks(items: list[_Request], size: int) -> list[list[_Request]]:
    """Batches of at most ``size`` requests sharing generation settings (one generate call each)."""
    out: list[list[_Request]] = []
    for r in items:
        if out and len(out[-1]) < size and out[-1][0].gen == r.gen:
            out[-1].append(r)
        else:
            out.append([r])
    return out


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _stats_record(r: _Request, a: Answer, text: str, n_batch: int, shared: bool, rank: int) -> dict[str, Any]:
    """One sample: the Answer's statistics keyed by task and doc_id. Timings are split so they add up: the
    video's decode/vision/compression on its first sample (``encoding_shared`` false), generate per batch row."""
    t = a.timings_s
    timings = {
        "decode": 0.0 if shared else t["decode"],
        "vision": 0.0 if shared else t["vision"],
        "compression": 0.0 if shared else t["compression"],
        "prefill": round(t["prefill"] / n_batch, 4),
        "generation": round(t["generation"] / n_batch, 4),
    }
    return {
        "task": r.task,
        "doc_id": r.doc_id,
        "video": r.video,
        "answer": text,
        "tokens": a.tokens,
        "retention": a.retention,
        "tau": a.tau,
        "tau_temporal": a.tau_temporal,
        "epsilon": a.epsilon,
        "frames": a.frames,
        "timings_s": timings,
        "encoding_shared": shared,
        "tflops": a.tflops,
        "prefill_tokens": a.prefill_tokens,  # a video prefix shared with earlier rows of its batch counts once
        "engine": a.engine,
        "seed": a.profile.get("generation", {}).get("seed"),  # with sampling: passed back as seed=, the same answer
        "cache_hit": a.cache_hit,
        "note": a.note,
        "rank": rank,
    }

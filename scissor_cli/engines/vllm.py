"""The ``vllm`` engine: vLLM's ``LLM`` with ``enable_prompt_embeds`` runs the language model; scissor hands it each
prompt as rows of embeddings (text, SCC's kept tokens, text), so SCC's data-dependent token count needs nothing
from vLLM's multimodal processors.

One engine per process (``start`` reuses it), closed at exit; ``VLLMEngine.generate`` drives vLLM's engine step
by step (``LLMEngine.add_request``/``step``), so the first request streams and ``should_stop`` aborts rows, as
with the hf engine. Sampling: greedy, or ``SamplingParams(seed=...)`` per request (vLLM draws differently from
transformers: the same seed gives another sample than ``--engine hf``, reproducibly). vllm is imported inside
functions only; ``register`` is the ``vllm.general_plugins`` entry point every vLLM process runs.

Starting: vLLM fails in its own processes, so while it starts their stderr is held (``_ChildStderr``) and a
failed start is one line quoting the cause they reported (``start_error``). Under torchrun/accelerate each rank's
engine starts on the rank's own GPUs and without the launcher's variables (``engine_gpus``, ``engine_env``).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scissor_cli.engines import GenerationOutput, Prompts
from scissor_cli.engines.weights import ARCHITECTURE, language_model_folder
from scissor_cli.errors import ModelError, OptionError, ScissorError, debug_enabled

if TYPE_CHECKING:
    from scissor_cli.options import GenerationOptions, ModelOptions

INSTALL_HINT = (
    "pip install 'scissor-cli[vllm]' on a CUDA machine; on a CPU, vLLM's CPU build (make test-vllm builds "
    ".venv-vllm with it); or use --engine hf"
)
_running: dict[tuple, VLLMEngine] = {}  # one engine per process, by what it was started with
_request_ids = itertools.count()


def register() -> None:
    """Tell vLLM's model registry about ``ScissorQwen2ForCausalLM`` (lazily: vLLM imports the class only in the
    processes that build the model)."""
    from vllm import ModelRegistry

    if ARCHITECTURE not in ModelRegistry.get_supported_archs():
        ModelRegistry.register_model(ARCHITECTURE, "scissor_cli.engines.vllm_model:ScissorQwen2ForCausalLM")


def check_installed() -> None:
    """ModelError (exit 5) when vLLM cannot be imported; cheap enough to call before anything is loaded.

    vLLM logs to stdout at INFO by default, which would interleave with ``--json`` lines: its log goes to stderr
    at ERROR unless the user set these (its processes inherit them). At WARNING it prints a traceback of its chat
    template warm-up, which scissor does not use (it hands vLLM embeddings, no tokenizer)."""
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    try:
        import vllm  # noqa: F401
    except Exception as e:  # noqa: BLE001 - ImportError, or a broken install failing inside vllm's own imports
        raise ModelError(f"--engine vllm needs vLLM, which cannot be imported: {type(e).__name__}: {e}",
                         hint=INSTALL_HINT) from e  # fmt: skip


def start(model_dir: Path, text_config: dict[str, Any], dtype: str, opts: ModelOptions, name: str) -> VLLMEngine:
    """vLLM serving ``model_dir``'s language model (``weights.language_model_folder``), or the engine this process
    already started with the same settings. Raises ModelError (exit 5) when it cannot start: not installed, out of
    memory, a model vLLM cannot run."""
    key = (str(model_dir.resolve()), dtype, opts.tensor_parallel_size, opts.gpu_memory_utilization, opts.max_model_len,
           opts.device)  # fmt: skip
    if key in _running:
        return _running[key]
    check_installed()
    _check_language_model(text_config, name)
    log = _ChildStderr()  # from here: vLLM's import-time notes too (its CPU build's about Triton)
    folder = None
    try:
        from vllm import LLM

        _check_head_size(text_config, name)
        gpus = engine_gpus(opts.device, opts.tensor_parallel_size)
        for engine in list(_running.values()):  # one engine per process: another model replaces the last one
            engine.close()
        register()
        folder = language_model_folder(model_dir, text_config, dtype)
        kwargs: dict[str, Any] = {
            "model": str(folder),
            "dtype": dtype,
            "enable_prompt_embeds": True,
            "skip_tokenizer_init": True,  # scissor tokenizes and decodes; vLLM sees embeddings and token ids
            "generation_config": "vllm",  # sampling comes from scissor's options, never the checkpoint's defaults
            "tensor_parallel_size": opts.tensor_parallel_size,
            "seed": 0,
        }
        if opts.gpu_memory_utilization is not None:
            kwargs["gpu_memory_utilization"] = opts.gpu_memory_utilization
        if opts.max_model_len is not None:
            kwargs["max_model_len"] = opts.max_model_len
        with engine_env(gpus):
            llm = LLM(**kwargs)
    except ScissorError:  # refused before vLLM started: the refusal is the one line
        log.failed(wait_s=0)
        raise
    except Exception as e:  # noqa: BLE001 - vLLM raises many kinds (ValueError, RuntimeError, OOM, its own)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        raise start_error(name, e, log.failed()) from e
    except BaseException:  # Ctrl-C while vLLM starts: its log is the user's to see
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        log.started()
        raise
    log.started()
    engine = VLLMEngine(llm, folder, key, log)
    _running[key] = engine
    return engine


# ------------------------------------------------------------------ what vLLM's processes start with
# What torchrun / accelerate launch set for scissor's own ranks. vLLM's processes inherit the environment; vLLM
# reads LOCAL_RANK (envs.LOCAL_RANK: env:// setups) and RANK (external launcher, data parallel), and with
# torchrun's TORCHELASTIC_USE_AGENT_STORE a tcp:// rendezvous of vLLM's workers (older vLLMs; ROCm with AITER in
# 0.32, which otherwise uses a file store) is a client of a store nobody serves, waiting until its timeout.
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                 "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT")  # fmt: skip
LAUNCHER_PREFIXES = ("TORCHELASTIC_",)


def engine_gpus(device: str, tp: int, visible: Sequence[str] | None = None) -> list[str] | None:
    """The CUDA_VISIBLE_DEVICES entries vLLM's engine takes for scissor's ``device`` ``cuda:i``: the ``tp`` GPUs
    from ``i`` on (``visible``: this process's CUDA_VISIBLE_DEVICES entries, default read here), so the vision
    tower shares the first of them (under a launcher ``batch.ranks.shard_device`` gives rank r ``cuda:<r*tp>``).
    None for any other device: vLLM takes the first ``tp`` visible GPUs, and scissor's ``cuda``/``auto`` is the
    first. OptionError (exit 2) when fewer than ``tp`` GPUs are left from ``i`` on."""
    match = re.fullmatch(r"cuda:(\d+)", device)
    if match is None:
        return None
    if visible is None:
        visible = _visible_gpus()
    first = int(match.group(1))
    if first + tp > len(visible):
        raise OptionError(
            f"--device {device} with --tensor-parallel-size {tp} needs GPUs {first}..{first + tp - 1}; "
            f"{len(visible)} are visible",
            hint="pick a lower --device index or a lower --tensor-parallel-size",
        )
    return list(visible[first : first + tp])


def _visible_gpus() -> list[str]:
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


@contextlib.contextmanager
def engine_env(gpus: Sequence[str] | None) -> Iterator[None]:
    """``os.environ`` as vLLM's processes must inherit it while they start: no launcher variables
    (``LAUNCHER_VARS``: under torchrun each rank's engine is its own world of ``--tensor-parallel-size``
    processes), CUDA_VISIBLE_DEVICES = ``gpus`` (``engine_gpus``), and processes spawned, not forked, when this
    process has a torch.distributed group (batch's barriers): a forked engine core would inherit it, and vLLM
    would take scissor's ranks for its own. Restored afterwards (scissor's own group keeps its ranks)."""
    changed: dict[str, str | None] = {}

    def put(key: str, value: str | None) -> None:
        changed.setdefault(key, os.environ.get(key))
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value

    try:
        for key in list(os.environ):
            if key in LAUNCHER_VARS or key.startswith(LAUNCHER_PREFIXES):
                put(key, None)
        if gpus is not None:
            put("CUDA_VISIBLE_DEVICES", ",".join(gpus))
        dist = sys.modules.get("torch.distributed")
        if dist is not None and dist.is_available() and dist.is_initialized():
            put("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        yield
    finally:
        for key, value in changed.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class _ChildStderr:
    """vLLM's processes write their log and, when they fail, Python tracebacks to the stderr they inherit. While
    vLLM starts, this process's stderr (fd 2, which they inherit) is a pipe read here and held: a failed start
    becomes one line (``start_error`` reads the cause from it), a good one passes what was held on, and from then
    on everything vLLM's processes write goes to the real stderr as it comes."""

    def __init__(self) -> None:
        self._held = bytearray()
        self._passing = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._pump, name="scissor-vllm-stderr", daemon=True)
        with contextlib.suppress(ValueError, OSError, AttributeError):  # closed, or None
            sys.stderr.flush()
        try:
            self._stderr = os.dup(2)
        except OSError:  # no stderr (fd 2 closed): nothing to hold, vLLM's processes write nowhere either
            self._stderr = -1
            return
        self._read, write = os.pipe()
        os.dup2(write, 2)
        os.close(write)
        self._thread.start()

    def _pump(self) -> None:
        try:
            while chunk := os.read(self._read, 65536):
                with self._lock:
                    if self._passing:
                        with contextlib.suppress(OSError):
                            os.write(self._stderr, chunk)
                    else:
                        self._held += chunk
        finally:
            os.close(self._read)

    def _restore(self) -> None:
        with contextlib.suppress(ValueError, OSError, AttributeError):  # closed, or None
            sys.stderr.flush()
        if self._stderr >= 0:
            os.dup2(self._stderr, 2)

    def started(self) -> None:
        """vLLM is up (or the start was interrupted): stderr is this process's again; what was held, and all that
        vLLM's processes write from now on, goes there."""
        self._restore()
        with self._lock:
            with contextlib.suppress(OSError):
                os.write(self._stderr, bytes(self._held))
            self._held.clear()
            self._passing = True

    def failed(self, wait_s: float = 5.0) -> str:
        """vLLM did not start: stderr is this process's again; returns what vLLM's processes wrote, once it names
        the cause (or after ``wait_s``: they may still be writing). With SCISSOR_DEBUG it is passed on too."""
        self._restore()
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and _cause(self.text()) is None and self._thread.is_alive():
            time.sleep(0.1)
        text = self.text()
        if debug_enabled():
            self.started()
        return text

    def text(self) -> str:
        with self._lock:
            return self._held.decode(errors="replace")

    def close(self) -> None:
        """After vLLM's processes ended: a moment for their last lines (multiprocessing's resource tracker keeps
        the pipe open until this process exits, so this cannot wait for its end)."""
        if self._thread.is_alive():
            self._thread.join(timeout=0.3)


# the root cause in vLLM's log or traceback: "ValueError: ...", "torch.OutOfMemoryError: ..."
_CAUSE = re.compile(r"(?:^|\s)((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception)): (\S.*)$", re.MULTILINE)
_WRAPPERS = ("Engine core initialization failed", "EngineCore failed to start")
# where vLLM's message turns to advice in its own API's names (the hint gives scissor's)
_ADVICE = re.compile(r"\s(?:Try |See https?://|Decrease |Please )")


def _cause(text: str) -> tuple[str, str] | None:
    """(exception name, message) of the last exception vLLM's processes reported, wrappers skipped."""
    found = [m for m in _CAUSE.finditer(text) if not m.group(2).startswith(_WRAPPERS)]
    return (found[-1].group(1), found[-1].group(2).strip()) if found else None


def start_error(name: str, error: BaseException, log: str) -> ModelError:
    """vLLM's failed start as one line (exit 5): the cause its processes reported (``log``: what they wrote),
    else the exception this process got; the hint names the scissor knob that changes it."""
    cause = _cause(log) or (type(error).__name__, " ".join(str(error).split()))
    kind, detail = cause
    advice = _ADVICE.search(detail)
    detail = detail[: advice.start()] if advice else detail
    text = f"{kind}: {detail}".strip()
    lower = text.lower()
    hint = "its log (SCISSOR_DEBUG=1 shows it) says more; --engine hf runs every model scissor loads"
    if "max seq len" in lower or "kv cache is needed" in lower:
        fits = re.search(r"estimated maximum model length is (\d+)", text)
        hint = ("lower --max-model-len" + (f" (about {int(fits.group(1)):,} fits)" if fits else "") + ", or give "
                "vLLM more memory for its KV cache: --gpu-memory-utilization on a GPU, VLLM_CPU_KVCACHE_SPACE "
                "(GiB) on a CPU")  # fmt: skip
    elif "less than desired gpu memory utilization" in lower:
        hint = "lower --gpu-memory-utilization (vLLM's share of each GPU), or free the memory other processes hold"
    elif "no available memory for the cache blocks" in lower:
        hint = ("raise --gpu-memory-utilization (the weights left no room for the KV cache), or split the model "
                "over more GPUs with --tensor-parallel-size")  # fmt: skip
    elif "requested memory for kv" in lower:
        hint = "lower VLLM_CPU_KVCACHE_SPACE (the GiB of KV cache vLLM's CPU build reserves), or free memory"
    elif "out of memory" in lower or "outofmemoryerror" in lower:
        hint = ("lower --gpu-memory-utilization or --max-model-len, or split the model over more GPUs with "
                "--tensor-parallel-size")  # fmt: skip
    else:
        return ModelError(f"vLLM could not start {name}'s language model: {text[:400]}", hint=hint)
    return ModelError(f"vLLM could not start {name}'s language model: out of memory: {text[:400]}", hint=hint)


def _check_language_model(text_config: dict[str, Any], name: str) -> None:
    """scissor hands vLLM a LLaVA-OneVision's language model as a Qwen2 (``engines.vllm_model``): another kind
    would load into the wrong layers. ModelError (exit 5) before vLLM starts."""
    kind = text_config.get("model_type")
    if kind != "qwen2":
        raise ModelError(
            f"--engine vllm cannot run {name}: its language model is {kind!r}, and scissor hands vLLM Qwen2 "
            "language models only (LLaVA-OneVision's)",
            hint="use --engine hf for this model",
        )


def _check_head_size(text_config: dict[str, Any], name: str) -> None:
    """vLLM's CPU attention runs only some head sizes and fails at the first forward pass, not at start: refuse a
    model it cannot run before starting it (ModelError, exit 5)."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    try:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        sizes = CPUAttentionBackend.get_supported_head_sizes()
    except (ImportError, AttributeError):  # another vLLM layout: its own error will say it
        return
    head = text_config.get("head_dim") or text_config["hidden_size"] // text_config["num_attention_heads"]
    if head not in sizes:
        raise ModelError(
            f"vLLM's CPU attention cannot run {name}: its LLM's head size is {head} (supported: "
            f"{', '.join(map(str, sizes))})",
            hint="use --engine hf for this model",
        )


def _shutdown_all() -> None:
    for engine in list(_running.values()):
        engine.close()


atexit.register(_shutdown_all)


class VLLMEngine:
    """The LLM step on a running vLLM engine. ``bind`` gives it the tokenizer side (eos ids, decoding)."""

    name = "vllm"

    def __init__(self, llm: Any, folder: Path, key: tuple, log: _ChildStderr | None = None):
        self.llm = llm
        self.folder = folder
        self.key = key
        self.log = log  # vLLM's processes' stderr, passed on to this process's
        self.max_model_len: int = llm.llm_engine.model_config.max_model_len
        self.vlm: Any = None

    def bind(self, vlm: Any) -> VLLMEngine:
        """Answer for ``vlm`` (model.VisionLanguageModel): its tokenizer decodes, its eos ids stop, and its
        context becomes what vLLM was started with (a chat and ``check_question`` refuse against it)."""
        self.vlm = vlm
        if vlm.max_positions is None or self.max_model_len < vlm.max_positions:
            vlm.max_positions = self.max_model_len
        return self

    def close(self) -> None:
        """Shut vLLM's engine (its processes) down and remove the derived folder; idempotent."""
        _running.pop(self.key, None)
        llm, self.llm = self.llm, None
        if llm is not None:
            try:
                llm.llm_engine.engine_core.shutdown()
            finally:
                shutil.rmtree(self.folder, ignore_errors=True)
                if self.log is not None:
                    self.log.close()

    def _step(self, engine: Any) -> list[Any]:
        """``engine.step()``; a vLLM engine that died (its processes crashed) is ModelError (exit 5), and this engine
        is closed: every later call says so at once."""
        try:
            return engine.step()
        except Exception as e:
            if type(e).__name__ != "EngineDeadError":
                raise
            self.close()
            hint = "its log above says why; --engine hf runs every model scissor loads"
            raise ModelError(f"vLLM's engine stopped while answering: {e}", hint=hint) from e

    def _params(self, gen: GenerationOptions) -> Any:
        from vllm import SamplingParams

        vlm = self.vlm
        sample = gen.temperature > 0
        return SamplingParams(
            n=1,
            max_tokens=gen.max_new_tokens,
            temperature=gen.temperature if sample else 0.0,
            top_p=gen.top_p if sample else 1.0,
            seed=gen.with_drawn_seed().seed if sample else None,
            stop_token_ids=vlm._eos_ids(),
            # transformers' suppress_tokens; vLLM clamps a bias to [-100, 100], far below a logit's range
            logit_bias=dict.fromkeys(vlm.suppress_ids, -100.0) or None,
            detokenize=False,
        )

    def generate(
        self,
        prompts: Prompts,
        gen: GenerationOptions,
        *,
        on_text: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool | Sequence[bool]] | None = None,
        cache: Any = None,  # unused: vLLM's prefix cache keeps what a chat's earlier turns computed
        share_prefix: bool = True,  # unused: vLLM's prefix cache shares a video's prefix by itself
    ) -> GenerationOutput:
        if self.llm is None:
            raise ModelError("the vLLM engine was shut down", hint="load the model again")
        if prompts.inputs is not None:  # load_model refuses such a family first; this guards other callers
            raise ModelError("--engine vllm cannot give this model's LLM its position ids", hint="use --engine hf")
        lengths = prompts.lengths
        for n in lengths:  # vLLM needs room for at least one new token
            if n >= self.max_model_len:
                raise OptionError(
                    f"the prompt is {n:,} tokens (text and video); vLLM's context (--max-model-len) is "
                    f"{self.max_model_len:,}",
                    hint="raise --max-model-len, or send fewer visual tokens (--frames, --retention, --tokens)",
                )
        engine = self.llm.llm_engine
        params = self._params(gen)
        tok, eos = self.vlm.tokenizer, set(self.vlm._eos_ids())
        ids: list[str] = []
        live: set[str] = set()
        latest: dict[str, list[int]] = {}
        cached: dict[str, int] = {}
        t_first: float | None = None
        n_sent, first_done = 0, False
        try:
            for row in prompts.rows:
                embeds = row.detach().to("cpu")  # [L, D]: vLLM's engine core takes it from here
                ids.append(f"scissor-{next(_request_ids)}")  # outputs and aborts name requests by this id
                engine.add_request(ids[-1], {"prompt_embeds": embeds}, params)
                live.add(ids[-1])
            while live:
                for out in self._step(engine):
                    if out.request_id not in live:
                        continue
                    latest[out.request_id] = list(out.outputs[0].token_ids)
                    cached[out.request_id] = getattr(out, "num_cached_tokens", None) or 0
                    if t_first is None and latest[out.request_id]:
                        t_first = time.perf_counter()
                    if out.finished:
                        live.discard(out.request_id)
                if on_text is not None and not first_done:
                    row0 = latest.get(ids[0], [])
                    cut = next((i for i, t in enumerate(row0) if t in eos), None)
                    first_done = cut is not None or ids[0] not in live
                    text = tok.decode(row0[:cut], skip_special_tokens=True).lstrip()
                    if (first_done or not text.endswith("\ufffd")) and len(text) > n_sent:
                        on_text(text[n_sent:])  # half of a multi-byte character waits for the rest
                        n_sent = len(text)
                if should_stop is not None and live:
                    stop = should_stop()
                    flags = [bool(f) for f in stop] if isinstance(stop, (list, tuple)) else [bool(stop)] * len(ids)
                    flagged = [rid for rid, flag in zip(ids, flags, strict=False) if flag and rid in live]
                    if flagged:
                        engine.abort_request(flagged)
                        live.difference_update(flagged)
        finally:
            if live and self.llm is not None:  # Ctrl-C or an error mid-batch: nothing of this call stays queued
                engine.abort_request(sorted(live))
        t_end = time.perf_counter()
        t_first = t_first or t_end
        texts, n_new, token_ids = [], [], []
        for rid in ids:
            row = latest.get(rid, [])
            cut = next((i for i, t in enumerate(row) if t in eos), len(row))
            n_new.append(cut)
            token_ids.append(row[:cut])
            texts.append(tok.decode(row[:cut], skip_special_tokens=True).strip())
        return GenerationOutput(
            texts=texts,
            n_prompt_tokens=lengths,
            prefill_s=t_first - prompts.t0,
            generation_s=t_end - t_first,
            n_new_tokens=n_new,
            token_ids=token_ids,
            n_prefill_tokens=[n - cached.get(rid, 0) for n, rid in zip(lengths, ids, strict=True)],
        )

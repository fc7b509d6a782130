"""The LLM step behind one small interface: prefill and generation of a batch of prompts given as input
embeddings (the video's kept tokens already spliced in) or, for a family with M-RoPE positions, as the token ids,
positions and vision outputs its ``generate`` takes (``Prompts``); greedy or seeded sampling, stop tokens, max
new tokens, the first request streamed for chat and serve.

Two engines (docs/engines.md):

* ``hf`` (default): transformers' ``generate`` in scissor's process, the reference path (``engines.hf``), with a
  chat's KV cache between turns and a shared video prefix prefilled once.
* ``vllm``: vLLM's ``LLM`` with ``enable_prompt_embeds`` (``engines.vllm``): paged KV cache, continuous
  batching, tensor parallelism. vLLM serves only the language model; scissor keeps decoding, the vision tower, SCC
  and the embedding table, so SCC's data-dependent token count reaches the LLM unchanged.

The vision side never changes with the engine. Standard library only; torch, transformers and vllm are imported
by the engines themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from scissor_cli.errors import ModelError, OptionError

ENGINES = ("hf", "vllm")
DEFAULT_ENGINE = "hf"


@dataclass
class GenerationOutput:
    texts: list[str]  # one answer per request, special tokens removed
    n_prompt_tokens: list[int]  # per request: text + video (+ newline) tokens the LLM saw
    prefill_s: float  # time to the first generated token (the whole batch's prefill)
    generation_s: float  # the rest of generate (decoding)
    n_new_tokens: list[int] = field(default_factory=list)  # generated tokens per request, up to its eos
    token_ids: list[list[int]] = field(default_factory=list)  # the generated ids per request, up to its eos
    # per request: prompt tokens this call ran through the LLM, those served from a KV cache not counted (a shared
    # video prefix is counted once, on the first request that shares it)
    n_prefill_tokens: list[int] = field(default_factory=list)


@dataclass
class Prompts:
    """One ``generate`` call's prompts, as the model's family prepared them: what every engine receives."""

    rows: list[Any]  # per request: input embeddings [L, D] on the vision side's device and dtype ([] with inputs)
    ids: list[tuple[list[int], list[int]]]  # per request: token ids before and after the video
    videos: list[Any]  # per request: the video tensor (the same object in two requests: a shared prefix)
    n_video: list[int]  # per request: video rows in ``rows`` (image_newline included)
    t0: float  # perf_counter when the call started (prefill_s counts from here)
    # instead of ``rows``: a ``positions`` family's ``generate`` keyword arguments (left-padded input_ids, their
    # attention mask, M-RoPE position_ids, the vision outputs: families.qwen), which only the hf engine takes
    inputs: dict[str, Any] | None = None

    @property
    def lengths(self) -> list[int]:
        if self.inputs is not None:
            return self.inputs["attention_mask"].sum(-1).tolist()
        return [r.shape[0] for r in self.rows]


class Engine(Protocol):
    """What ``VisionLanguageModel.generate`` hands its embedded prompts to."""

    name: str  # "hf" or "vllm": what every answer record's ``engine`` says

    def generate(
        self,
        prompts: Prompts,
        gen: Any,  # options.GenerationOptions
        *,
        on_text: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool | Sequence[bool]] | None = None,
        cache: Any = None,  # engines.hf.PromptCache (the hf engine; vllm caches prefixes itself)
        share_prefix: bool = True,
    ) -> GenerationOutput: ...

    def close(self) -> None: ...


def resolve(name: Any) -> str:
    """``name`` as an engine name, or OptionError (the CLI's flag and the plugin's ``engine=`` both land here)."""
    if isinstance(name, str) and name.strip().lower() in ENGINES:
        return name.strip().lower()
    raise OptionError(f"--engine {name!r} is not an engine", hint=f"use one of: {', '.join(ENGINES)}")


def refuse_position_ids(engine: str, family: str, positions: bool) -> None:
    """ModelError (exit 5) when ``engine`` cannot give ``family``'s LLM the position ids it needs (the family's
    ``positions`` flag, ``families.base.Family``): vLLM's prompt embeddings get 1-D text positions, so a family with
    M-RoPE video positions (Qwen2.5-VL, Qwen3-VL) would answer from wrong positions. Called once the checkpoint's
    family is known, before anything is loaded."""
    if engine == "vllm" and positions:
        raise ModelError(
            f"--engine vllm cannot run {family}: its LLM needs explicit (M-RoPE) position ids, and vLLM gives "
            "prompt embeddings 1-D positions",
            hint="use --engine hf for this model",
        )

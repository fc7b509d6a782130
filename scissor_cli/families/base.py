"""The small interface every model family implements (docs/models.md, "Model families").

A family is what differs between vision-language models that scissor runs through transformers: which configs are
its own, the lowest transformers that runs it, how frames become visual tokens, and how kept tokens reach
``generate``. ``VisionLanguageModel`` holds one, chosen once from the checkpoint's config (``families.family_of``),
and hands it the calls that differ; everything else (the prompt template, streaming, stopping, timings) is shared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from scissor_cli.errors import ModelError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from scissor_cli.options import ModelOptions

VisionLanguageModel = Any  # scissor_cli.model's; not imported here (model imports the families)


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


@dataclass(frozen=True)
class Family:
    """One family: its name (as the README's table lists it), the config ``model_type`` values it owns, example hub
    ids, and the lowest transformers its path runs on (measured: docs/models.md, "transformers versions")."""

    name: str
    model_types: tuple[str, ...]
    hub_ids: tuple[str, ...]
    min_transformers: str
    # True: the LLM takes explicit per-token positions (Qwen's M-RoPE), so kept tokens go in as ``input_ids`` with
    # precomputed encoder outputs (the hf engine only: ``--engine vllm`` refuses the family); False: they are spliced
    # into ``inputs_embeds`` (1-D RoPE from the mask), which every engine runs
    positions: bool = False

    def check_transformers(self, name: str) -> None:
        """ModelError (exit 5) naming the version needed when the installed transformers is older."""
        import transformers

        have = transformers.__version__
        if _version_tuple(have) < _version_tuple(self.min_transformers):
            raise ModelError(
                f"model {name} is {self.name}, which needs transformers >= {self.min_transformers} (installed: {have})",
                hint=f'pip install "transformers>={self.min_transformers},<6"',
            )

    # ---- what a family implements
    def load(self, opts: ModelOptions, model_dir, raw: dict, status: Callable[[str], None]) -> tuple[Any, Any, dict]:
        """(transformers model in eval mode on its device, tokenizer, ``VisionLanguageModel``'s keyword arguments)."""
        raise NotImplementedError

    def encode(
        self,
        vlm: VisionLanguageModel,
        frames: np.ndarray | None,
        on_progress: Callable[[int, int], None] | None,
        resized: np.ndarray | None,
    ) -> torch.Tensor:
        """uint8 frames -> the video's uncompressed features (the feature cache stores them as they are)."""
        raise NotImplementedError

    def video_layout(self, vlm: VisionLanguageModel, features: torch.Tensor, indices, info) -> Any:
        """What compression and ``generate`` need to know about an encoded video besides its features (None: the
        features are [F, T, D] and kept tokens are a plain [M, D] tensor)."""
        return None

    def feature_shape(self, vlm: VisionLanguageModel, n_frames: int) -> tuple[int | None, ...]:
        """The shape a cached entry of ``n_frames`` frames has, None where it depends on the video."""
        return (n_frames, vlm.tokens_per_frame, vlm.hidden_size)

    def frames_covered(self, n_rows: int) -> int:
        """Frames that ``n_rows`` leading rows of the features stand for."""
        return n_rows

    def generate_inputs(self, vlm: VisionLanguageModel, requests, history, pad_id: int) -> tuple[dict, list[int]]:
        """Only for ``positions`` families: the keyword arguments of ``generate`` for these (kept tokens, question)
        requests, and each request's prompt length."""
        raise NotImplementedError

    def share_prefix(self, vlm: VisionLanguageModel, inputs: dict, videos: list) -> tuple[dict, Any, list[int]] | None:
        """Only for ``positions`` families: ``generate_inputs``' batch with the video prefix that several requests
        share (the same kept-token object, the same ids up to the video's end) prefilled once: (generate's
        keyword arguments, the KV cache they start from, tokens prefilled per request), or None when no two
        requests share one. LLaVA-OV's rows of embeddings are laid out by the hf engine itself."""
        return None

    def prompt_length(self, vlm: VisionLanguageModel, n_video: int, before: list[int], after: list[int]) -> int:
        return len(before) + n_video + int(vlm.newline) + len(after)

    def input_sizer(self, vlm: VisionLanguageModel) -> Any:
        """What sizes each video's frames, when the family does (``video_limits.ModelInput.sizer``: the decoder
        shrinks a huge video near twice that size and the memory estimate counts it); None: ``vlm.image_size``,
        the same for every video."""
        return None

    def tokens_per_frame(self, config) -> int | None:
        """Visual tokens per frame, when the same for every video (None: it depends on the video's size)."""
        return None

    def template_video(self, tokenizer) -> str | None:
        """What the chat template renders for a user turn's video (the prompt is cut around it), or None."""
        video_token = getattr(tokenizer, "video_token", None)
        return video_token or ("<video>" if "<video>" in tokenizer.get_vocab() else None)

    def cache_tag(self, vlm: VisionLanguageModel) -> str:
        """What a feature-cache key adds for this family's preprocessing ("" for LLaVA-OV: its keys stay as they
        were)."""
        return ""

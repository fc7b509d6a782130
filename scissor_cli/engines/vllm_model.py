"""The model class vLLM builds for ``--engine vllm``: vLLM's own Qwen2 LM, reading a LLaVA-OneVision
checkpoint's files (either layout) through a weight-name mapper that skips the vision tower and projector.

Imported only inside vLLM's processes (``engines.vllm.register`` names it lazily); imports vllm at module level.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from vllm.model_executor.models.qwen2 import Qwen2ForCausalLM
from vllm.model_executor.models.utils import AutoWeightsLoader, WeightsMapper

# Applied in order, each prefix to the name the one before left.
LAYOUTS = WeightsMapper(
    orig_to_new_prefix={
        "model.language_model.": "model.",  # llava-hf, transformers >= 4.52 names
        "language_model.model.": "model.",  # llava-hf as saved
        "language_model.lm_head.": "lm_head.",
        # vision side (scissor loads it): llava-hf, then LLaVA-NeXT (model.mm_projector, model.vision_tower)
        "model.vision_tower.": None,
        "vision_tower.": None,
        "model.multi_modal_projector.": None,
        "multi_modal_projector.": None,
        "model.mm_projector.": None,
        "model.image_newline": None,
        "image_newline": None,
    }
)


class ScissorQwen2ForCausalLM(Qwen2ForCausalLM):
    """Qwen2ForCausalLM whose ``load_weights`` takes a LLaVA-OneVision checkpoint's tensor names."""

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return AutoWeightsLoader(self).load_weights(weights, mapper=LAYOUTS)

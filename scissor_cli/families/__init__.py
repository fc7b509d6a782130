"""Model families: what differs between the vision-language models scissor runs (docs/models.md, "Model families").

``family_of(config)`` picks one from a checkpoint's config.json, once, at load time; ``VisionLanguageModel`` hands it
the calls that differ. To add a family: subclass ``base.Family`` in a module here, list it in ``FAMILIES``.
"""

from __future__ import annotations

from scissor_cli.errors import ModelError
from scissor_cli.families.base import Family
from scissor_cli.families.llava_ov import LlavaOneVision
from scissor_cli.families.qwen import Qwen3VL, Qwen25VL

LLAVA_OV = LlavaOneVision(
    name="LLaVA-OneVision",
    model_types=("llava_onevision", "llava_qwen", "llava_qwen_zip"),
    hub_ids=("llava-hf/llava-onevision-qwen2-0.5b-ov-hf", "lmms-lab/llava-onevision-qwen2-7b-ov",
             "HumanMLLM/LLaVA-Scissor-baseline-7B"),
    min_transformers="5.24",
)  # fmt: skip
QWEN2_5_VL = Qwen25VL(
    name="Qwen2.5-VL",
    model_types=("qwen2_5_vl",),
    hub_ids=("Qwen/Qwen2.5-VL-3B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct"),
    min_transformers="5.24",
    positions=True,
)
QWEN3_VL = Qwen3VL(
    name="Qwen3-VL",
    model_types=("qwen3_vl",),
    hub_ids=("Qwen/Qwen3-VL-4B-Instruct", "Qwen/Qwen3-VL-8B-Instruct"),
    min_transformers="5.24",
    positions=True,
)
FAMILIES: tuple[Family, ...] = (LLAVA_OV, QWEN2_5_VL, QWEN3_VL)


def family_of(config: dict, name: str) -> Family:
    """The family of a checkpoint's config.json (a dict). Unknown: ModelError (exit 5) naming its model_type and the
    families scissor knows."""
    model_type = config.get("model_type") or ""
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    arch = " ".join(config.get("architectures") or [])
    if "mm_vision_tower" in config and "Qwen" in arch:  # a LLaVA-NeXT checkpoint under another model_type
        return LLAVA_OV
    known = "; ".join(f"{f.name} ({', '.join(f.model_types)})" for f in FAMILIES)
    raise ModelError(
        f"model {name}: unsupported checkpoint type {model_type or '(none)'} ({arch or 'no architectures'}); "
        f"scissor knows {known}",
        hint="scissor runs LLaVA-OneVision, Qwen2.5-VL and Qwen3-VL checkpoints in Hugging Face format "
        '(README, "Models")',
    )

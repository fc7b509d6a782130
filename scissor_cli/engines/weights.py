"""Weights loaded once: with ``--engine vllm`` vLLM reads only the language model's tensors and scissor only the
vision tower, the projector and the embedding table, from the same files.

vLLM gets a derived folder: a ``config.json`` holding the checkpoint's text config under the architecture
``ScissorQwen2ForCausalLM`` (``engines.vllm_model``: vLLM's Qwen2 with a weight-name mapper that reads both
layouts and skips the vision weights) and symbolic links to the checkpoint's safetensors files. Nothing is copied
or converted. docs/engines.md says why this route and not ``--language-model-only``.

Scissor's half: the LLaVA-OneVision model built with no decoder layers and the LM head tied to the embedding
table, so transformers neither allocates nor reads the LLM's layers (reported as unexpected keys and filtered
here). Standard library only.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

ARCHITECTURE = "ScissorQwen2ForCausalLM"
# weights only the LLM uses: what the vision-only model does not have (transformers' names or the stored ones)
_LLM_ONLY = re.compile(r"(^|\.)(language_model\.)?(model\.)?layers\.\d+\.|(^|\.)lm_head\.")


def language_model_folder(model_dir: Path, text_config: dict[str, Any], dtype: str) -> Path:
    """A new temporary folder vLLM can load as a plain Qwen2 LM: config + links to ``model_dir``'s safetensors
    (and their index). The caller removes it (``shutil.rmtree``) when the engine is closed."""
    folder = Path(tempfile.mkdtemp(prefix="scissor-vllm-"))
    config = dict(text_config)
    config.update(architectures=[ARCHITECTURE], model_type="qwen2", torch_dtype=dtype, dtype=dtype)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    for path in sorted(model_dir.glob("*.safetensors")) + sorted(model_dir.glob("*.safetensors.index.json")):
        (folder / path.name).symlink_to(path.resolve())
    return folder


def vision_only(config: Any) -> int:
    """Make a LlavaOnevisionConfig build the vision half only (0 decoder layers, LM head tied to the embedding
    table); returns the LLM's real layer count, for the caller to put back once the model is built."""
    text = config.text_config
    n_layers = text.num_hidden_layers
    text.num_hidden_layers = 0
    if getattr(text, "layer_types", None) is not None:
        text.layer_types = []
    text.tie_word_embeddings = True
    config.tie_word_embeddings = True
    return n_layers


def drop_llm_keys(info: dict) -> dict:
    """transformers' loading info without the unexpected keys a vision-only model leaves unread on purpose."""
    unexpected = [k for k in info.get("unexpected_keys", []) if not _LLM_ONLY.search(k)]
    return {**info, "unexpected_keys": unexpected}

"""The tensor names that original-layout LLaVA-OneVision checkpoints store, written out by hand.

Original layout = what LLaVA-NeXT's training code saves: lmms-lab/llava-onevision-qwen2-{0.5b,7b}-ov and the
LLaVA-Scissor baselines (trained with the LLaVA-Scissor fork of LLaVA-NeXT). The list is deliberately independent of
scissor's loader (``NEXT_KEY_MAPPING``) and of transformers' module names, so that tests comparing the two cannot
agree by construction:

* Qwen2 language model at the top level of ``model.``: token embeddings, per layer two RMSNorms, q/k/v projections
  with biases, o_proj without, the gate/up/down MLP, the final norm. ``lm_head.weight`` only when the embeddings are
  untied (7B); the 0.5B ties them and does not store it.
* ``model.image_newline``: one vector of the LLM's width (``mm_patch_merge_type`` contains "unpad").
* ``model.mm_projector.0`` / ``.2``: the two Linear layers of ``mlp2x_gelu`` (index 1 is the GELU, no weights).
* SigLIP under ``model.vision_tower.vision_tower.vision_model.``: patch and position embeddings, the encoder layers
  (LLaVA-NeXT drops the tower's last layer, so so400m stores 26 of 27), ``post_layernorm``; no pooling ``head``
  (LLaVA-NeXT replaces it with an identity) and no ``position_ids`` (a non-persistent buffer).

Also the tensor shapes, for building a synthetic checkpoint from this list alone (``published_shapes``).
"""

from __future__ import annotations

VISION = "model.vision_tower.vision_tower.vision_model."


def published_keys(n_text_layers: int, n_vision_layers: int, tied: bool) -> set[str]:
    """Every tensor name an original-layout checkpoint stores (no rotary ``inv_freq`` buffers)."""
    keys = {"model.embed_tokens.weight", "model.norm.weight", "model.image_newline"}
    if not tied:
        keys.add("lm_head.weight")
    for i in range(n_text_layers):
        layer = f"model.layers.{i}."
        keys |= {layer + "input_layernorm.weight", layer + "post_attention_layernorm.weight"}
        for proj in ("q_proj", "k_proj", "v_proj"):
            keys |= {f"{layer}self_attn.{proj}.weight", f"{layer}self_attn.{proj}.bias"}
        keys.add(layer + "self_attn.o_proj.weight")
        keys |= {f"{layer}mlp.{proj}.weight" for proj in ("gate_proj", "up_proj", "down_proj")}
    for index in (0, 2):
        keys |= {f"model.mm_projector.{index}.weight", f"model.mm_projector.{index}.bias"}
    keys |= {
        VISION + "embeddings.patch_embedding.weight",
        VISION + "embeddings.patch_embedding.bias",
        VISION + "embeddings.position_embedding.weight",
        VISION + "post_layernorm.weight",
        VISION + "post_layernorm.bias",
    }
    for j in range(n_vision_layers):
        layer = f"{VISION}encoder.layers.{j}."
        for part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                     "layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2"):  # fmt: skip
            keys |= {f"{layer}{part}.weight", f"{layer}{part}.bias"}
    return keys


def published_shapes(
    *,
    vocab: int,
    hidden: int,
    intermediate: int,
    n_heads: int,
    n_kv_heads: int,
    vision_hidden: int,
    vision_intermediate: int,
    image_size: int,
    patch: int,
    n_text_layers: int,
    n_vision_layers: int,
    tied: bool,
) -> dict[str, tuple[int, ...]]:
    """``published_keys`` with each tensor's shape (PyTorch conventions: a Linear's weight is [out, in])."""
    head_dim = hidden // n_heads
    kv = n_kv_heads * head_dim
    text = {
        "input_layernorm.weight": (hidden,),
        "post_attention_layernorm.weight": (hidden,),
        "self_attn.q_proj.weight": (hidden, hidden),
        "self_attn.q_proj.bias": (hidden,),
        "self_attn.k_proj.weight": (kv, hidden),
        "self_attn.k_proj.bias": (kv,),
        "self_attn.v_proj.weight": (kv, hidden),
        "self_attn.v_proj.bias": (kv,),
        "self_attn.o_proj.weight": (hidden, hidden),
        "mlp.gate_proj.weight": (intermediate, hidden),
        "mlp.up_proj.weight": (intermediate, hidden),
        "mlp.down_proj.weight": (hidden, intermediate),
    }
    vision = {
        "layer_norm1.weight": (vision_hidden,),
        "layer_norm1.bias": (vision_hidden,),
        "layer_norm2.weight": (vision_hidden,),
        "layer_norm2.bias": (vision_hidden,),
        "mlp.fc1.weight": (vision_intermediate, vision_hidden),
        "mlp.fc1.bias": (vision_intermediate,),
        "mlp.fc2.weight": (vision_hidden, vision_intermediate),
        "mlp.fc2.bias": (vision_hidden,),
    }
    for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
        vision[f"self_attn.{proj}.weight"] = (vision_hidden, vision_hidden)
        vision[f"self_attn.{proj}.bias"] = (vision_hidden,)
    shapes = {
        "model.embed_tokens.weight": (vocab, hidden),
        "model.norm.weight": (hidden,),
        "model.image_newline": (hidden,),
        "model.mm_projector.0.weight": (hidden, vision_hidden),
        "model.mm_projector.0.bias": (hidden,),
        "model.mm_projector.2.weight": (hidden, hidden),
        "model.mm_projector.2.bias": (hidden,),
        VISION + "embeddings.patch_embedding.weight": (vision_hidden, 3, patch, patch),
        VISION + "embeddings.patch_embedding.bias": (vision_hidden,),
        VISION + "embeddings.position_embedding.weight": ((image_size // patch) ** 2, vision_hidden),
        VISION + "post_layernorm.weight": (vision_hidden,),
        VISION + "post_layernorm.bias": (vision_hidden,),
    }
    if not tied:
        shapes["lm_head.weight"] = (vocab, hidden)
    for i in range(n_text_layers):
        shapes.update({f"model.layers.{i}.{k}": v for k, v in text.items()})
    for j in range(n_vision_layers):
        shapes.update({f"{VISION}encoder.layers.{j}.{k}": v for k, v in vision.items()})
    if set(shapes) != published_keys(n_text_layers, n_vision_layers, tied):  # the two lists must not drift apart
        raise AssertionError("published_shapes and published_keys disagree")
    return shapes

"""Checkpoints: resolve a Hub id or a local directory, find its weights, tell its layout, translate a LLaVA-NeXT
config, and check config against weights and transformers' loading report, each failure one ModelError.

Two checkpoint layouts load:

* ``llava-hf``: ``llava-hf/llava-onevision-*-hf`` (``model_type: llava_onevision``).
* ``llava-next``: the original LLaVA-NeXT layout of lmms-lab LLaVA-OneVision and the LLaVA-Scissor baselines
  (``model_type: llava_qwen`` / ``llava_qwen_zip``, keys ``model.mm_projector.0.weight`` ...). Its config has no
  vision config (LLaVA-NeXT fetched SigLIP by name), so the tower's shape is read from the weight shapes; keys are
  renamed on load, and any missing or unexpected key is an error (transformers would otherwise keep random weights).

torch, transformers and huggingface_hub are imported inside functions.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from scissor_cli.errors import ModelError, OptionError
from scissor_cli.options import ModelOptions

# What snapshot_download fetches: configs, tokenizer files, chat templates, safetensors weights. Never pickles
# unless allowed (then a second call adds *.bin).
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]
SIGLIP_MEAN_STD = (0.5, 0.5, 0.5)  # SigLIP normalisation; the llava-hf configs store the same values
# original LLaVA-NeXT name -> transformers 5.x in-memory name (applied by from_pretrained's key_mapping)
NEXT_KEY_MAPPING = {
    r"^model\.vision_tower\.vision_tower\.vision_model\.": "model.vision_tower.",
    r"^model\.mm_projector\.0\.": "model.multi_modal_projector.linear_1.",
    r"^model\.mm_projector\.2\.": "model.multi_modal_projector.linear_2.",
    r"^model\.(embed_tokens|layers|norm)\.": r"model.language_model.\1.",
}
NEXT_VISION_PREFIX = "model.vision_tower.vision_tower.vision_model."
# the way back, to name a missing or unexpected weight as the checkpoint's files spell it
NEXT_STORED_NAMES = {
    r"^model\.vision_tower\.": NEXT_VISION_PREFIX,
    r"^model\.multi_modal_projector\.linear_1\.": "model.mm_projector.0.",
    r"^model\.multi_modal_projector\.linear_2\.": "model.mm_projector.2.",
    r"^model\.language_model\.": "model.",
}
# Qwen2 fields of a LlavaQwenConfig that carry over to the text config unchanged
QWEN2_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "hidden_act",
    "sliding_window",
    "use_sliding_window",
    "max_window_layers",
    "attention_dropout",
    "bos_token_id",
    "eos_token_id",
)


def download_hint(name: str, revision: str | None = None) -> str:
    command = f"hf download {name}" + (f" --revision {revision}" if revision else "")
    return f"download it with `{command}` (while online), or point --model at a local directory"


def _env_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub_cache_dir() -> str | None:
    """The Hugging Face cache as the environment says *now* (huggingface_hub reads it once, at import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or os.sep in name.replace("/", "") or name.count("/") > 1


def resolve_model_dir(name: str, revision: str | None = None, offline: bool = False) -> Path:
    """A local directory holding config.json, tokenizer and weights: ``name`` itself, or the Hub snapshot (downloaded
    into the normal Hugging Face cache unless offline). Raises ModelError naming the model, the reason and a fix."""
    local = Path(name).expanduser()
    if local.is_dir():
        if revision:  # a folder holds one version; a revision there would be silently ignored
            raise OptionError(
                f"--revision applies to hub ids; {name} is a local folder",
                hint="drop --revision (or model.revision in the profile), or give a hub id with --model",
            )
        if not (local / "config.json").is_file():
            raise ModelError(
                f"{name} is a directory but has no config.json",
                hint="point --model at a checkpoint directory (config.json, tokenizer, *.safetensors) or a hub id",
            )
        return local
    if local.exists() or _looks_like_path(name):
        raise ModelError(
            f"model directory {name} does not exist" if not local.exists() else f"{name} is not a directory",
            hint=f"check the path, or give a hub id such as {ModelOptions.model}",
        )

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    offline = offline or _env_offline()
    at = f"{name}@{revision}" if revision else name
    try:
        path = snapshot_download(
            name,
            revision=revision,
            allow_patterns=ALLOW_PATTERNS,
            local_files_only=offline,
            cache_dir=_hub_cache_dir(),
        )
    except HFValidationError as e:
        raise ModelError(
            f"{name} is neither a local directory nor a valid hub id",
            hint=f"give a directory path or a hub id such as {ModelOptions.model}",
        ) from e
    except GatedRepoError as e:
        raise ModelError(
            f"model {at} is gated on the Hugging Face Hub",
            hint="accept its license on huggingface.co and log in (`hf auth login`), or "
            + download_hint(name, revision),
        ) from e
    except RepositoryNotFoundError as e:
        raise ModelError(
            f"model {name} was not found on the Hugging Face Hub (wrong id, or private)",
            hint=f"check the id (default: {ModelOptions.model}) or point --model at a local directory",
        ) from e
    except RevisionNotFoundError as e:
        raise ModelError(
            f"revision {revision!r} of model {name} was not found",
            hint="give an existing branch, tag or commit with --revision, or leave it out",
        ) from e
    except LocalEntryNotFoundError as e:
        why = "offline mode is on (HF_HUB_OFFLINE or --offline)" if offline else "the Hub could not be reached"
        raise ModelError(
            f"model {at} is not in the Hugging Face cache and {why}", hint=download_hint(name, revision)
        ) from e
    except OSError as e:  # network errors, disk full, permissions
        raise ModelError(f"could not fetch model {at}: {e}", hint=download_hint(name, revision)) from e
    return Path(path)


def _weight_files(model_dir: Path, name: str, allow_pickle: bool) -> tuple[list[Path], bool]:
    """The checkpoint's weight files and whether they are safetensors. Pickles only with ``allow_pickle``."""
    safetensors = sorted(model_dir.glob("*.safetensors"))
    if safetensors:
        return safetensors, True
    pickles = sorted(model_dir.glob("*.bin"))
    if pickles and allow_pickle:
        return pickles, False
    if pickles:
        raise ModelError(
            f"model {name} has only pickle weights ({pickles[0].name}); they are refused because loading a pickle "
            "can run arbitrary code",
            hint="use a safetensors checkpoint, or set model.allow_pickle: true in a profile if you trust its source",
        )
    raise ModelError(
        f"model {name} has no weights (*.safetensors) in {model_dir}",
        hint="pickle-only checkpoints (pytorch_model.bin) are fetched only with model.allow_pickle: true; "
        "otherwise check the directory or hub id",
    )


def _fetch_pickles(name: str, revision: str | None, offline: bool) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                name,
                revision=revision,
                allow_patterns=[*ALLOW_PATTERNS, "*.bin"],
                local_files_only=offline or _env_offline(),
                cache_dir=_hub_cache_dir(),
            )
        )
    except (OSError, ValueError) as e:  # the hub's errors are OSErrors (HTTP, not cached) or ValueErrors (bad id)
        raise ModelError(
            f"could not fetch the pickle weights of model {name}: {e}", hint=download_hint(name, revision)
        ) from e


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{path} is not valid JSON: {e}", hint="re-download the checkpoint") from e


def detect_layout(config: dict) -> str:
    """``llava-hf`` (transformers' LlavaOnevision config) or ``llava-next`` (LLaVA-NeXT's LlavaQwen config)."""
    model_type = config.get("model_type", "")
    if model_type == "llava_onevision":
        return "llava-hf"
    arch = " ".join(config.get("architectures") or [])
    if model_type in ("llava_qwen", "llava_qwen_zip") or ("mm_vision_tower" in config and "Qwen" in arch):
        return "llava-next"
    raise ModelError(
        f"unsupported checkpoint type {model_type or '(none)'} ({arch or 'no architectures'})",
        hint="scissor runs LLaVA-OneVision checkpoints: llava-hf/llava-onevision-qwen2-*-hf, "
        "lmms-lab/llava-onevision-qwen2-*-ov or the LLaVA-Scissor baselines",
    )


def _tensor_shapes(files: list[Path], safetensors: bool, name: str) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape, from the safetensors headers (no data read)."""
    import pickle
    import warnings

    import torch
    from safetensors import SafetensorError, safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        try:
            if safetensors:
                with safe_open(str(f), framework="pt") as sf:
                    for k in sf.keys():  # noqa: SIM118 - safe_open is not a dict
                        shapes[k] = tuple(sf.get_slice(k).get_shape())
            else:
                with warnings.catch_warnings():  # "Detected pickle protocol 4": a refusal below says enough
                    warnings.simplefilter("ignore", UserWarning)
                    try:
                        sd = torch.load(str(f), map_location="meta", weights_only=True, mmap=True)
                    except RuntimeError as e:  # the legacy (non-zip) format cannot be memory-mapped
                        if "mmap" not in str(e):
                            raise
                        sd = torch.load(str(f), map_location="meta", weights_only=True)
                if not isinstance(sd, dict):
                    raise pickle.UnpicklingError(f"it holds a {type(sd).__name__}, not a dict of tensors")
                shapes.update({k: tuple(v.shape) for k, v in sd.items() if hasattr(v, "shape")})
        except pickle.UnpicklingError as e:  # weights_only unpickling refused it: more than tensors, maybe code
            raise ModelError(
                f"model {name}: {f.name} was refused by safe (weights-only) unpickling{_unpickling_reason(e)}",
                hint="it holds more than tensors (possibly code): use a safetensors checkpoint from a trusted source",
            ) from e
        except (SafetensorError, OSError, RuntimeError, EOFError) as e:  # truncated or not weights
            raise ModelError(
                f"model {name}: cannot read {f.name}: {e}", hint="the file is truncated or corrupt; re-download it"
            ) from e
    return shapes


def _unpickling_reason(e: Exception) -> str:
    """torch's refusal names the offending global on one line of a long message (whose advice to turn
    weights_only off is not one to pass on)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    reason = next((line for line in lines if line.lower().startswith(("unsupported", "trying to load"))), None)
    if reason is None and len(lines) == 1:
        reason = lines[0]
    return f" ({reason})" if reason else ""


def _next_config(cfg: dict, shapes: dict[str, tuple[int, ...]], name: str):
    """Build a LlavaOnevisionConfig for an original-layout checkpoint (the vision tower's sizes from its weights)."""
    from transformers import LlavaOnevisionConfig, Qwen2Config, SiglipVisionConfig

    def unsupported(what: str, value) -> ModelError:
        return ModelError(
            f"model {name}: {what} = {value!r} is not supported",
            hint="scissor loads LLaVA-OneVision (SigLIP + mlp2x_gelu projector + bilinear video pooling, Qwen2)",
        )

    if cfg.get("mm_projector_type", "mlp2x_gelu") != "mlp2x_gelu":
        raise unsupported("mm_projector_type", cfg.get("mm_projector_type"))
    if cfg.get("mm_spatial_pool_mode", "bilinear") != "bilinear":
        raise unsupported("mm_spatial_pool_mode", cfg.get("mm_spatial_pool_mode"))
    if cfg.get("mm_spatial_pool_stride", 2) != 2:
        raise unsupported("mm_spatial_pool_stride", cfg.get("mm_spatial_pool_stride"))
    if "siglip" not in str(cfg.get("mm_vision_tower", "siglip")).lower():
        raise unsupported("mm_vision_tower", cfg.get("mm_vision_tower"))

    p = NEXT_VISION_PREFIX
    try:
        hidden, _, patch, _ = shapes[p + "embeddings.patch_embedding.weight"]
        n_positions = shapes[p + "embeddings.position_embedding.weight"][0]
        intermediate = shapes[p + "encoder.layers.0.mlp.fc1.weight"][0]
    except KeyError as e:
        raise ModelError(
            f"model {name}: the original-layout weights have no SigLIP tensor {e.args[0]}",
            hint="the checkpoint is incomplete or not a LLaVA-OneVision checkpoint",
        ) from e
    layer_ids = {int(m.group(1)) for k in shapes if (m := re.match(re.escape(p) + r"encoder\.layers\.(\d+)\.", k))}
    side = math.isqrt(n_positions)
    # so400m: 16 heads of 72; other SigLIP towers use head_dim 64. The config does not say (LLaVA-NeXT fetched it).
    n_heads = 16 if hidden == 1152 else hidden // 64
    if side * side != n_positions or n_heads < 1 or hidden % n_heads:
        raise ModelError(
            f"model {name}: cannot infer the SigLIP tower shape (hidden {hidden}, {n_positions} positions)",
            hint="convert the checkpoint to the llava-hf layout with transformers' convert_llava_onevision script",
        )
    vision = SiglipVisionConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=len(layer_ids),  # LLaVA-OV stores the 26 layers it uses (so400m has 27)
        num_attention_heads=n_heads,
        image_size=side * patch,
        patch_size=patch,
        vision_use_head=False,
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=1e-6,
    )
    tied = bool(cfg.get("tie_word_embeddings", False))
    text = Qwen2Config(**{k: cfg[k] for k in QWEN2_FIELDS if k in cfg}, tie_word_embeddings=tied)
    return LlavaOnevisionConfig(
        vision_config=vision.to_dict(),
        text_config=text.to_dict(),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,  # last layer of the stored tower == LLaVA-NeXT's mm_vision_select_layer -2
        vision_aspect_ratio=cfg.get("image_aspect_ratio", "anyres_max_9"),
        image_grid_pinpoints=cfg.get("image_grid_pinpoints"),
        tie_word_embeddings=tied,
    )


def _check_config_shapes(config, shapes: dict[str, tuple[int, ...]], name: str, layout: str) -> None:
    """The config's layer counts and sizes against the weight files' tensor shapes (headers only), before anything
    is built: transformers would allocate and initialise every layer the config names first (a config claiming
    100,000 layers took gigabytes before any check). Raises ModelError naming the config key."""
    text, vision = config.text_config, config.vision_config
    # llava-next: the text sizes come from config.json's top level; the vision tower's from the weights themselves
    t_key = "" if layout == "llava-next" else "text_config."

    def find(pattern: str) -> tuple[str, tuple[int, ...]] | None:
        rx = re.compile(pattern)
        return next(((k, v) for k, v in sorted(shapes.items()) if rx.search(k)), None)

    def layers(pattern: str) -> int:
        rx = re.compile(pattern)
        return len({m.group(1) for k in shapes if (m := rx.search(k))})

    def mismatch(key: str, value: Any, held: str) -> ModelError:
        return ModelError(
            f"model {name}: config.json has {key} = {value!r}, but its weights hold {held}",
            hint="the config does not belong to these weights: re-download the checkpoint or fix config.json",
        )

    checks: list[tuple[str, Any, int | None, str]] = []  # (config key, config value, value in the weights, held)
    n_text = layers(r"(?:^|\.)layers\.(\d+)\.input_layernorm\.weight$")
    checks.append((t_key + "num_hidden_layers", text.num_hidden_layers, n_text, f"{n_text} text layers"))
    if layout != "llava-next":
        n_vision = layers(r"encoder\.layers\.(\d+)\.layer_norm1\.weight$")
        checks.append(("vision_config.num_hidden_layers", vision.num_hidden_layers, n_vision,
                       f"{n_vision} vision layers"))  # fmt: skip
    if (hit := find(r"embed_tokens\.weight$")) is not None:
        k, (vocab, hidden) = hit[0], hit[1][:2]
        checks.append((t_key + "vocab_size", text.vocab_size, vocab, f"{k} of shape {list(hit[1])}"))
        checks.append((t_key + "hidden_size", text.hidden_size, hidden, f"{k} of shape {list(hit[1])}"))
    if (hit := find(r"layers\.\d+\.mlp\.gate_proj\.weight$")) is not None:
        checks.append((t_key + "intermediate_size", text.intermediate_size, hit[1][0],
                       f"{hit[0]} of shape {list(hit[1])}"))  # fmt: skip
    if layout != "llava-next":
        if (hit := find(r"patch_embedding\.weight$")) is not None:
            desc = f"{hit[0]} of shape {list(hit[1])}"
            checks.append(("vision_config.hidden_size", vision.hidden_size, hit[1][0], desc))
            checks.append(("vision_config.patch_size", vision.patch_size, hit[1][-1], desc))
        if (hit := find(r"encoder\.layers\.\d+\.mlp\.fc1\.weight$")) is not None:
            checks.append(("vision_config.intermediate_size", vision.intermediate_size, hit[1][0],
                           f"{hit[0]} of shape {list(hit[1])}"))  # fmt: skip
    for key, value, held, desc in checks:
        if held is not None and value != held:
            raise mismatch(key, value, desc)
    # derived sizes, once the plain ones agree
    heads, kv_heads = text.num_attention_heads, getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or (text.hidden_size // heads if heads else 0)
    for proj, key, n in (("q_proj", "num_attention_heads", heads), ("k_proj", "num_key_value_heads", kv_heads)):
        if (hit := find(rf"layers\.\d+\.self_attn\.{proj}\.weight$")) is not None and hit[1][0] != n * head_dim:
            held = f"{hit[0]} of shape {list(hit[1])}, not {n} heads of {head_dim}"
            if proj == "k_proj":  # head_dim follows num_attention_heads unless the config sets it
                held += f" (head_dim from {t_key}num_attention_heads = {heads})"
            raise mismatch(t_key + key, n, held)
    if layout != "llava-next" and vision.patch_size and (hit := find(r"position_embedding\.weight$")) is not None:
        n_pos = (vision.image_size // vision.patch_size) ** 2
        if hit[1][0] != n_pos:
            raise mismatch("vision_config.image_size", vision.image_size,
                           f"{hit[0]} of shape {list(hit[1])} ({hit[1][0]} positions, not {n_pos})")  # fmt: skip


def _processor_settings(model_dir: Path, image_size: int) -> tuple[tuple[int, int], tuple, tuple]:
    """(height, width), mean, std of the checkpoint's video preprocessing; SigLIP defaults when it has none."""
    proc = _read_json(model_dir / "processor_config.json") or {}
    candidates = [
        proc.get("video_processor"),
        _read_json(model_dir / "video_preprocessor_config.json"),
        proc.get("image_processor"),
        _read_json(model_dir / "preprocessor_config.json"),
    ]
    chosen = next((c for c in candidates if isinstance(c, dict)), {})
    size = chosen.get("size") or {}
    if "height" in size and "width" in size:
        hw = (int(size["height"]), int(size["width"]))
    elif "shortest_edge" in size:
        hw = (int(size["shortest_edge"]),) * 2
    else:
        hw = (image_size, image_size)
    mean = tuple(float(x) for x in chosen.get("image_mean", SIGLIP_MEAN_STD))
    std = tuple(float(x) for x in chosen.get("image_std", SIGLIP_MEAN_STD))
    return hw, mean, std


def _processor_chat_template(model_dir: Path) -> str | None:
    """Checkpoints saved by older transformers keep the chat template with the processor, not the tokenizer."""
    if (model_dir / "chat_template.jinja").is_file():
        return (model_dir / "chat_template.jinja").read_text()
    for name in ("chat_template.json", "processor_config.json"):
        template = (_read_json(model_dir / name) or {}).get("chat_template")
        if isinstance(template, str):
            return template
    return None


def _zip_setting(raw: dict, key: str, name: str) -> float | None:
    """A LLaVA-Scissor baseline's own SCC setting (None when absent); 0.0 is a value like any other."""
    value = raw.get(key)
    if value is None:
        return None
    tau = key == "mm_zip_tau"
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (-1.0 <= value <= 1.0 if tau else 0.0 < value <= 1.0)
    if not ok:
        allowed = "a cosine similarity from -1 to 1" if tau else "a number in (0, 1]"
        raise ModelError(
            f"model {name}: config.json has {key} = {value!r}, which is not {allowed}",
            hint="fix the checkpoint's config.json, or remove the key to use the paper's setting",
        )
    return float(value)


def _stored_name(key: str) -> str:
    """A transformers parameter name -> the name an original-layout checkpoint stores it under."""
    for pattern, stored in NEXT_STORED_NAMES.items():
        if re.match(pattern, key):
            return re.sub(pattern, stored, key)
    return key


def _check_loading_info(info: dict, config, name: str, layout: str) -> None:
    """transformers keeps random weights for missing keys and ignores unexpected ones; both are errors here."""
    tied = bool(getattr(config, "tie_word_embeddings", False) or config.text_config.tie_word_embeddings)
    missing = [k for k in info.get("missing_keys", []) if not (tied and k == "lm_head.weight")]
    unexpected = list(info.get("unexpected_keys", []))
    if layout == "llava-next":  # transformers reports its own names; say what the files store (or should)
        missing, unexpected = ([_stored_name(k) for k in keys] for keys in (missing, unexpected))
    missing, unexpected = sorted(missing), sorted(unexpected)
    mismatched = sorted(str(k) for k in info.get("mismatched_keys", []))
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("mismatched", mismatched)):
        if keys:
            shown = ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")
            problems.append(f"{len(keys)} {label} weight(s): {shown}")
    if problems:
        raise ModelError(
            f"model {name} ({layout} layout) does not match LLaVA-OneVision: " + "; ".join(problems),
            hint="the checkpoint is incomplete, corrupt, or a different architecture; re-download it",
        )

"""LLaVA-OneVision through transformers: load a checkpoint, encode frames into video tokens, generate with
(compressed) video tokens spliced into the prompt. The only module that imports transformers.

The seam is deliberately narrow (docs/models.md, "The transformers seam"): ``encode`` runs what transformers'
``get_video_features`` runs (SigLIP -> projector -> 2x2 bilinear pooling) and strips its trailing
``image_newline``; ``generate`` splices the kept tokens (+ ``image_newline`` when ``newline``) where the prompt's
single video placeholder was and calls ``generate(inputs_embeds=...)``. With nothing removed this is bit-identical
to transformers' own path (``input_ids`` with expanded placeholders + ``pixel_values_videos``); a test checks it.

Two checkpoint layouts load:

* ``llava-hf``: ``llava-hf/llava-onevision-*-hf`` (``model_type: llava_onevision``).
* ``llava-next``: the original LLaVA-NeXT layout of lmms-lab LLaVA-OneVision and the LLaVA-Scissor baselines
  (``model_type: llava_qwen`` / ``llava_qwen_zip``, keys ``model.mm_projector.0.weight`` ...). Its config has no
  vision config (LLaVA-NeXT fetched SigLIP by name), so the tower's shape is read from the weight shapes; keys are
  renamed on load, and any missing or unexpected key is an error (transformers would otherwise keep random weights).

torch and transformers are imported inside functions: the CLI's light paths import this module's names only.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scissor_cli.errors import ModelError, OptionError
from scissor_cli.options import GenerationOptions, ModelOptions

if TYPE_CHECKING:
    import numpy as np
    import torch

# What snapshot_download fetches: configs, tokenizer files, chat templates, safetensors weights. Never pickles
# unless allowed (then a second call adds *.bin).
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]
FRAMES_PER_CHUNK = 8  # vision tower batch: bounds activation memory (27x27 patches x 1152 x 26 layers per frame)
SIGLIP_MEAN_STD = (0.5, 0.5, 0.5)  # SigLIP normalisation; the llava-hf configs store the same values
# A placeholder no tokenizer will split or produce from user text; the prompt is cut around it.
VIDEO_MARK = "\u2063<scissor-video>\u2063"
# Stands for the i-th user text while the template renders (``_prompt_pieces``); cut out again afterwards.
_TEXT_MARK = "\u2063<scissor-text-{}>\u2063"
_MARK_RE = re.compile("\u2063<scissor-text-(\\d+)>\u2063")

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
class PromptCache:
    """A conversation's KV cache between ``generate`` calls (``scissor chat``): the next turn prefills only what
    follows the longest common prefix of its prompt and what the cache holds (llama.cpp's and ollama's rule).

    What the cache holds is named by token ids, and the video by the tensor object passed in: a new compression
    (``/retention``, ``/tokens``, ``/tau``, ``/off``) or new frames (``/frames``, ``/video``) is another tensor, so
    only the text before the video is kept; ``/reset`` drops the earlier turns, so the cache is cut after the video."""

    kv: Any = None  # transformers' DynamicCache, or None (empty)
    before: tuple[int, ...] = ()  # the prompt's ids before the video
    video: Any = None  # the video tensor the cache was computed with
    n_video: int = 0  # its tokens (+ image_newline)
    tail: tuple[int, ...] = ()  # ids after the video the cache holds: the prompt's rest and the generated tokens

    def reusable(self, before: list[int], video: Any, n_video: int, after: list[int]) -> int:
        """How many leading positions of this prompt the cache already holds."""
        if self.kv is None:
            return 0
        if tuple(before) != self.before:
            return _common(before, self.before)
        if video is not self.video or n_video != self.n_video:
            return len(before)
        return len(before) + n_video + _common(after, self.tail)

    def clear(self) -> None:
        self.kv, self.before, self.video, self.n_video, self.tail = None, (), None, 0, ()


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def download_hint(name: str, revision: str | None = None) -> str:
    command = f"hf download {name}" + (f" --revision {revision}" if revision else "")
    return f"download it with `{command}` (while online), or point --model at a local directory"


# ---------------------------------------------------------------------------------------------- resolving


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


# ---------------------------------------------------------------------------------------------- configs


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


# ---------------------------------------------------------------------------------------------- frames


def preprocess_frames(frames: np.ndarray, size, mean=SIGLIP_MEAN_STD, std=SIGLIP_MEAN_STD) -> torch.Tensor:
    """uint8 [F, H, W, 3] RGB -> float32 [F, 3, S, S] (``size`` an int or (height, width)).

    Bit-identical to transformers' LlavaOnevisionVideoProcessor (torchvision backend): a uint8 bicubic antialiased
    resize straight to the target size (no aspect keep, no crop), then (x - 255*mean) / (255*std)."""
    return normalize_frames(resize_frames(frames, size), mean, std)


def resize_frames(frames: np.ndarray, size) -> torch.Tensor:
    """The resize half of ``preprocess_frames``: uint8 [F, H, W, 3] -> uint8 [F, 3, S, S]. Batch's decode-ahead
    workers run it, so the main process receives 384 px frames (14 MiB for 32, not 190 MiB of 1080p)."""
    import numpy as np
    import torch

    hw = (size, size) if isinstance(size, int) else tuple(size)
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).contiguous()  # uint8 [F, 3, H, W]
    return torch.nn.functional.interpolate(x, size=hw, mode="bicubic", align_corners=False, antialias=True)


def normalize_frames(x: torch.Tensor, mean=SIGLIP_MEAN_STD, std=SIGLIP_MEAN_STD) -> torch.Tensor:
    """The other half: uint8 [F, 3, S, S] -> float32 (x - 255*mean) / (255*std)."""
    import torch

    m = torch.tensor(mean, dtype=torch.float32) * 255.0
    s = torch.tensor(std, dtype=torch.float32) * 255.0
    return (x.to(torch.float32) - m[:, None, None]) / s[:, None, None]


# ---------------------------------------------------------------------------------------------- device, dtype


def resolve_device(device: str):
    import torch

    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"device {device} was requested but CUDA is not available", hint="use --device cpu or auto")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ModelError("device mps was requested but MPS is not available", hint="use --device cpu or auto")
    return torch.device(device)


def cpu_bf16_support() -> tuple[bool, str]:
    """Whether this CPU multiplies bfloat16 natively, as torch detects it, and why (``scissor doctor`` says it).

    Native means oneDNN has bf16 matrix kernels for it: AVX-512 BF16 (``torch.cpu._is_avx512_bf16_supported``:
    Cooper Lake, Zen 4+) or AMX tiles (``torch.cpu._is_amx_tile_supported``: Sapphire Rapids+, which all have
    AMX-BF16) on x86; BF16 instructions on Arm (``torch.ops.mkldnn._is_mkldnn_bf16_supported``, which on x86 also
    says yes for plain AVX-512, where bf16 is emulated). Without them bf16 is converted to float32 around every
    matmul: several times slower than float32 (3.8x measured on an AVX2 machine)."""
    import platform

    import torch

    def probe(fn) -> bool:
        try:
            return bool(fn())
        except (AttributeError, RuntimeError):  # an older torch, or a build without the probe
            return False

    if platform.machine().lower() in ("x86_64", "amd64", "i386", "i686"):
        found = [name for name, fn in (("AMX", lambda: torch.cpu._is_amx_tile_supported()),
                                       ("AVX-512 BF16", lambda: torch.cpu._is_avx512_bf16_supported()))
                 if probe(fn)]  # fmt: skip
        if found:
            return True, f"this CPU has {' and '.join(found)} (native bfloat16 matrix kernels)"
        return False, "this CPU has no AVX-512 BF16 or AMX: bfloat16 would be emulated, slower than float32"
    if probe(lambda: torch.ops.mkldnn._is_mkldnn_bf16_supported()):
        return True, "this CPU has BF16 instructions (native bfloat16 matrix kernels)"
    return False, "this CPU has no bfloat16 instructions torch uses: bfloat16 would be emulated, slower than float32"


def resolve_dtype(dtype: str, device):
    """auto: bf16 on GPUs that support it, fp16 on other GPUs; on a CPU bf16 where it has native bf16 matrix
    kernels (``cpu_bf16_support``: 1.9x faster prefill, 2.9x faster vision tower measured), else fp32."""
    import torch

    if dtype != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.bfloat16 if cpu_bf16_support()[0] else torch.float32


def auto_dtype(device: str = "auto") -> dict[str, str]:
    """What ``--dtype auto`` picks for ``device`` here and why: {"device", "dtype", "why"} (``scissor doctor``)."""
    dev = resolve_device(device)
    dtype = str(resolve_dtype("auto", dev)).removeprefix("torch.")
    if dev.type == "cuda":
        why = "the GPU supports bfloat16" if dtype == "bfloat16" else "the GPU has no bfloat16: float16"
    elif dev.type == "mps":
        why = "float16 on Apple GPUs"
    else:
        why = cpu_bf16_support()[1]
    return {"device": str(dev), "dtype": dtype, "why": why}


def dtype_name(device: str, dtype: str) -> str:
    """The dtype a model loaded with these options runs in ("float32", "bfloat16", "float16"); only "auto" needs
    torch (and the device) to say."""
    if dtype != "auto":
        return dtype
    return str(resolve_dtype(dtype, resolve_device(device))).removeprefix("torch.")


def emulated_half(device, dtype) -> bool:
    """Half precision that this CPU emulates (slower than float32): float16 always, bfloat16 without native
    kernels (``cpu_bf16_support``). False off the CPU."""
    name = str(dtype).removeprefix("torch.")
    if getattr(device, "type", str(device)) != "cpu" or name not in ("bfloat16", "float16"):
        return False
    return name == "float16" or not cpu_bf16_support()[0]


# ---------------------------------------------------------------------------------------------- the model


class VisionLanguageModel:
    """A loaded LLaVA-OneVision checkpoint: ``encode`` frames into video tokens, ``generate`` answers."""

    def __init__(self, hf_model, tokenizer, *, name: str, revision: str | None, layout: str, newline: bool,
                 image_size: tuple[int, int], mean: tuple, std: tuple,
                 default_tau: float | None = None, default_epsilon: float | None = None,
                 model_dir: Path | None = None):  # fmt: skip

        self.hf_model = hf_model  # LlavaOnevisionForConditionalGeneration, eval mode
        self.tokenizer = tokenizer
        self.name = name
        self.revision = revision
        self.layout = layout
        self.newline = newline
        self.default_tau = default_tau  # the checkpoint's mm_zip_tau (LLaVA-Scissor baselines), else None
        self.default_epsilon = default_epsilon
        self.model_dir = model_dir  # the resolved folder (a Hub snapshot is named by its commit)
        self.image_size = image_size  # (height, width) frames are resized to
        self.mean, self.std = mean, std
        embeddings = hf_model.get_input_embeddings()
        self.device: torch.device = embeddings.weight.device  # first device under device_map="auto"
        self.dtype: torch.dtype = embeddings.weight.dtype
        cfg = hf_model.config
        side = cfg.vision_config.image_size // cfg.vision_config.patch_size
        self.tokens_per_frame = math.ceil(side / 2) ** 2  # 2x2 bilinear pooling: 27x27 -> 14x14 = 196
        self.hidden_size = cfg.text_config.hidden_size
        self.n_layers = cfg.text_config.num_hidden_layers
        self.ffn_size = cfg.text_config.intermediate_size
        vocab = tokenizer.get_vocab()
        # <image>/<video> exist in llava-hf tokenizers only; never generated as text
        self.suppress_ids = sorted({vocab[t] for t in ("<image>", "<video>") if t in vocab})
        self._prompt_cache: dict[tuple, tuple[list[int], list[int]]] = {}
        self._max_token_chars: int | None = None
        self._added_texts: list[str] | None = None  # what the tokenizer matches before its model (special or not)
        # the LLM's context: prompt + answer must fit (a chat checks it before each turn)
        self.max_positions: int | None = getattr(cfg.text_config, "max_position_embeddings", None)
        # called before each vision chunk and each generation step (batch's decode-ahead sizes torch's thread pool
        # there: prefetch.CoreShare); None: nothing
        self.on_step: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return (f"VisionLanguageModel({self.name!r}, layout={self.layout}, device={self.device}, "
                f"dtype={self.dtype}, newline={self.newline})")  # fmt: skip

    # ------------------------------------------------------------------ encode
    def encode(
        self,
        frames: np.ndarray | None,
        on_progress: Callable[[int, int], None] | None = None,
        *,
        resized: np.ndarray | None = None,
    ) -> torch.Tensor:
        """uint8 [F, H, W, 3] -> video tokens [F, T, D] on ``self.device`` in ``self.dtype`` (T = tokens_per_frame).

        What ``get_video_features`` computes without its trailing image_newline, FRAMES_PER_CHUNK frames at a time.
        ``on_progress(n_done, n_frames)`` after each chunk. ``resized`` (instead of ``frames``): the frames already
        through ``resize_frames`` at ``self.image_size``, uint8 [F, 3, S, S] (decode-ahead workers resize)."""
        import torch

        if resized is not None:
            if resized.ndim != 4 or tuple(resized.shape[1:]) != (3, *self.image_size) or resized.shape[0] < 1:
                raise ValueError(f"resized frames must be uint8 [F, 3, {self.image_size[0]}, {self.image_size[1]}] "
                                 f"with F >= 1, got shape {tuple(resized.shape)}")  # fmt: skip
            n_frames = resized.shape[0]
        elif frames is None or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
            shape = None if frames is None else tuple(frames.shape)
            raise ValueError(f"frames must be uint8 [F, H, W, 3] with F >= 1, got shape {shape}")
        else:
            n_frames = frames.shape[0]
        chunks = []
        with torch.inference_mode():
            for start in range(0, n_frames, FRAMES_PER_CHUNK):
                if self.on_step is not None:
                    self.on_step()
                if resized is not None:
                    part = torch.from_numpy(resized[start : start + FRAMES_PER_CHUNK])
                    pixels = normalize_frames(part, self.mean, self.std)
                else:
                    pixels = preprocess_frames(
                        frames[start : start + FRAMES_PER_CHUNK], self.image_size, self.mean, self.std
                    )
                pixels = pixels.to(self.device, self.dtype)[None]  # [1, f, 3, S, S]
                pooled = self.hf_model.model.get_video_features(pixels).pooler_output  # [1, f*T + 1, D]
                chunks.append(pooled[0, :-1].reshape(pixels.shape[1], -1, pooled.shape[-1]))  # [f, T, D]
                if on_progress is not None:
                    on_progress(min(start + FRAMES_PER_CHUNK, n_frames), n_frames)
        return torch.cat(chunks, 0).to(self.device)

    # ------------------------------------------------------------------ prompt
    def prompt_ids(self, question: str, history: Sequence[tuple[str, str]] = ()) -> tuple[list[int], list[int]]:
        """Token ids before and after the video in the checkpoint's prompt for ``question`` (user turn = [video,
        text], generation prompt added; which format: ``_prompt_pieces``). Never relies on a <video> id being in
        the vocabulary.

        User text (questions, answers) is tokenized as plain text: ``<|im_end|>`` or ``<video>`` typed in a
        question become ordinary tokens, never a turn delimiter or a placeholder; the template's own markers stay
        special.

        ``history``: earlier (question, answer) turns of a conversation; the video stays in the first user turn and
        ``question`` becomes the last one (empty history: the single-question prompt ``ask`` uses)."""
        key = (question, tuple(history))
        if key not in self._prompt_cache:
            ids = tuple(self._tokenize_pieces(side) for side in self._prompt_pieces(question, key[1]))
            if len(self._prompt_cache) > 256:
                self._prompt_cache.clear()
            self._prompt_cache[key] = ids  # type: ignore[assignment]
        return self._prompt_cache[key]

    def _tokenize_pieces(self, pieces: list[tuple[str, bool]]) -> list[int]:
        """Ids of the joined pieces. User text that spells an added token (``<|im_end|>``, ``<video>``, ...) is
        tokenized on its own as plain text; otherwise the whole prompt is tokenized at once (the ids transformers'
        own path gives, also where a piece boundary would change a merge, e.g. a question starting with spaces)."""
        tok = self.tokenizer
        if self._added_texts is None:
            self._added_texts = [t.content for t in tok.added_tokens_decoder.values() if t.content]
        if not any(user and any(a in text for a in self._added_texts) for text, user in pieces):
            return tok("".join(text for text, _ in pieces), add_special_tokens=False).input_ids
        ids = []
        for text, is_user in pieces:
            if text:
                ids += tok(text, add_special_tokens=False, split_special_tokens=is_user).input_ids
        return ids

    def prompt_length(self, n_video: int, question: str, history: Sequence[tuple[str, str]] = ()) -> int:
        """Tokens the LLM reads for this prompt with ``n_video`` visual tokens (image_newline included)."""
        before, after = self.prompt_ids(question, history)
        return len(before) + n_video + int(self.newline) + len(after)

    def check_question(
        self, question: str, *, reserve: int = 0, history: Sequence[tuple[str, str]] = (), what: str = "the question"
    ) -> int:
        """Refuse (OptionError) a question whose tokens cannot fit in the LLM's context next to the prompt's own
        tokens (the template, ``history``) and ``reserve`` more (e.g. max_new_tokens); returns its token count.

        Cheap for huge text: a token spans at most ``max_token_chars`` characters, so a question longer than
        context x that many characters is refused without tokenizing it; anything shorter is tokenized (at most
        that many characters). The message names lengths only, never the text. Call it before decoding a video."""
        limit = self.max_positions
        n_chars = len(question)
        if limit is None:
            return -1
        if n_chars > limit * self.max_token_chars:
            at_least = -(-n_chars // self.max_token_chars)
            raise OptionError(
                f"{what} is {n_chars:,} characters long (at least {at_least:,} tokens); the model's context holds "
                f"{limit:,} tokens",
                hint="shorten it: the prompt, the video's tokens and the answer must all fit in the context",
            )
        n_tokens = len(self.tokenizer(question, add_special_tokens=False, split_special_tokens=True).input_ids)
        before, after = self.prompt_ids("", history)
        room = limit - len(before) - len(after) - int(self.newline) - reserve
        if n_tokens > room:
            raise OptionError(
                f"{what} is {n_tokens:,} tokens ({n_chars:,} characters); the model's context of {limit:,} tokens "
                f"leaves it at most {max(room, 0):,} (the rest: the prompt's {len(before) + len(after):,} tokens"
                + (f" and {reserve:,} for the answer)" if reserve else ")"),
                hint="shorten it: the video's tokens must fit in the context too",
            )
        return n_tokens

    @property
    def max_token_chars(self) -> int:
        """The most characters one token can stand for: its longest vocabulary entry (byte-level entries spell one
        byte per character, so this bounds characters too)."""
        if self._max_token_chars is None:
            self._max_token_chars = max((len(t) for t in self.tokenizer.get_vocab()), default=1) or 1
        return self._max_token_chars

    def _prompt_text(self, question: str, history: tuple[tuple[str, str], ...] = ()) -> tuple[str, str]:
        """The prompt's text before and after the video (the pieces of ``_prompt_pieces`` joined)."""
        before, after = self._prompt_pieces(question, history)
        return "".join(t for t, _ in before), "".join(t for t, _ in after)

    def _prompt_pieces(
        self, question: str, history: tuple[tuple[str, str], ...] = ()
    ) -> tuple[list[tuple[str, bool]], list[tuple[str, bool]]]:
        """The prompt before and after the video as (text, is_user_text) pieces. llava-hf checkpoints: their own
        chat template. Original-layout checkpoints: LLaVA-NeXT's qwen conversation format, whatever template the
        tokenizer carries (their authors prompt them that way; a Qwen2.5 tokenizer's template has another system
        turn).

        The template is rendered with a mark in place of each user text and cut at the marks, so no user text can
        be read as template structure (a typed ``<video>`` does not move the video, a typed ``<|im_end|>`` ends
        no turn)."""
        import jinja2

        tok = self.tokenizer
        # the conversation's questions in order, the first one carrying the video, answers in between
        texts = [q for q, _ in history] + [question] + [a for _, a in history]
        n_q = len(history) + 1
        marks = [_TEXT_MARK.format(i) for i in range(len(texts))]
        questions, answers = marks[:n_q], marks[n_q:]

        def cut(text: str, video: str) -> tuple[list, list] | None:
            if text.count(video) != 1 or any(text.count(m) != 1 for m in marks):
                return None
            before, after = text.split(video)
            if any(m in before for m in marks):  # every user text comes after the video (the first question)
                return None
            return [(before, False)], _split_marks(after, texts)

        if self.layout == "llava-next":
            return cut("".join(_qwen_conversation(questions, answers, VIDEO_MARK)), VIDEO_MARK)  # type: ignore[return-value]
        video_token = getattr(tok, "video_token", None) or ("<video>" if "<video>" in tok.get_vocab() else None)
        if tok.chat_template:
            if video_token:
                # llava-hf templates render a structured user turn; the video becomes "<video>\n" before the text.
                conv = _conversation(
                    [{"type": "video"}, {"type": "text", "text": questions[0]}],
                    questions,
                    answers,
                    lambda text: [{"type": "text", "text": text}],
                )
                try:
                    text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
                except (TypeError, jinja2.TemplateError):  # a string-only template (str + list): the string form
                    text = ""
                if (pieces := cut(text, video_token)) is not None:
                    return pieces
            # A string-content template: the video as its own line before the first question.
            conv = _conversation(f"{VIDEO_MARK}\n{questions[0]}", questions, answers, lambda text: text)
            try:
                text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
            except jinja2.TemplateError as e:
                raise ModelError(
                    f"model {self.name}: its chat template cannot be rendered: {type(e).__name__}: {e}",
                    hint="fix or remove chat_template in the checkpoint's tokenizer_config.json / chat_template.jinja",
                ) from e
            if (pieces := cut(text, VIDEO_MARK)) is not None:
                return pieces
        # no usable template
        return cut("".join(_qwen_conversation(questions, answers, VIDEO_MARK)), VIDEO_MARK)  # type: ignore[return-value]

    # ------------------------------------------------------------------ generate
    def embed_request(
        self, video: torch.Tensor, question: str, history: Sequence[tuple[str, str]] = ()
    ) -> torch.Tensor:
        """[L, D] input embeddings: text before, the K video tokens (+ image_newline), text after."""
        import torch

        before, after = self.prompt_ids(question, history)
        video = video.reshape(-1, video.shape[-1]).to(self.device, self.dtype)  # [K, D] (also takes [F, T, D])
        parts = [video]
        if self.newline:
            parts.append(self.hf_model.model.image_newline.to(self.device, self.dtype)[None])
        embed = self.hf_model.get_input_embeddings()
        ids = torch.tensor(before + after, dtype=torch.long, device=self.device)
        text = embed(ids)  # one lookup for both sides
        return torch.cat([text[: len(before)], *parts, text[len(before) :]], 0)

    def generate(
        self,
        requests: list[tuple[torch.Tensor, str]],
        gen: GenerationOptions,
        *,
        history: Sequence[tuple[str, str]] = (),
        on_text: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        cache: PromptCache | None = None,
        share_prefix: bool = True,
    ) -> GenerationOutput:
        """Answer several (video tokens [K, D], question) requests in one ``generate`` call (left padding; K may
        differ per row). Several questions about one video: pass the same tensor in several requests; their common
        prefix (the text before the video + the video) is then prefilled once (``share_prefix``; False: every row
        prefills its whole prompt, as before, for comparisons).

        ``history``: earlier (question, answer) turns, the same for every request (a conversation, see
        ``prompt_ids``). ``on_text(piece)``: the first request's answer as it is generated (the pieces add up to
        the answer, leading whitespace dropped). ``should_stop()``: checked after each token; True ends generation
        there, and the answer is what was generated so far (how a chat's Ctrl-C stops one answer). ``cache``
        (one request only): a conversation's KV cache, reused where this prompt starts like the cached one and
        left holding this prompt and its answer."""
        import torch
        from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        if not requests:
            return GenerationOutput(texts=[], n_prompt_tokens=[], prefill_s=0.0, generation_s=0.0)
        tok = self.tokenizer
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else self._eos_ids()[0]
        if cache is not None and len(requests) != 1:
            raise ValueError("a PromptCache serves one request per generate call")
        t0 = time.perf_counter()
        with torch.inference_mode():
            rows = [self.embed_request(video, question, history) for video, question in requests]
            lengths = [r.shape[0] for r in rows]
            n_prefill = list(lengths)
            n_max = max(lengths)
            pad = self.hf_model.get_input_embeddings()(torch.tensor([pad_id], device=self.device))[0]
            kv = None
            n_video = [video.reshape(-1, video.shape[-1]).shape[0] + int(self.newline) for video, _ in requests]
            ids = [self.prompt_ids(question, history) for _, question in requests]
            if cache is not None:
                (before, after), video = ids[0], requests[0][0]
                n_reuse = min(cache.reusable(before, video, n_video[0], after), lengths[0] - 1)
                kv, n_held = cache.kv, (cache.kv.get_seq_length() if cache.kv is not None else 0)
                n_reuse = min(n_reuse, n_held)
                cache.clear()  # generate extends the cache in place: it is valid again only once generate returned
                if kv is not None and n_reuse > 0:
                    if n_held > n_reuse:
                        kv.crop(n_reuse - n_held)  # a negative count removes that many positions
                    n_prefill = [lengths[0] - n_reuse]
                else:
                    kv = None
                embeds = rows[0][None]  # [1, L, D]: generate skips the positions the cache holds
                mask = torch.ones(1, lengths[0], dtype=torch.long, device=self.device)
            elif share_prefix and (shared := self._shared_prefixes(requests, ids, n_video)) is not None:
                embeds, mask, kv, n_prefill = self._prefix_batch(rows, shared, pad)
            else:
                embeds = torch.stack([torch.cat([pad.expand(n_max - r.shape[0], -1), r], 0) for r in rows])
                mask = torch.zeros(len(rows), n_max, dtype=torch.long, device=self.device)  # embeds: [B, L, D]
                for i, n in enumerate(lengths):
                    mask[i, n_max - n :] = 1

            sample = gen.temperature > 0
            config = GenerationConfig(
                max_new_tokens=gen.max_new_tokens,
                do_sample=sample,
                temperature=gen.temperature if sample else None,
                top_p=gen.top_p if sample else None,
                top_k=None,
                eos_token_id=self._eos_ids(),
                pad_token_id=pad_id,
                suppress_tokens=self.suppress_ids or None,
                return_dict_in_generate=cache is not None,  # for the cache it leaves
            )

            eos = set(self._eos_ids())

            class _FirstToken(BaseStreamer):
                """generate() puts the prompt first, then each step's tokens: the 2nd put is the first token.
                With ``on_text``, the first row's new text is passed on as it grows (nothing after its eos)."""

                def __init__(self):
                    self.n_puts, self.t_first = 0, None
                    self.ids: list[int] = []
                    self.n_sent, self.done = 0, False

                def put(self, value):
                    self.n_puts += 1
                    if self.n_puts == 2:
                        self.t_first = time.perf_counter()
                    if on_text is None or self.n_puts < 2 or self.done:
                        return
                    token = int(value.reshape(-1)[0])  # [B] per step: the first request's token
                    if token in eos:
                        self.done = True
                        return
                    self.ids.append(token)
                    self._send(final=False)

                def _send(self, final: bool):
                    text = tok.decode(self.ids, skip_special_tokens=True).lstrip()
                    if not final and text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
                        return
                    if len(text) > self.n_sent:
                        on_text(text[self.n_sent :])
                        self.n_sent = len(text)

                def end(self):
                    if on_text is not None:
                        self._send(final=True)

            on_step = self.on_step

            class _Stop(StoppingCriteria):
                """After each step: ``on_step``, then ``should_stop`` (either may be None)."""

                def __call__(self, input_ids, scores, **kwargs):
                    if on_step is not None:
                        on_step()
                    stop = should_stop is not None and bool(should_stop())
                    return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

            hooked = should_stop is not None or on_step is not None
            stopping = StoppingCriteriaList([_Stop()]) if hooked else None
            if on_step is not None:
                on_step()  # before the prefill
            streamer = _FirstToken()
            devices = [self.device] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices, enabled=sample):
                if sample:  # a caller that wants to reproduce the answer passes a seed (pipeline records it)
                    torch.manual_seed(gen.with_drawn_seed().seed)
                result = self.hf_model.generate(
                    inputs_embeds=embeds,
                    attention_mask=mask,
                    generation_config=config,
                    streamer=streamer,
                    stopping_criteria=stopping,
                    cache=kv,
                )
                t_end = time.perf_counter()
        out = result.sequences if cache is not None else result  # [B, n_new]: only the new tokens (inputs_embeds)
        if cache is not None:
            held = result.cache
            n_tail = held.get_seq_length() - len(before) - n_video[0]  # the last generated token was never fed
            cache.kv, cache.before, cache.video, cache.n_video = held, tuple(before), video, n_video[0]
            cache.tail = tuple(after + out[0].tolist())[:n_tail]
        t_first = streamer.t_first or t_end
        texts, n_new, token_ids = [], [], []
        for row in out.tolist():
            cut = next((i for i, t in enumerate(row) if t in eos), len(row))
            n_new.append(cut)
            token_ids.append(row[:cut])
            texts.append(tok.decode(row[:cut], skip_special_tokens=True).strip())
        return GenerationOutput(
            texts=texts,
            n_prompt_tokens=lengths,
            prefill_s=t_first - t0,
            generation_s=t_end - t_first,
            n_new_tokens=n_new,
            token_ids=token_ids,
            n_prefill_tokens=n_prefill,
        )

    def _shared_prefixes(self, requests, ids, n_video) -> list[tuple[int, int]] | None:
        """Per request (its group's first request, its prefix length) where two or more requests share one video
        tensor and the text before it; None when none do (nothing to share)."""
        first: dict[tuple, int] = {}
        groups = []
        for i, ((video, _), (before, _)) in enumerate(zip(requests, ids, strict=True)):
            lead = first.setdefault((id(video), tuple(before)), i)
            groups.append((lead, len(before) + n_video[i]))
        return groups if len(set(groups)) < len(groups) else None

    def _prefix_batch(self, rows, shared, pad):
        """Each group's prefix prefilled once (batch 1), then every row laid out as [pad][prefix][pad][suffix]:
        prefixes right-aligned in the first ``P`` positions, suffixes right-aligned after them. The attention mask
        hides the pads, so the positions (from the mask, as generate computes them) and what each token sees are
        those of the left-padded batch without a cache. Returns (embeds [B, P+S, D], mask, cache, n_prefill)."""
        import torch
        from transformers import DynamicCache

        n_prefix = max(p for _, p in shared)
        n_suffix = max(r.shape[0] - p for r, (_, p) in zip(rows, shared, strict=True))
        b, device = len(rows), self.device
        embeds = pad.expand(b, n_prefix + n_suffix, -1).clone()
        mask = torch.zeros(b, n_prefix + n_suffix, dtype=torch.long, device=device)
        text_config = self.hf_model.config.get_text_config(decoder=True)
        computed: dict[int, Any] = {}
        layers: list[tuple[Any, Any]] = []
        n_prefill = []
        for i, (row, (lead, p)) in enumerate(zip(rows, shared, strict=True)):
            s = row.shape[0] - p
            embeds[i, n_prefix - p : n_prefix] = row[:p]
            embeds[i, n_prefix + n_suffix - s :] = row[p:]
            mask[i, n_prefix - p : n_prefix] = 1
            mask[i, n_prefix + n_suffix - s :] = 1
            n_prefill.append(s + (p if lead == i else 0))
            if lead not in computed:
                if self.on_step is not None:
                    self.on_step()  # batch's decode-ahead sizes the thread pool before each forward pass
                prefix_kv = DynamicCache(config=text_config)
                self.hf_model.model(inputs_embeds=row[None, :p], cache=prefix_kv, use_cache=True)
                computed[lead] = prefix_kv
            for layer, (k, v, *_) in enumerate(computed[lead]):  # k, v: [1, heads, p, head_dim]
                if len(layers) <= layer:
                    shape = (b, k.shape[1], n_prefix, k.shape[3])
                    layers.append((k.new_zeros(shape), v.new_zeros(shape)))
                layers[layer][0][i, :, n_prefix - p :] = k[0]
                layers[layer][1][i, :, n_prefix - p :] = v[0]
        return embeds, mask, DynamicCache(ddp_cache_data=layers, config=text_config), n_prefill

    def _eos_ids(self) -> list[int]:
        eos = self.hf_model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        ids = [eos] if isinstance(eos, int) else list(eos or [])
        if self.tokenizer.eos_token_id is not None and self.tokenizer.eos_token_id not in ids:
            ids.append(self.tokenizer.eos_token_id)
        return ids


def _qwen_conversation(questions: list[str], answers: list[str], video: str | None = None) -> tuple[str, ...]:
    """LLaVA-NeXT's qwen conversation format (its ``qwen_1_5`` / ``qwen_2`` templates), split where its ``<image>``
    placeholder stands: the default system turn, the video then a newline then the first question in the first
    user turn, earlier answers as assistant turns, and the opened assistant turn at the end. With ``video``, that
    mark stands where the split is, and one string comes back."""
    before = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    after = f"\n{questions[0]}<|im_end|>\n"
    for answer, later in zip(answers, questions[1:], strict=True):
        after += f"<|im_start|>assistant\n{answer}<|im_end|>\n<|im_start|>user\n{later}<|im_end|>\n"
    after += "<|im_start|>assistant\n"
    return (before + video + after,) if video is not None else (before, after)


def _split_marks(text: str, texts: list[str]) -> list[tuple[str, bool]]:
    """A rendered prompt with ``_TEXT_MARK``s -> (text, is_user_text) pieces, each mark replaced by its text."""
    pieces, pos = [], 0
    for m in _MARK_RE.finditer(text):
        pieces.append((text[pos : m.start()], False))
        pieces.append((texts[int(m.group(1))], True))
        pos = m.end()
    pieces.append((text[pos:], False))
    return [p for p in pieces if p[0]]


def _conversation(first: Any, questions: list[str], answers: list[str], content: Callable[[str], Any]) -> list[dict]:
    """Chat-template messages: the first user turn's content as given (it carries the video), then alternating
    assistant and user turns, each text wrapped by ``content`` (structured parts or a plain string)."""
    conv = [{"role": "user", "content": first}]
    for answer, question in zip(answers, questions[1:], strict=True):
        conv.append({"role": "assistant", "content": content(answer)})
        conv.append({"role": "user", "content": content(question)})
    return conv


# ---------------------------------------------------------------------------------------------- loading


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' own warnings, reports and progress bars off for a block (library code never prints)."""
    import warnings

    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        hf_logging.set_verbosity(verbosity)


def load_model(opts: ModelOptions, on_status: Callable[[str], None] | None = None) -> VisionLanguageModel:
    """Load ``opts.model`` (hub id or directory, either layout) for inference. Raises ModelError.

    Device auto = cuda -> mps -> cpu. With several visible GPUs and device auto/cuda the weights are spread over
    them (``device_map="auto"``, for 72B models); inputs go to the first. Weights only from safetensors unless
    ``allow_pickle``; never ``trust_remote_code``."""
    status = on_status or (lambda _msg: None)
    name, revision = opts.model, opts.revision
    status(f"resolving {name}" + (f"@{revision}" if revision else ""))
    model_dir = resolve_model_dir(name, revision, opts.offline)
    raw = _read_json(model_dir / "config.json") or {}
    layout = detect_layout(raw)
    try:
        files, is_safetensors = _weight_files(model_dir, name, opts.allow_pickle)
    except ModelError:
        if not (opts.allow_pickle and model_dir != Path(name).expanduser()):
            raise
        model_dir = _fetch_pickles(name, revision, opts.offline)
        files, is_safetensors = _weight_files(model_dir, name, opts.allow_pickle)

    import pickle

    import torch
    from safetensors import SafetensorError
    from transformers import AutoTokenizer, LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration

    device = resolve_device(opts.device)
    dtype = resolve_dtype(opts.dtype, device)
    shapes = _tensor_shapes(files, is_safetensors, name)
    if layout == "llava-hf":
        try:
            with _quiet_transformers():
                config = LlavaOnevisionConfig.from_pretrained(str(model_dir))
        except (OSError, ValueError, TypeError, KeyError) as e:  # a field of the wrong type or value
            raise ModelError(
                f"model {name}: its config.json is not a LLaVA-OneVision config: {type(e).__name__}: {e}",
                hint="re-download the checkpoint or fix config.json",
            ) from e
        key_mapping = None
        newline_default = True
    else:
        with _quiet_transformers():  # Qwen2Config's rope_scaling=None deprecation warning
            config = _next_config(raw, shapes, name)
        key_mapping = NEXT_KEY_MAPPING
        newline_default = False  # LLaVA-NeXT video ("flat", as the LLaVA-Scissor baselines were trained)
    _check_config_shapes(config, shapes, name, layout)
    newline = newline_default if opts.newline is None else opts.newline

    try:
        with _quiet_transformers():  # e.g. "a model of type llava_qwen ..." when it peeks at config.json
            tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
    except Exception as e:  # noqa: BLE001 - narrowed below
        # missing files (OSError), unreadable JSON (ValueError), a wrong structure (KeyError), and the tokenizers
        # library's plain Exception for a tokenizer.json it cannot parse; anything else is a bug, not the checkpoint
        if not isinstance(e, (OSError, ValueError, KeyError)) and type(e) is not Exception:
            raise
        raise ModelError(f"model {name}: cannot load its tokenizer: {e}", hint=download_hint(name, revision)) from e
    if not tokenizer.chat_template:
        tokenizer.chat_template = _processor_chat_template(model_dir)
    if layout == "llava-next":
        vocab = tokenizer.get_vocab()
        for attr, token in (("image_token_index", "<image>"), ("video_token_index", "<video>")):
            if token in vocab:
                setattr(config, attr, vocab[token])

    n_gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    # Spread over several GPUs only when asked for "any GPU" (needs the accelerate package); else one device.
    device_map = "auto" if (opts.device in ("auto", "cuda") and n_gpus > 1) else None
    status(f"loading {name} ({layout} layout) on {device} as {str(dtype).removeprefix('torch.')}")
    try:
        with _quiet_transformers():  # its LOAD REPORT would duplicate the ModelError below
            hf_model, info = LlavaOnevisionForConditionalGeneration.from_pretrained(
                str(model_dir),
                config=config,
                dtype=dtype,
                attn_implementation="sdpa",
                device_map=device_map,
                key_mapping=key_mapping,
                use_safetensors=is_safetensors,
                trust_remote_code=False,
                output_loading_info=True,
            )
    except ImportError as e:
        raise ModelError(
            f"model {name}: {e}", hint="pip install accelerate (needed to spread a model over GPUs)"
        ) from e
    except (OSError, ValueError, RuntimeError, SafetensorError, pickle.UnpicklingError, EOFError) as e:
        # truncated files, shape mismatches, OOM; a pickle that weights_only unpickling refuses, or a cut-off one
        raise ModelError(
            f"model {name} could not be loaded ({layout} layout): {type(e).__name__}: {e}",
            hint="re-download it, or check that it is a LLaVA-OneVision checkpoint",
        ) from e
    _check_loading_info(info, config, name, layout)
    if device_map is None:
        hf_model.to(device)
    hf_model.eval()

    hw, mean, std = _processor_settings(model_dir, config.vision_config.image_size)
    vlm = VisionLanguageModel(
        hf_model,
        tokenizer,
        name=name,
        revision=revision,
        layout=layout,
        newline=newline,
        image_size=hw,
        mean=mean,
        std=std,
        default_tau=_zip_setting(raw, "mm_zip_tau", name),
        default_epsilon=_zip_setting(raw, "mm_zip_epsilon", name),
        model_dir=model_dir,
    )
    vlm.prompt_ids("")  # a chat template that cannot render fails here, before any video is decoded
    return vlm


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

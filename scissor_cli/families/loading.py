"""What loading a checkpoint shares between families: the tokenizer, where the weights go, and transformers'
``from_pretrained`` with its failures turned into one-line ModelErrors."""

from __future__ import annotations

import contextlib
from typing import Any

from scissor_cli.errors import ModelError


def load_tokenizer(model_dir, name: str, revision: str | None):
    """The checkpoint's tokenizer (its chat template from the processor files when the tokenizer has none)."""
    from transformers import AutoTokenizer

    from scissor_cli.checkpoint import _processor_chat_template, download_hint

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
    return tokenizer


def device_map_for(opts, device) -> str | None:
    """Spread over several GPUs only when asked for "any GPU" (needs the accelerate package); else one device."""
    import torch

    n_gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    return "auto" if (opts.device in ("auto", "cuda") and n_gpus > 1) else None


def from_pretrained(cls, model_dir, name: str, layout: str, what: str, **kwargs) -> tuple[Any, dict]:
    """``cls.from_pretrained(model_dir, output_loading_info=True, **kwargs)``; failures as ModelError."""
    import pickle

    from safetensors import SafetensorError

    try:
        with _quiet_transformers():  # its LOAD REPORT would duplicate the ModelError below
            return cls.from_pretrained(
                str(model_dir), attn_implementation="sdpa", trust_remote_code=False, output_loading_info=True, **kwargs
            )
    except ImportError as e:
        raise ModelError(
            f"model {name}: {e}", hint="pip install accelerate (needed to spread a model over GPUs)"
        ) from e
    except (OSError, ValueError, RuntimeError, SafetensorError, pickle.UnpicklingError, EOFError) as e:
        # truncated files, shape mismatches, OOM; a pickle that weights_only unpickling refuses, or a cut-off one
        raise ModelError(
            f"model {name} could not be loaded ({layout} layout): {type(e).__name__}: {e}",
            hint=f"re-download it, or check that it is a {what} checkpoint",
        ) from e


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

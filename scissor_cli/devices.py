"""Where the model runs: ``--device`` and ``--dtype`` resolved (``auto``), and whether this CPU has native
bfloat16 kernels (emulated half precision is several times slower than float32). torch is imported inside
functions.
"""

from __future__ import annotations

from scissor_cli.errors import ModelError


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

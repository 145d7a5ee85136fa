"""Where and how training runs: the torch device, mixed precision, memory figures and errors."""

from __future__ import annotations

import contextlib
import gc
import resource

import torch

from retfound_hpo.core.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """train.device as a torch device; one that this machine lacks is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ConfigError(
                f"train.device: {name!r} is not allowed; this machine sees {count} CUDA "
                "device(s) (use auto or cpu)"
            )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"train.device: {name!r} is not allowed; MPS is not available here")
    return device


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """Mixed precision where the hardware has it: bf16, else fp16 on older GPUs; none on CPU."""
    if amp == "none" or (amp == "auto" and device.type != "cuda"):
        return None
    if amp == "fp16" or (amp == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def is_out_of_memory(err: BaseException) -> bool:
    """Whether an error is the device (or the host) running out of memory."""
    text = str(err).lower()
    return (
        isinstance(err, torch.OutOfMemoryError)
        or "out of memory" in text
        or "can't allocate memory" in text
    )


def release_gpu_memory() -> None:
    """Give a finished model's GPU memory back before the next one is built. Cycles (a failed
    trial's traceback frames) may still hold CUDA tensors, so collect them first; on CPU the
    memory goes back by reference counting, and a full collection in a large process costs
    a good part of a second."""
    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()


def peak_memory_mb(device_type: str) -> float:
    """Peak GPU memory of this trial, or the process's peak resident memory on CPU."""
    if device_type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

"""Choosing the torch device for training (onnxruntime providers are chosen in runtime.py)."""

from __future__ import annotations

import torch

from animevae.errors import DeviceError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_torch_device(device: str) -> torch.device:
    """auto -> cuda when torch sees a GPU, else cpu; cuda without a GPU is an error, never a silent fallback."""
    if device not in DEVICE_CHOICES:
        raise DeviceError(f"unknown device {device!r}", "use one of: auto, cpu, cuda")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError("--device cuda, but torch sees no CUDA GPU",
                          "check `nvidia-smi` and that the installed torch is a CUDA build, or use --device cpu")
    return torch.device("cuda")

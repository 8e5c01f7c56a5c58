"""Choosing the torch device and precision for training (onnxruntime providers are chosen in runtime.py), and the
CPU threads of data made on the fly."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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


PRECISION_CHOICES = ("auto", "fp32", "bf16")


def choose_precision(requested: str, device: torch.device) -> str:
    """fp32 or bf16. auto: bf16 on a CUDA GPU that supports it; on a CPU, bf16 only if a quick measurement
    shows it clearly faster (CPUs without native bf16 emulate it slowly)."""
    if requested not in PRECISION_CHOICES:
        raise DeviceError(f"unknown precision {requested!r}", "use one of: auto, fp32, bf16")
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if _cpu_bf16_speedup() > 1.3 else "fp32"


def _cpu_bf16_speedup() -> float:
    """Time of a conv forward+backward in fp32 divided by the same under bf16 autocast (about 0.5 s in all)."""
    import time

    net = torch.nn.Sequential(torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(64, 32, 3, padding=1))
    x = torch.randn(16, 32, 32, 32)

    def timed(bf16: bool) -> float:
        best = float("inf")
        for _ in range(4):
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                net(x).float().square().mean().backward()
            best = min(best, time.perf_counter() - start)
        return best

    timed(False), timed(True)  # warm-up: first calls pick kernels
    return timed(False) / timed(True)


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread inside, then restore the count: for work made of many small tensors
    (training data drawn or degraded on the fly), whose hand-offs between threads cost more than the threads
    save, and far more when the cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)

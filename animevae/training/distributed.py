"""torchrun support: process groups (gloo on CPU, NCCL on CUDA), rank-aware helpers. A plain run is world size 1."""

from __future__ import annotations

import datetime
import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from animevae.training.devices import resolve_torch_device
from animevae.errors import DeviceError

# A rank that dies must end the run, not hang it: collectives give up after this long.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, metrics, samples and the console report."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True under torchrun with more than one process."""
        return self.world_size > 1

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average scalar metrics over the ranks."""
        if not self.enabled or not values:
            return values
        keys = sorted(values)
        tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return {k: float(v) / self.world_size for k, v in zip(keys, tensor.tolist())}

    def max(self, values: list[float]) -> list[float]:
        """Element-wise maximum over the ranks, so all ranks take the same decisions (stop, learning rate)."""
        if not self.enabled:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor.tolist()

    def share_text(self, text: str) -> str:
        """Rank 0's `text` (at most 255 UTF-8 bytes) on every rank."""
        if not self.enabled:
            return text
        buffer = torch.zeros(256, dtype=torch.uint8, device=self.device)
        if self.is_main:
            raw = text.encode()[:255]
            buffer[: len(raw)] = torch.tensor(list(raw), dtype=torch.uint8)
        dist.broadcast(buffer, src=0)
        return bytes(buffer.cpu().tolist()).rstrip(b"\0").decode()

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.enabled:
            dist.barrier()


def init_distributed(device: str) -> DistContext:
    """Join the torchrun job when its environment is set (WORLD_SIZE > 1), else a single-process context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext(device=resolve_torch_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    torch_device = resolve_torch_device(device)
    if torch_device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise DeviceError(f"local rank {local_rank} but only {torch.cuda.device_count()} GPUs here",
                              "use --nproc-per-node no larger than the GPU count")
        torch_device = torch.device("cuda", local_rank)
        torch.cuda.set_device(torch_device)
    backend = "nccl" if torch_device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    return DistContext(rank=rank, world_size=world_size, device=torch_device)


def shutdown_distributed() -> None:
    """Leave the process group, if any, once. Objects that still hold it (DDP reducers, found by a collection)
    are freed first: one freed after it is gone can abort the process at exit (SIGABRT)."""
    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()

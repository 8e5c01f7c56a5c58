"""Run by test_distributed under torchrun (2 gloo ranks on the CPU), not by pytest.

Each rank builds the real Trainer on the same images and saves to OUT/rank{R}.safetensors:
- ddp_grad.*: the VAE gradients after a backward through the training wrapper, on this rank's own 8 images;
- local_grad.*: the gradients of a plain copy of the VAE on the same images and noise (no communication);
- after.*: every weight and buffer after one real Trainer.step on the first batch of epoch 0.
Usage: python -m torch.distributed.run --nproc-per-node 2 tests/ddp_probe.py OUT DATA_FOLDER
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

from animevae.config import ModelConfig, RunConfig, TrainConfig  # noqa: E402
from animevae.prepared_set import prepare_images
from animevae.training.data import TrainingData  # noqa: E402
from animevae.training.distributed import init_distributed, shutdown_distributed  # noqa: E402
from animevae.training.train import Trainer  # noqa: E402
from helpers import TINY_MODEL  # noqa: E402


def main(out: Path, data: Path) -> None:
    ctx = init_distributed("cpu")
    prepared = prepare_images(data, 16)
    config = RunConfig(name="probe", model=ModelConfig(**TINY_MODEL),
                       train=TrainConfig(epochs=1, batch_size=16, seed=0, precision="fp32", world_size=2))
    trainer = Trainer(config, TrainingData(prepared.images, prepared.hashes), ctx)
    tensors: dict[str, torch.Tensor] = {}

    batch = trainer.train_pixels[8 * ctx.rank : 8 * ctx.rank + 8].float().div(255.0)  # (8, 3, 16, 16), per rank
    plain = copy.deepcopy(trainer.vae)
    for name, module in (("local_grad", plain), ("ddp_grad", trainer.vae_step)):
        recon, posterior = module(batch, torch.Generator().manual_seed(7))
        trainer.loss_fn(batch, recon, posterior)[0].backward()
    for name, parameter in trainer.vae.named_parameters():
        tensors[f"ddp_grad.{name}"] = parameter.grad.detach().clone()
    for name, parameter in plain.named_parameters():
        tensors[f"local_grad.{name}"] = parameter.grad.detach().clone()
    trainer.opt_vae.zero_grad(set_to_none=True)

    trainer.step(next(trainer.epoch_batches(0, 0)))
    for prefix, module in (("vae", trainer.vae), ("denoiser", trainer.denoiser)):
        for name, value in module.state_dict().items():
            tensors[f"after.{prefix}.{name}"] = value.detach().clone().contiguous()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / f"rank{ctx.rank}.safetensors"))
    shutdown_distributed()


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

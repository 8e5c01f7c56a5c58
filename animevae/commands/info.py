"""The info command: which model generate and denoise would use, what it holds, and the providers."""

from __future__ import annotations

from animevae.commands.shared import console, print_classes
from animevae.options import Device, ModelRef, RunName, RunsDir
from animevae.runs import DEFAULT_RUNS_DIR


def info(
    run: RunName = None,
    model: ModelRef = None,
    device: Device = "auto",
    runs_dir: RunsDir = DEFAULT_RUNS_DIR,
) -> None:
    """Show which model generate and denoise would use, its metadata, and the onnxruntime providers."""
    from animevae.model_files import open_models
    from animevae.runtime import available_providers

    models = open_models(runs_dir, run, model, ("decoder",), device)
    decoder, described = models.decoder, models.info
    console.print(f"model: {models.origin}")
    console.print(f"  files: {decoder.path.parent}")
    shown = {**described.provenance, "image_size": str(described.image_size),
             "latent_dim": str(described.latent_dim)}
    for key in ("run", "version", "format_version", "image_size", "latent_dim", "training_data"):
        console.print(f"  {key}: {shown.get(key, '?')}")
    mixture = described.mixture
    used = int((mixture.weights > 0).sum())
    where = described.prior_file.name if described.prior_file is not None else "decoder metadata"
    console.print(f"  latents: {described.latent_source} ({where}); "
                  f"the mixture: {used} components with diagonal covariances")
    classes = described.classes
    console.print(f"  classes: {len(classes.names) if classes else 'none (trained without labels)'}")
    if classes is not None:
        console.print("  (one Gaussian mixture per class; images per class in the training data:)")
        print_classes(classes)
    console.print(f"onnxruntime providers available: {', '.join(available_providers())}")
    console.print(f"--device {device} runs on: {decoder.provider}")
    for note in models.notes:
        console.print(f"note: {note}")

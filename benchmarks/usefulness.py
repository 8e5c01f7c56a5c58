"""What a folder of generated, labelled faces is worth to a classifier (animevae.training.usefulness).

Reads the generated ImageFolder tree exactly as `generate --per-class` wrote it (its metadata.jsonl labels it),
and the real labelled data with the content-hash split of training: classifiers learn from the training split
(or from the generated images) and are scored on the held-out split, which no model here has seen. Prints
class fidelity and the classification accuracy score per class, and the augmentation gain: a classifier trained on
`--few-real` real images per class, without and with the generated images, over `--repeats` draws of those images.

    animevae generate --per-class 300 --out synth-labelled --run NAME
    python benchmarks/usefulness.py --data faces-labelled --generated synth-labelled --few-real 20 --repeats 5
    python benchmarks/usefulness.py --quick     # tiny class folders it draws itself: checks that it runs
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from animevae.prepared_set import prepare_images
from animevae.training.data import TrainingPixels, float_rows, load_training_images, split_holdout
from animevae.progress import SilentReporter
from animevae.training import usefulness
from _quick import write_classes


def _pixels(images: np.ndarray) -> torch.Tensor:
    """(N, S, S, 3) uint8 -> (N, 3, S, S) float in [0, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="the labelled real data the model trained on")
    parser.add_argument("--generated", type=Path, help="the tree `generate --per-class` wrote")
    parser.add_argument("--few-real", type=int, default=20, help="real images per class for the augmentation gain")
    parser.add_argument("--repeats", type=int, default=5, help="draws of the few real images (seeds 0..R-1)")
    parser.add_argument("--classifier-images", type=int, default=1000, help="real training images per class for fidelity")
    parser.add_argument("--val-size", type=int, default=500)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"))
    parser.add_argument("--quick", action="store_true", help="8x8 class folders it draws itself, as real and generated")
    args = parser.parse_args()
    if args.quick:
        with tempfile.TemporaryDirectory() as tmp:
            args.data = write_classes(Path(tmp) / "real", {"a": 8, "b": 8, "c": 8}, size=8)
            args.generated = Path(shutil.copytree(args.data, Path(tmp) / "generated"))
            args.runs_dir, args.image_size, args.val_size = Path(tmp) / "runs", 8, 3
            args.few_real, args.repeats, args.classifier_images = 2, 1, 4
            report(args)
    elif args.data is None or args.generated is None:
        parser.error("--data and --generated are required (or --quick)")
    else:
        report(args)


def report(args: argparse.Namespace) -> None:
    """Print class fidelity, CAS and the augmentation gain of args.generated on args.data as JSON."""
    started = time.perf_counter()
    real = load_training_images(args.data, args.image_size, args.runs_dir / ".cache", SilentReporter())
    names = real.labels.classes.names
    train_idx, val_idx = split_holdout(real.hashes, len(real.images), args.val_size)
    # The real set stays memory-mapped: the classifiers read only the rows they draw.
    labels, cpu = torch.from_numpy(real.labels.index), torch.device("cpu")
    train, train_labels = TrainingPixels(real.images, train_idx, cpu), labels[torch.from_numpy(train_idx)]
    held, held_labels = TrainingPixels(real.images, val_idx, cpu)[:].float().div_(255.0), labels[torch.from_numpy(val_idx)]
    generated = prepare_images(args.generated, args.image_size)
    fake = _pixels(generated.images)
    fake_labels = torch.tensor([names.index(name) for name in generated.label_names])

    rows = usefulness.few_real(train_labels, args.classifier_images, len(names))
    fidelity, trust = usefulness.class_fidelity(float_rows(train, rows), train_labels[rows], fake, fake_labels, held,
                                                held_labels, names)
    cas = usefulness.classification_accuracy_score(fake, fake_labels, held, held_labels, names)
    gains = [usefulness.augmentation_gain(train, train_labels, fake, fake_labels, held, held_labels, names,
                                          args.few_real, seed) for seed in range(args.repeats)]
    without = [w.accuracy for w, _ in gains]
    with_generated = [g.accuracy for _, g in gains]

    def spread(values: list[float]) -> dict[str, float]:
        return {"mean": round(statistics.mean(values), 4),
                "std": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0, "runs": values}

    report = {
        "generated": {name: int((fake_labels == c).sum()) for c, name in enumerate(names)},
        "held_out": {name: int((held_labels == c).sum()) for c, name in enumerate(names)},
        "class_fidelity": fidelity.per_class, "class_fidelity_overall": fidelity.accuracy,
        "fidelity_classifier_held_out_accuracy": trust.accuracy,
        "cas": cas.accuracy, "cas_per_class": cas.per_class,
        "few_real_per_class": args.few_real,
        "augmentation_without": spread(without), "augmentation_with": spread(with_generated),
        "augmentation_gain": round(statistics.mean(with_generated) - statistics.mean(without), 4),
        "augmentation_per_class_seed0": {"without": gains[0][0].per_class, "with": gains[0][1].per_class},
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

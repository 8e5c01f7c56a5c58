"""Generation by class: how many images of each class a request asks for, where they go, and the metadata.jsonl
that labels them. numpy-free and torch-free.

Image i of class c is `OUT/<class name>/<i:06d>.png`, decoded from a latent seeded by (seed, c, i) alone, so
numbering starts at 0 in every class and a rerun with larger counts keeps every finished file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from animevae.errors import ArgumentError
from animevae.fileio import is_complete_png, write_bytes_atomic
from animevae.labels import ClassInfo
from animevae.outputs import METADATA_NAME, is_numbered_png, numbered_png


@dataclass(frozen=True)
class ClassRequest:
    """What `generate` was asked for by class: one class or all, a count, a count per class, or a top-up."""

    name: str | None = None
    count: int | None = None
    per_class: int | None = None
    balance: bool = False

    @property
    def by_class(self) -> bool:
        """Whether the request is by class at all (else: unlabelled draws, as always)."""
        return self.name is not None or self.per_class is not None or self.balance


def class_counts(classes: ClassInfo | None, request: ClassRequest) -> dict[int, int]:
    """Images to generate per class index: `--class NAME --count N`, `--per-class N` (every class, or NAME's),
    or `--balance`: each class topped up to its training count's maximum, or to `--per-class`."""
    if classes is None:
        raise ArgumentError("this model was trained without labels, so it has no classes",
                            "train on class folders (DATA/<label>/*.png) or a metadata.csv, or drop --class, "
                            "--per-class and --balance")
    if request.count is not None and (request.per_class is not None or request.balance):
        raise ArgumentError("--count goes with --class, not with --per-class or --balance",
                            "pass --class NAME --count N, --per-class N, or --balance")
    if request.name is not None and request.count is None and request.per_class is None and not request.balance:
        raise ArgumentError("--class needs --count N (or --per-class N, or --balance)", "pass --class NAME --count 500")
    chosen = [classes.index(request.name)] if request.name is not None else range(len(classes.names))
    for value, flag in ((request.count, "--count"), (request.per_class, "--per-class")):
        if value is not None and value < (0 if request.balance else 1):
            raise ArgumentError(f"{flag} must be at least 1 (got {value})", f"pass {flag} 300, for example")
    if request.balance:
        target = request.per_class if request.per_class is not None else max(classes.counts)
        return {c: max(0, target - classes.counts[c]) for c in chosen}
    wanted = request.count if request.count is not None else request.per_class
    return {c: int(wanted) for c in chosen}


def class_image_path(out_dir: Path, label: str, index: int) -> Path:
    """OUT/<label>/<index>.png."""
    return out_dir / label / numbered_png(index)


def generated_class_images(out_dir: Path, classes: ClassInfo) -> list[Path]:
    """The images a by-class generate run wrote into `out_dir` (by their names, in the model's class folders)."""
    return [path for label in classes.names for path in sorted((out_dir / label).glob("*.png"))
            if is_numbered_png(path.name)]


def write_metadata(out_dir: Path, classes: ClassInfo, seed: int, model_sha256: str) -> int:
    """Write OUT/metadata.jsonl (atomically) listing every finished image of the tree: file_name, label, seed,
    index, model_sha256, as Hugging Face's imagefolder loader reads it. Built from what is on disk, so shards
    and reruns into one folder agree, and the last to finish lists everything. Returns the rows written."""
    rows = []
    for path in generated_class_images(out_dir, classes):
        if is_complete_png(path):
            rows.append(json.dumps({"file_name": f"{path.parent.name}/{path.name}", "label": path.parent.name,
                                    "seed": seed, "index": int(path.stem), "model_sha256": model_sha256}))
    write_bytes_atomic(out_dir / METADATA_NAME, "".join(row + "\n" for row in rows).encode())
    return len(rows)

"""Output folders of bulk jobs (generate, denoise, augment): the manifest that guards them and the failure list."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from animevae.images import Skipped
from animevae.errors import OutputError
from animevae.fileio import write_bytes_atomic, write_json_atomic

# Records which model and settings wrote a folder, so a rerun resumes and another job is refused.
MANIFEST_NAME = ".animevae.json"
SKIPPED_NAME = "skipped.json"
METADATA_NAME = "metadata.jsonl"  # the labels of a class tree that generate wrote (per_class.write_metadata)


@dataclass
class JobResult:
    """What a bulk job (generate, denoise, augment) did."""

    out_dir: Path
    written: int
    existing: int
    seconds: float
    provider: str
    skipped: list[Skipped] = field(default_factory=list)
    report: str = SKIPPED_NAME  # where in out_dir the skipped files are listed

    @property
    def images_per_s(self) -> float:
        """Images written per second of wall time."""
        return self.written / max(self.seconds, 1e-9)


def numbered_png(index: int) -> str:
    """000000.png, ...: six digits, more only from index 1,000,000 on; the name of generated image `index`
    (in a flat folder or a class folder). Never wider for a larger count, so a rerun finds the files it wrote."""
    return f"{index:06d}.png"


def is_numbered_png(name: str) -> bool:
    """Whether a file name is one numbered_png gives (how generate recognises its own images)."""
    return re.fullmatch(r"[0-9]{6,}\.png", name) is not None


def generated_outputs(folder: Path) -> list[Path]:
    """The images a generate run wrote into `folder` (by their names): OUT/<i>.png, and OUT/<class>/<i>.png of a
    run by class (of any model), so that --overwrite into the other layout leaves none of them behind."""
    return [path for path in [*folder.glob("*.png"), *folder.glob("*/*.png")] if is_numbered_png(path.name)]


def augmented_outputs(folder: Path) -> list[Path]:
    """The images an augment run wrote anywhere below `folder` (by their names): <relative stem>_<k>.png."""
    return [path for path in folder.rglob("*.png") if re.search(r"_[0-9]+\.png$", path.name)]


def _outputs_of(folder: Path, stored: dict[str, object]) -> list[Path]:
    """The files that the job a folder's manifest records wrote into it, found by their names: what --overwrite
    for a job of another command or layout removes, which that job's own naming would not find."""
    task = stored.get("task")
    if task == "denoise":
        return list(folder.rglob("*.png"))
    if task == "augment":
        return augmented_outputs(folder)
    if task is None and "model_sha256" in stored:  # generate, whose manifest names no task
        # A class tree's metadata.jsonl would go on labelling images that are gone.
        return [*generated_outputs(folder), *([folder / METADATA_NAME] if stored.get("layout") == "classes" else [])]
    return []


def file_digest(path: Path) -> str:
    """sha256 of a file, to tell one model from another."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def prepare_output(out_dir: Path, identity: dict[str, object], overwrite: bool,
                   old_outputs: Callable[[Path], Iterable[Path]] = lambda folder: (), report: str = SKIPPED_NAME) -> None:
    """Create `out_dir`, refusing one that holds images of another model, seed or input unless `overwrite`.

    With `overwrite`, a folder that animevae wrote for another job loses every output of that job (those its
    manifest's command writes, and those `old_outputs(out_dir)` lists, which a damaged manifest leaves to find) and
    its failure lists before it is claimed for this one, so no old image or list is ever taken for the new job's.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"--out {out_dir} is a file, not a folder", "pass a folder path (it is created if missing)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create {out_dir}: {error.strerror}", "pick a folder you can write to") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise OutputError(f"{out_dir} is not writable", "pick a folder you can write to, or fix its permissions")
    manifest = out_dir / MANIFEST_NAME
    try:
        stored = json.loads(manifest.read_text()) if manifest.is_file() else None
    except (OSError, ValueError):
        stored = {}
    if not overwrite:
        if stored is not None:
            if stored != identity:
                raise OutputError(f"{out_dir} holds the output of another model or settings ({_describe(stored, identity)})",
                                  "use a new --out folder, or pass --overwrite to replace them")
        elif any(out_dir.rglob("*.png")):
            raise OutputError(f"{out_dir} already holds PNG files that animevae did not generate",
                              "use a new --out folder, or pass --overwrite to replace them")
        if (out_dir / report).exists() and not _is_skipped_list(out_dir / report):
            raise OutputError(f"{out_dir / report} is not a list animevae wrote, and this job writes one there",
                              "move it away, use a new --out folder, or pass --overwrite to replace it")
    if stored == identity:
        return  # a rerun leaves the manifest untouched, like every finished file
    if stored is not None:
        # The manifest goes first: a cleanup cut short leaves a folder a plain rerun refuses, never a mix.
        manifest.unlink(missing_ok=True)
        emptied: set[Path] = set()
        for path in [*old_outputs(out_dir), *_outputs_of(out_dir, stored), *out_dir.glob("skipped*.json")]:
            if path.suffix == ".png" or path.name == METADATA_NAME or _is_skipped_list(path):
                path.unlink(missing_ok=True)
                emptied.add(path.parent)
        _remove_empty_folders(out_dir, emptied)
    write_json_atomic(manifest, identity)


def _remove_empty_folders(out_dir: Path, folders: Iterable[Path]) -> None:
    """Remove each of `folders` below `out_dir` that the cleanup left empty, and its parents as they empty (a
    parent tried before its last child is removed on the way up from that child; sorted only so that a run is
    repeatable): to torchvision's ImageFolder, an empty folder of an old class tree is a class with no image."""
    for folder in sorted(folders):
        while out_dir in folder.parents:
            try:
                folder.rmdir()  # only an empty folder: a user's file keeps its folder
            except OSError:
                break
            folder = folder.parent


def _describe(stored: dict[str, object], identity: dict[str, object]) -> str:
    changed = [key for key, value in identity.items() if stored.get(key) != value]
    return ", ".join(f"{key} {_short(stored.get(key))}, now {_short(identity[key])}" for key in changed)


def _short(value: object) -> str:
    text = str(value)
    return text[:12] if len(text) == 64 else text  # sha256 digests: 12 characters say enough


def write_output_file(path: Path, data: bytes, overwrite: bool) -> None:
    """Write a single output file atomically. An existing file with the same bytes is kept untouched (a
    rerun); one with other bytes is replaced only with `overwrite`, never silently."""
    if path.is_file():
        if path.read_bytes() == data:
            return
        if not overwrite:
            raise OutputError(f"{path} already exists", "pick another path, or pass --overwrite to replace it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(path, data)
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error.strerror or error}", "pick a path you can write to") from None


def skipped_name(shard_index: int = 0, shard_count: int = 1) -> str:
    """skipped.json, or skipped.shard-I-of-K.json: shards writing into one folder keep their own lists."""
    return SKIPPED_NAME if shard_count == 1 else f"skipped.shard-{shard_index}-of-{shard_count}.json"


def write_skipped(out_dir: Path, skipped: list[Skipped], name: str = SKIPPED_NAME) -> None:
    """List this run's failures in out_dir/NAME; remove an earlier run's list when all went well."""
    path = out_dir / name
    if skipped:
        write_json_atomic(path, [{"path": s.path, "reason": s.reason} for s in skipped])
    elif _is_skipped_list(path):  # a file of that name that we did not write is not ours to remove
        path.unlink(missing_ok=True)


def _is_skipped_list(path: Path) -> bool:
    """Whether `path` is a failure list as write_skipped writes it."""
    if not path.is_file():
        return False
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(entries, list) and all(isinstance(e, dict) and set(e) == {"path", "reason"} for e in entries)

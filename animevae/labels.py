"""Class labels of a data set: where they come from (folders or a metadata table), their names, their counts.

Two conventions are read, as torchvision and Hugging Face read them: `DATA/<label>/**/*.png` (ImageFolder), or
a `metadata.csv` / `metadata.jsonl` beside the images with `file_name` and `label` columns. A flat folder stays
one unlabelled class. Classes are numbered in sorted name order, as torchvision's ImageFolder numbers them.
numpy only: the torch-free side reads class names and counts from ONNX metadata through this module.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath

import numpy as np

from animevae.errors import DataError

METADATA_FILES = ("metadata.csv", "metadata.jsonl")
CLASSES_KEY = "animevae.classes"
# Label names become folder names: letters, digits and a few separators, no leading dot.
_LABEL_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._+-]{0,99}")
# Names Windows keeps for devices (with any extension), and names of files animevae writes beside class folders.
_RESERVED = re.compile(r"(con|prn|aux|nul|com[0-9]|lpt[0-9])(\..*)?|metadata\.(csv|jsonl)|.*\.json", re.IGNORECASE)


def check_label(name: str, where: str = "") -> str:
    """Return `name` if it is safe as a folder name on every system; DataError with a hint otherwise."""
    if not _LABEL_PATTERN.fullmatch(name) or name.endswith((".", " ")) or _RESERVED.fullmatch(name):
        place = f" (in {where})" if where else ""
        raise DataError(f"label {name[:60]!r}{place} cannot be a folder name",
                        "use labels of letters, digits, space, '.', '_', '+' or '-', starting with a letter or "
                        "digit, at most 100 characters (no '/', '\\', '..', leading dot, device names such as "
                        "NUL, or names of animevae's files such as metadata.jsonl)")
    return name


@dataclass(frozen=True)
class ClassInfo:
    """The classes a model was trained on: names in index order and how many images each had."""

    names: tuple[str, ...]
    counts: tuple[int, ...]

    def index(self, name: str) -> int:
        """The index of class `name`; DataError listing the classes when there is none of that name."""
        if name not in self.names:
            raise DataError(f"the model has no class {name!r}", f"pick one of: {', '.join(self.names)}")
        return self.names.index(name)

    def to_json(self) -> str:
        """[{"name": ..., "count": ...}, ...]: how the classes travel in ONNX and data-set metadata."""
        return json.dumps([{"name": n, "count": c} for n, c in zip(self.names, self.counts)])

    @classmethod
    def from_json(cls, text: str) -> "ClassInfo":
        """Inverse of `to_json`; names are checked again (metadata can come from anywhere)."""
        try:
            entries = json.loads(text)
            names = tuple(check_label(str(entry["name"])) for entry in entries)
            counts = tuple(int(entry["count"]) for entry in entries)
        except (ValueError, KeyError, TypeError) as error:
            raise DataError(f"malformed class list in metadata: {error}", "export the model again") from None
        if not names or len(set(names)) != len(names):
            raise DataError("the class list in the metadata is empty or repeats a name", "export the model again")
        return cls(names, counts)

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> "ClassInfo | None":
        """The classes stored in an ONNX file's metadata, or None for a model trained without labels."""
        text = metadata.get(CLASSES_KEY)
        return cls.from_json(text) if text else None


@dataclass(frozen=True)
class Labels:
    """The class of each image of a set: `index` (N,) int64 into `classes.names`."""

    classes: ClassInfo
    index: np.ndarray

    @classmethod
    def from_names(cls, labels: list[str]) -> "Labels":
        """Number the distinct names in sorted order and count them."""
        names = class_names(labels)
        number = {name: i for i, name in enumerate(names)}
        index = np.array([number[label] for label in labels], dtype=np.int64)
        return cls(ClassInfo(names, tuple(int(c) for c in np.bincount(index, minlength=len(names)))), index)

    def subset(self, rows: np.ndarray) -> np.ndarray:
        """The class indices of `rows`, (len(rows),) int64."""
        return self.index[rows]


def metadata_table(root: Path) -> Path | None:
    """The metadata.csv or metadata.jsonl at the top of `root`, if there is one (two is an error)."""
    found = [root / name for name in METADATA_FILES if (root / name).is_file()]
    if len(found) > 1:
        raise DataError(f"{root} holds both metadata.csv and metadata.jsonl", "keep one of them")
    return found[0] if found else None


def read_metadata_labels(table: Path) -> dict[str, str]:
    """file_name (relative to the table's folder, '/'-separated) -> label, from metadata.csv or .jsonl."""
    rows = _read_rows(table)
    labels: dict[str, str] = {}
    for number, row in enumerate(rows, start=2 if table.suffix == ".csv" else 1):
        if not isinstance(row, dict) or "file_name" not in row or "label" not in row:
            raise DataError(f"{table}, row {number}: no file_name and label columns",
                            "each row needs file_name (the image path relative to the table) and label")
        name = str(PurePosixPath(str(row["file_name"])))
        labels[name] = check_label(str(row["label"]), f"{table.name}, row {number}")
    return labels


def _read_rows(table: Path) -> list[object]:
    try:
        text = table.read_text(encoding="utf-8")
        if table.suffix == ".csv":
            return list(csv.DictReader(text.splitlines()))
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, ValueError, csv.Error) as error:
        raise DataError(f"cannot read {table}: {error}", "write it as UTF-8 CSV or JSON lines") from None


def folder_label(relative: str) -> str | None:
    """The ImageFolder label of an image path relative to the data root: its top folder (None at the top)."""
    parts = PurePath(relative).parts
    return parts[0] if len(parts) > 1 else None


def class_names(labels: list[str]) -> tuple[str, ...]:
    """Sorted distinct label names: index i is class i. Names that differ only in case are refused: on Windows
    and macOS they would be one folder."""
    names = tuple(sorted(set(labels)))
    folded = {name.casefold(): name for name in names}
    if len(folded) < len(names):
        clash = sorted(set(names) - set(folded.values()))[0]
        raise DataError(f"labels {clash!r} and {folded[clash.casefold()]!r} differ only in case",
                        "rename one: on Windows and macOS they would be one folder")
    return names

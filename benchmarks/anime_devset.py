"""Build the real-anime development set: deduplicated 64x64 train/test folders from a copy of a faces repository.

The public GitHub repository antoncoding/Deep_Learning_GAN holds about 33,000 anime fan-art faces (96x96 JPEG)
in `faces/`. No licence is stated: the faces are for development and measurement only. Never commit them,
never ship them, never train the built-in model on them.

    python benchmarks/anime_devset.py --source PATH --out devdata/anime          # PATH: a clone or a bare git dir
    python benchmarks/anime_devset.py --quick                                   # a tiny git repo it makes itself

Each face is centre-cropped, resized to 64x64 with Lanczos (as `prepare` does) and written as PNG to
OUT/train/ or OUT/test/. Exact duplicates (same 64x64 pixels) are dropped. Near-duplicates (the same 8x8
grey average hash: re-saves, small crops) are kept but always land on the same side, so no test face has a
near-copy among the training faces. The split is by a hash of that group key: stable across runs and machines.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from animevae.fileio import save_png_atomic

SIZE = 64
TEST_FACES = 2000


def faces_in_git(git_dir: Path, folder: str) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every file under `folder` at HEAD of a git repository (bare or not), read with git."""
    listing = subprocess.run(["git", f"--git-dir={git_dir}", "ls-tree", "-r", "HEAD", f"{folder}/"],
                             check=True, capture_output=True, text=True).stdout.splitlines()
    entries = [(line.split("\t", 1)[1], line.split()[2]) for line in listing if line.split()[1] == "blob"]
    with subprocess.Popen(["git", f"--git-dir={git_dir}", "cat-file", "--batch"], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE) as cat:
        assert cat.stdin is not None and cat.stdout is not None
        for name, sha in entries:
            cat.stdin.write(f"{sha}\n".encode())
            cat.stdin.flush()
            size = int(cat.stdout.readline().split()[2])
            data = cat.stdout.read(size)
            cat.stdout.read(1)  # the newline after each object
            yield name, data
        cat.stdin.close()


def faces_in_folder(folder: Path) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every file in a plain folder, sorted by name."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        yield str(path.relative_to(folder)), path.read_bytes()


def to_face(data: bytes) -> np.ndarray | None:
    """(64, 64, 3) uint8: centre square, Lanczos resize; None for a file Pillow cannot decode."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image = image.convert("RGB")
            side = min(image.size)
            left, top = (image.width - side) // 2, (image.height - side) // 2
            image = image.crop((left, top, left + side, top + side)).resize((SIZE, SIZE), Image.Resampling.LANCZOS)
            return np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError):
        return None


def near_key(face: np.ndarray) -> str:
    """The 8x8 grey average hash: faces that differ by a re-save or a small shift share it."""
    grey = np.asarray(Image.fromarray(face).convert("L").resize((8, 8), Image.Resampling.BOX), dtype=np.float32)
    return np.packbits(grey > grey.mean()).tobytes().hex()


def build(faces: Iterator[tuple[str, bytes]], out: Path, test_faces: int) -> dict[str, int]:
    """Write OUT/train and OUT/test; return the counts."""
    kept: dict[str, tuple[str, np.ndarray]] = {}  # pixel hash -> (near key, face)
    counts = {"read": 0, "undecodable": 0, "duplicates": 0}
    for _, data in faces:
        counts["read"] += 1
        face = to_face(data)
        if face is None:
            counts["undecodable"] += 1
            continue
        digest = hashlib.sha256(face.tobytes()).hexdigest()
        if digest in kept:
            counts["duplicates"] += 1
            continue
        kept[digest] = (near_key(face), face)
    sizes = Counter(key for key, _ in kept.values())
    test_groups: set[str] = set()
    in_test = 0
    for key in sorted(sizes, key=lambda k: hashlib.sha256(k.encode()).hexdigest()):
        if in_test >= test_faces:
            break
        test_groups.add(key)
        in_test += sizes[key]
    written = {"train": 0, "test": 0}
    for side in written:
        (out / side).mkdir(parents=True, exist_ok=True)
    for digest, (key, face) in sorted(kept.items()):
        side = "test" if key in test_groups else "train"
        save_png_atomic(out / side / f"{digest[:16]}.png", face)
        written[side] += 1
    return {**counts, **written}


def _quick_repo(root: Path) -> Path:
    """A git repository of 40 small JPEG faces (4 exact repeats, one broken file) under faces/."""
    rng = np.random.default_rng(0)
    faces = root / "faces"
    faces.mkdir(parents=True)
    for index in range(36):
        pixels = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize((96, 96), Image.Resampling.NEAREST).save(faces / f"{index}.jpg", quality=95)
    for index in range(4):
        (faces / f"{100 + index}.jpg").write_bytes((faces / f"{index}.jpg").read_bytes())
    (faces / "broken.jpg").write_bytes(b"not a jpeg")
    for command in (["init", "-q"], ["add", "faces"],
                    ["-c", "user.name=x", "-c", "user.email=x@x", "commit", "-q", "-m", "faces"]):
        subprocess.run(["git", "-C", str(root), *command], check=True)
    return root / ".git"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, help="a clone (or bare git dir) of the faces repository")
    parser.add_argument("--folder", default="faces", help="the folder of faces inside it")
    parser.add_argument("--out", type=Path, help="output folder (train/ and test/ are made inside)")
    parser.add_argument("--test-faces", type=int, default=TEST_FACES)
    parser.add_argument("--quick", action="store_true", help="build from a tiny repository made here (a self-test)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            source, out, test_faces = _quick_repo(Path(tmp) / "repo"), Path(tmp) / "out", 5
        elif args.source is None or args.out is None:
            parser.error("--source and --out are required (or --quick)")
        else:
            source, out, test_faces = args.source, args.out, args.test_faces
        if (out / "train").exists() or (out / "test").exists():
            sys.exit(f"error: {out} already holds train/ or test/; choose another --out")
        plain = source / args.folder
        faces = faces_in_folder(plain) if plain.is_dir() else faces_in_git(source, args.folder)
        started = time.monotonic()
        counts = build(faces, out, test_faces)
        print(f"read {counts['read']}, undecodable {counts['undecodable']}, exact duplicates {counts['duplicates']}; "
              f"train {counts['train']}, test {counts['test']} in {out} ({time.monotonic() - started:.0f} s)")
        if args.quick:
            assert counts == {"read": 41, "undecodable": 1, "duplicates": 4, "train": 31, "test": 5}, counts


if __name__ == "__main__":
    main()

"""Splitting bulk jobs across processes or machines: `--shard i/K` takes every K-th item, starting at i."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass

from animevae.errors import ArgumentError


@dataclass(frozen=True)
class Shard:
    """Part `index` of `count` (0-based)."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str | None) -> "Shard":
        """'i/K' -> Shard(i, K); None -> the whole job."""
        if text is None:
            return cls()
        head, sep, tail = text.partition("/")
        # ASCII digits only: str.isdigit() accepts "²", which int() then refuses.
        if not sep or not re.fullmatch(r"[0-9]+", head.strip()) or not re.fullmatch(r"[0-9]+", tail.strip()):
            raise ArgumentError(f"--shard {text!r} is not of the form i/K", "pass for example --shard 0/4 (i from 0 to K-1)")
        index, count = int(head), int(tail)
        if count < 1 or index >= count:
            raise ArgumentError(f"--shard {text}: i must be in 0..K-1 and K at least 1", "pass for example --shard 0/4")
        return cls(index, count)

    def owns_index(self, index: int) -> bool:
        """Whether generated image `index` belongs to this shard."""
        return index % self.count == self.index

    def owns_path(self, relative: str) -> bool:
        """Whether an input file belongs to this shard, by a stable hash of its relative path."""
        return self.count == 1 or path_hash(relative) % self.count == self.index


def path_hash(relative: str) -> int:
    """A stable 64-bit integer for a relative path, the same on every machine and Python run ('/' or os.sep)."""
    digest = hashlib.sha256(relative.replace(os.sep, "/").encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big")

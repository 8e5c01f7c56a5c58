"""animevae.per_class: how many images of each class a request asks for, and the metadata.jsonl that labels them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from animevae.errors import ArgumentError, DataError
from animevae.fileio import encode_png
from animevae.labels import ClassInfo
from animevae.per_class import ClassRequest, class_counts, class_image_path, write_metadata

CLASSES = ClassInfo(("cats", "dogs", "rare"), (100, 80, 10))


@pytest.mark.parametrize(("request_", "expected"), [
    (ClassRequest(name="dogs", count=7), {1: 7}),
    (ClassRequest(per_class=5), {0: 5, 1: 5, 2: 5}),
    (ClassRequest(balance=True), {0: 0, 1: 20, 2: 90}),
    (ClassRequest(balance=True, per_class=50), {0: 0, 1: 0, 2: 40}),
    (ClassRequest(name="rare", balance=True), {2: 90}),
])
def test_requests_become_counts_per_class(request_: ClassRequest, expected: dict[int, int]) -> None:
    assert class_counts(CLASSES, request_) == expected


@pytest.mark.parametrize(("request_", "fragment"), [
    (ClassRequest(name="dogs"), "--class needs --count"),
    (ClassRequest(per_class=5, count=3), "--count goes with --class"),
    (ClassRequest(per_class=0), "--per-class must be at least 1"),
])
def test_contradictory_requests_are_refused(request_: ClassRequest, fragment: str) -> None:
    with pytest.raises(ArgumentError, match=fragment):
        class_counts(CLASSES, request_)


def test_an_unknown_class_lists_the_model_classes() -> None:
    with pytest.raises(DataError) as error:
        class_counts(CLASSES, ClassRequest(name="owls", count=1))
    assert "cats, dogs, rare" in error.value.hint


def test_an_unlabelled_model_has_no_classes_to_ask_for() -> None:
    with pytest.raises(ArgumentError, match="without labels"):
        class_counts(None, ClassRequest(per_class=3))


def test_metadata_lists_the_finished_images_on_disk(tmp_path: Path) -> None:
    import numpy as np

    png = encode_png(np.zeros((4, 4, 3), np.uint8))
    for label, index in (("cats", 0), ("cats", 1), ("rare", 0)):
        path = class_image_path(tmp_path, label, index)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png)
    class_image_path(tmp_path, "dogs", 0).parent.mkdir()
    class_image_path(tmp_path, "dogs", 0).write_bytes(png[:20])  # cut short by a crash: not listed
    assert write_metadata(tmp_path, CLASSES, seed=4, model_sha256="abc") == 3
    rows = [json.loads(line) for line in (tmp_path / "metadata.jsonl").read_text().splitlines()]
    assert rows[0] == {"file_name": "cats/000000.png", "label": "cats", "seed": 4, "index": 0, "model_sha256": "abc"}
    assert [r["file_name"] for r in rows] == ["cats/000000.png", "cats/000001.png", "rare/000000.png"]

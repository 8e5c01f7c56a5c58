"""The wheel carries the built-in model: generate and denoise work from an installed wheel, in an empty folder."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from helpers import environ_without_debug

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Build the wheel from this checkout and unpack it into a private site folder: (wheel, site).

    With build isolation: pip builds in a fresh environment holding only pyproject's [build-system] requires,
    so the build does not depend on whatever setuptools this venv happens to have (torch brings one)."""
    base = tmp_path_factory.mktemp("wheel")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(base), str(REPO)],
                           capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-3000:]
    wheel = next(base.glob("animevae-*.whl"))
    site = base / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    return wheel, site


def _run(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**environ_without_debug(), "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-m", "animevae", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.slow
def test_wheel_holds_the_builtin_model_and_its_licence(installed_wheel) -> None:
    wheel, _ = installed_wheel
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("encoder.onnx", "decoder.onnx", "denoiser.onnx", "FACES-LICENSE.md"):
        assert f"animevae/builtin/{name}" in names
    for name in ("index.html", "app.js", "style.css"):  # the explore page, served from the package
        assert f"animevae/explore/static/{name}" in names
    assert wheel.stat().st_size < 20 * 2**20
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(archive.read(n).decode() for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
    assert "License-Expression: MIT" in metadata.splitlines()


@pytest.mark.slow
def test_generate_and_denoise_from_the_installed_wheel(installed_wheel, tmp_path: Path) -> None:
    _, site = installed_wheel
    where = subprocess.run([sys.executable, "-c", "import animevae; print(animevae.__file__)"], cwd=tmp_path,
                           env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True, text=True, check=True)
    assert where.stdout.startswith(str(site))  # the wheel's copy, not this checkout

    generated = _run(site, tmp_path, "generate", "--count", "8", "--out", "g", "--grid", "g.png", "--device", "cpu")
    assert generated.returncode == 0, generated.stderr
    assert "model: built-in model" in generated.stderr
    pngs = sorted((tmp_path / "g").glob("*.png"))
    assert len(pngs) == 8
    with Image.open(pngs[0]) as image:
        assert image.size == (64, 64) and image.mode == "RGB"
    assert (tmp_path / "g.png").is_file()

    denoised = _run(site, tmp_path, "denoise", "g", "--out", "d", "--device", "cpu")
    assert denoised.returncode == 0, denoised.stderr
    assert len(list((tmp_path / "d").glob("*.png"))) == 8

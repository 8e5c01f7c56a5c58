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


# --- the package's structure ---------------------------------------------------------------------------------

PACKAGE = REPO / "animevae"
MAX_MODULE_LINES = 500
# The only doors from the torch-free side into animevae.training: the commands that need torch, each importing
# it inside its body, where training/__init__.py turns a missing torch into one error naming the extra.
TRAINING_ENTRY_POINTS = {("animevae.commands.training", "train"), ("animevae.commands.training", "export"),
                         ("animevae.commands.training", "evaluate"), ("animevae.commands.training", "train_denoiser")}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, known: set[str]) -> list[tuple[str, str | None]]:
    """(animevae module imported, the top-level function or class whose body imports it, or None at module
    level), for every import in the file. Importing a.b.c runs a and a.b first, so those count too."""
    import ast

    found = []
    for top in ast.parse(path.read_text(encoding="utf-8")).body:
        owner = top.name if isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else None
        for node in ast.walk(top):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path}: animevae imports by absolute names"
                # `from animevae import x` imports the module animevae.x where x is one
                names = [node.module or ""] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                prefixes = (".".join(parts[:i]) for i in range(1, len(parts) + 1))
                found += [(prefix, owner) for prefix in prefixes if prefix in known]
    return found


def _import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: {target for target, _ in _imports(path, known)} - {name} for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def test_no_module_is_longer_than_500_lines() -> None:
    long = {name: n for name, path in _modules().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long, f"split these modules along their jobs: {long}"


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_animevae_modules() -> None:
    """Module-level and function-level imports alike: a lazy import inside a cycle still ties the modules
    into one that cannot be read, tested or moved apart."""
    graph = _import_graph()
    assert {"animevae.commands.shared", "animevae.errors"} <= graph["animevae.cli"]  # the graph sees imports
    assert "animevae.training.train" in graph["animevae.commands.training"]  # function-level ones too
    assert not _cycles(graph)


def test_the_torch_free_side_reaches_training_only_through_the_cli_entry_points() -> None:
    modules = _modules()
    doors = set()
    for name, path in modules.items():
        if name == "animevae.training" or name.startswith("animevae.training."):
            continue
        for target, owner in _imports(path, set(modules)):
            if target == "animevae.training" or target.startswith("animevae.training."):
                doors.add((name, owner))
    outside = doors - TRAINING_ENTRY_POINTS
    assert not outside, f"animevae.training imported outside the entry points: {outside}"
    assert doors == TRAINING_ENTRY_POINTS  # each entry point still goes through the guarded package

"""The README's commands: every `animevae ...` line of its bash blocks parses, and most run on tiny data.

Each command runs through typer's CliRunner in a fresh folder holding what the README's examples name: `faces/`,
`noisy/`, `a.png`, `b.png` (tiny blob images) and `runs/faces10/`, a copy of the session's tiny trained and
exported run (the labelled one for `--class`, `--per-class` and `--balance`, with `--class` naming one of its
classes). Counts are capped (`--count` at 12, `--per-class` at 3) so each takes seconds; every flag stays as
written. `train` costs minutes at any size: it is only parsed, which checks every flag name, type and range
against the command.
"""

from __future__ import annotations

import ast
import inspect
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest
import typer

from animevae.cli import app
from helpers import LABELLED_COUNTS, assert_ok, blob_image, write_blobs

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
COUNT_CAPS = {"--count": 12, "--per-class": 3}
# Why a command is parsed, not run (a predicate on its arguments, and the reason).
PARSE_ONLY = {
    "train": "trains for minutes (the tiny trained run stands in for it)",
    "train-denoiser": "trains for minutes",
    "explore": "serves its page until Ctrl-C (tests/test_explore.py drives it in a browser)",
    "render": "needs a recipe the page saved (tests/test_explore.py renders one and compares the bytes)",
}


def readme_commands() -> list[list[str]]:
    """The arguments after `animevae` of every command in README.md's bash blocks, `torchrun ... -m animevae` too."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        for line in block.splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words[:1] == ["animevae"]:
                    commands.append(words[1:])
                elif "-m" in words and words[words.index("-m") + 1 :][:1] == ["animevae"]:
                    commands.append(words[words.index("-m") + 2 :])
    return commands


def parse_only_reason(args: list[str]) -> str | None:
    """Why this command is only parsed, or None when it runs."""
    return next((why for key, why in PARSE_ONLY.items() if key == args[0] or key in args), None)


def capped(args: list[str]) -> list[str]:
    """The same command with its image counts capped (COUNT_CAPS) and a class of the tiny labelled run for the
    README's (`--class`)."""
    out = list(args)
    for index, word in enumerate(out[:-1]):
        if word in COUNT_CAPS and out[index + 1].isdigit():
            out[index + 1] = str(min(int(out[index + 1]), COUNT_CAPS[word]))
        if word == "--class":
            out[index + 1] = next(iter(LABELLED_COUNTS))
    return out


def build_world(folder: Path, run_dir: Path | None) -> Path:
    """`folder` with the files the README's examples name; `run_dir` (if any) copied to runs/faces10."""
    write_blobs(folder / "faces", count=12, seed=7)  # faces the session runs never trained on (evaluate refuses those)
    write_blobs(folder / "noisy", count=3, seed=1)
    for name, seed in (("a.png", 2), ("b.png", 3)):
        blob_image(np.random.default_rng(seed)).save(folder / name)
    if run_dir is not None:
        shutil.copytree(run_dir, folder / "runs" / "faces10")
    return folder


COMMANDS = readme_commands()
IDS = [" ".join(args)[:60] for args in COMMANDS]


def test_the_readme_has_commands_of_every_kind() -> None:
    """The extraction finds the README's commands (an empty list would pass every test below)."""
    assert len(COMMANDS) >= 15, COMMANDS
    ran = [args for args in COMMANDS if parse_only_reason(args) is None]
    assert len(ran) >= 10, ran


def test_every_command_is_in_the_readme() -> None:
    """Each subcommand of the app appears in at least one README command line."""
    names = set(typer.main.get_command(app).commands)
    assert names - {args[0] for args in COMMANDS} == set()


def test_readme_fits_in_12_kb() -> None:
    assert README.stat().st_size <= 12 * 1024


@pytest.mark.parametrize("page", [README, *sorted((ROOT / "docs").glob("*.md"))], ids=lambda p: p.name)
def test_links_and_pictures_exist(page: Path) -> None:
    """Every relative link or picture of the README and of docs/*.md names a file of the repository."""
    for target in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
        if "://" not in target:
            assert (page.parent / target).exists(), f"{page.name}: {target}"
    for source in re.findall(r'<img src="([^"]+)"', page.read_text()):
        assert (page.parent / source).exists(), f"{page.name}: {source}"


@pytest.mark.parametrize("args", COMMANDS, ids=IDS)
def test_readme_command_parses(args: list[str], tmp_path: Path, monkeypatch) -> None:
    """Every flag the command uses is one its subcommand accepts, with a value of the right type and range."""
    monkeypatch.chdir(build_world(tmp_path, None))
    command = typer.main.get_command(app).commands[args[0]]
    command.make_context(args[0], list(args[1:]))


@pytest.mark.slow
@pytest.mark.parametrize("args", COMMANDS, ids=IDS)
def test_readme_command_runs(args: list[str], trained_run, labelled_run, runner, tmp_path: Path, monkeypatch) -> None:
    """The command, counts capped, exits 0 in a folder holding what it names."""
    if reason := parse_only_reason(args):
        pytest.skip(f"parsed only: {reason}")
    by_class = any(flag in args for flag in ("--class", "--per-class", "--balance"))
    monkeypatch.chdir(build_world(tmp_path, (labelled_run if by_class else trained_run).run_dir))
    assert_ok(runner.invoke(app, capped(args)))


def test_readme_python_api_binds() -> None:
    """The Python API block imports, and each call it makes binds to the called function's signature."""
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    tree = ast.parse(block)
    names: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            exec(compile(ast.Module([node], []), "README", "exec"), names)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    checked = 0
    for call in calls:
        function = names.get(call.func.id)
        if not callable(function) or call.func.id in {"Path"}:
            continue
        signature = inspect.signature(function)
        signature.bind(*[None] * len(call.args), **{k.arg: None for k in call.keywords})
        checked += 1
    assert checked >= 6, checked

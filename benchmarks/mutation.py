"""Mutation score of the modules where a silent bug loses data or misleads (mutmut; slow, not part of CI).

For each module named, mutmut (`pip install -e ".[mutation]"`) writes many small bugs into a copy of the
project, one at a time, and runs the tests of that module that reach the mutated function; a mutant the tests
do not fail on "survived". The score is killed / all mutants (a mutant no test reaches counts as survived).

    nice -n 19 python benchmarks/mutation.py fileio checkpoint   # or no names: all of MODULE_TESTS
    nice -n 19 python benchmarks/mutation.py shard --show        # also print each survivor's diff
    nice -n 19 python benchmarks/mutation.py training/data       # animevae/training/data.py (not a top-level data.py)

Each module runs in its own copy of the project (a temp folder), limited to the test files listed for it
below, with --max-children processes (default 1: the machine is shared). The working tree is not touched.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Each module's own test files: the ones written to protect it (tests that reach it only through a subprocess
# count for nothing here: mutmut sees which tests call a function in its own process). A "file::test" entry
# picks single tests of a slow file.
MODULE_TESTS = {
    "fileio": ["tests/test_fileio.py"],
    "outputs": ["tests/test_outputs.py", "tests/test_generate.py", "tests/test_denoise.py"],
    "shard": ["tests/test_shard.py", "tests/test_generate.py", "tests/test_denoise.py"],
    "checkpoint": ["tests/test_checkpoint.py"],
    "runtime": ["tests/test_runtime.py"],
    "prior": ["tests/test_generate.py", "tests/test_export.py"],
    "sampling": ["tests/test_sampling.py", "tests/test_generate.py", "tests/test_per_class.py"],
    # The labelled-data modules: labels read from folders and tables, kept aligned with the images through
    # prepare's filters, and the by-class generate tree.
    "labels": ["tests/test_labels.py", "tests/test_per_class.py", "tests/test_prepared_set.py"],
    # What was data.py: decoding (torch-free), the prepared-set format, and the training side's loading and splits.
    "images": ["tests/test_images.py", "tests/test_denoise.py"],
    "prepared_set": ["tests/test_prepared_set.py", "tests/test_labels.py"],
    "training/data": ["tests/test_training_data.py"],
    "per_class": ["tests/test_per_class.py", "tests/test_generate.py"],
    # Not test_evaluate_run_writes_a_complete_report (17 s) nor the CLI table (4 s): per mutant, they would make
    # this run take an hour on 2 cores. evaluate_run is still scored, by its held-out/copy-rate test and the
    # small-set tests.
    "evaluate": [f"tests/test_evaluate.py::{name}" for name in (
        "test_ssim_is_one_for_identical_images_and_drops_with_noise", "test_mean_pairwise_distance_of_copies_is_zero",
        "test_as_saved_rounds_to_the_8_bit_levels_a_png_holds",
        "test_style_of_reads_folders_then_name_prefixes", "test_ssim_matches_the_definition",
        "test_evaluate_scores_the_held_out_images_and_counts_copies_below_the_1st_percentile")]
    + ["tests/test_evaluate.py::test_evaluate_on_a_small_set_reports_what_it_can"],
    "nearest": ["tests/test_nearest.py"],
}
# Tests whose child process imports the mutated package as another user: mutmut's trampoline cannot load its
# configuration there, so the test fails on the unmutated code and mutmut would test nothing.
DESELECTED = ["tests/test_images.py::test_an_unreadable_file_is_skipped_as_no_read_permission_even_for_root_ci"]
KILLED = {"killed", "timeout", "segfault"}


def run_module(module: str, max_children: int, show: bool, tests_dir: Path) -> Counter[str]:
    """Run mutmut on animevae/MODULE.py (else animevae/training/MODULE.py) in a private copy of the project; return
    the count of each status."""
    with tempfile.TemporaryDirectory(prefix=f"mutation-{module.replace('/', '-')}-") as tmp:
        work = Path(tmp)
        shutil.copytree(REPO / "animevae", work / "animevae", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(tests_dir, work / "tests", ignore=shutil.ignore_patterns("__pycache__"))
        # An older tests folder (--tests) may lack some files: say so, since the score then rests on fewer tests.
        tests = [t for t in MODULE_TESTS[module] if (work / t.partition("::")[0]).is_file()]
        missing = sorted({t.partition("::")[0] for t in MODULE_TESTS[module]} - {t.partition("::")[0] for t in tests})
        if missing:
            print(f"{module}: not in {tests_dir}, so not run: {', '.join(missing)}", flush=True)
        source = module_source(work, module)
        (work / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text() + f"""
[tool.mutmut]
source_paths = ["animevae"]
only_mutate = ["{source}"]
pytest_add_cli_args_test_selection = {json.dumps(tests)}
pytest_add_cli_args = {json.dumps([arg for test in DESELECTED for arg in ("--deselect", test)])}
# Wall-clock limit per mutant: multiplier x (its tests' call time + constant), CPU twice that. mutmut's 15 x (t + 1) lets
# a mutant that loops forever hold the shared machine for 20 minutes; the constant covers what the call time
# leaves out (the session's fixtures), so a slow but finite mutant is not taken for a loop. Timeouts count as
# killed: each is listed below, to check that it really loops.
timeout_multiplier = 5.0
timeout_constant = 20.0
""")
        mutmut = [sys.executable, "-m", "mutmut"]
        # The session's trained runs (tests/conftest.py: trained_run and labelled_run, each a train + export) are
        # made once, unmutated, and copied into each mutant's session. A mutant is then judged by the tests, not
        # by a fixture that trains or exports through it: for checkpoint, prior, runtime, labels and data a few
        # mutants may survive here that the full suite kills in those fixtures, so their score is a floor.
        # One OpenMP thread: mutmut forks each mutant from a server that has imported torch, and a forked child
        # whose parent had started OpenMP threads hangs in its first parallel loop (a false "timeout").
        env = {**os.environ, "ANIMEVAE_TEST_RUN_CACHE": str(work / "trained-run-cache"), "OMP_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1"}
        started = time.monotonic()
        ran = subprocess.run([*mutmut, "run", "--max-children", str(max_children)], cwd=work, capture_output=True,
                             text=True, env=env)
        listing = subprocess.run([*mutmut, "results", "--all", "true"], cwd=work, capture_output=True,
                                 text=True).stdout
        statuses = {name: status for name, status in re.findall(r"^\s*(\S+__mutmut_\d+): (.+?)\s*$", listing, re.M)}
        counts = Counter(statuses.values())
        if counts["not checked"] == len(statuses):  # mutmut stopped before testing any mutant: say why
            print(f"{module}: mutmut tested nothing (exit {ran.returncode}):\n{(ran.stdout + ran.stderr)[-3000:]}")
        killed = sum(counts[s] for s in KILLED)
        total = sum(counts.values())
        score = f"{killed / total:.1%}" if total else "n/a"
        print(f"{module}: {killed}/{total} killed ({score}) in {time.monotonic() - started:.0f}s  "
              + ", ".join(f"{status} {count}" for status, count in sorted(counts.items())), flush=True)
        for name, status in sorted(statuses.items()):
            if status not in KILLED or status == "timeout":
                print(f"  {status}: {name}")
                if show:
                    diff = _mutant_diff(work / "mutants" / source, name) or subprocess.run(
                        [*mutmut, "show", name], cwd=work, capture_output=True, text=True).stdout
                    print("    " + "\n    ".join(diff.strip().splitlines()))
        return counts


def module_source(root: Path, module: str) -> str:
    """The file of `module` under `root`, relative to it: animevae/MODULE.py, else the torch side's
    animevae/training/MODULE.py ("training/data" names the latter's data.py outright)."""
    for folder in ("animevae", "animevae/training"):
        if (root / folder / f"{module}.py").is_file():
            return f"{folder}/{module}.py"
    raise SystemExit(f"{module}: no animevae/{module}.py or animevae/training/{module}.py under {root}")


def _mutant_diff(mutated_file: Path, name: str) -> str:
    """The changed lines of mutant `name`, read from mutmut's mutated copy of the module (`mutmut show` starts
    a process per mutant: minutes for a module on a busy machine); "" when the file does not read as expected."""
    function = name.rsplit(".", 1)[-1]
    original = re.sub(r"__mutmut_\d+$", "__mutmut_orig", function)
    text = mutated_file.read_text() if mutated_file.is_file() else ""

    def body(label: str) -> list[str]:
        found = re.search(rf"^[ ]*def {re.escape(label)}\(.*?(?=^[ ]*(?:def |class |@)|^[^\s)]|\Z)", text, re.M | re.S)
        return found.group(0).splitlines()[1:] if found else []

    before, after = body(original), body(function)
    if not before or not after:
        return ""
    return "\n".join(line for line in difflib.unified_diff(before, after, lineterm="", n=0)
                     if line[:1] in "+-" and line[:3] not in ("+++", "---"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("modules", nargs="*", help=f"modules of animevae: {', '.join(MODULE_TESTS)} (default: all)")
    parser.add_argument("--max-children", type=int, default=1, help="mutants tested at once")
    parser.add_argument("--show", action="store_true", help="print the diff of every survivor")
    parser.add_argument("--tests", type=Path, default=REPO / "tests",
                        help="the tests folder to score (say, an older one from `git archive REV tests`)")
    args = parser.parse_args()
    unknown = [m for m in args.modules if m not in MODULE_TESTS]
    if unknown:
        parser.error(f"unknown module(s): {', '.join(unknown)}; choose from {', '.join(MODULE_TESTS)}")
    total: Counter[str] = Counter()
    for module in args.modules or list(MODULE_TESTS):
        total += run_module(module, args.max_children, args.show, args.tests)
    if len(args.modules or MODULE_TESTS) > 1 and sum(total.values()):
        killed = sum(total[s] for s in KILLED)
        print(f"all: {killed}/{sum(total.values())} killed ({killed / sum(total.values()):.1%})")


if __name__ == "__main__":
    main()

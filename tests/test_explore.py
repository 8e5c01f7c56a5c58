"""`animevae explore` and `animevae render`: the page in a real headless browser, recipes through the CLI, the
command's own checks. All on the built-in model (64x64, fast on 2 cores) unless a labelled model is the point."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import threading
from functools import partialmethod
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from animevae.cli import app
from animevae.explore.recipe import Move, Painter, Recipe, read_recipe, recipe_from_dict
from animevae.explore.server import ExploreServer, start_server
from animevae.explore.studio import Studio
from animevae.model_files import ModelSet, open_models
from browser import Browser
from explore_fixtures import BUILTIN, browser, models, server  # noqa: F401 - fixtures
from helpers import blob_image

# ------------------------------------------------------------------ the page in a real browser


def test_browser_load_redraw_pick_steer_interpolate_upload_save(browser: Browser, server: ExploreServer,
                                                                 tmp_path: Path, runner) -> None:
    browser.open(server.url)
    assert browser.evaluate("document.querySelectorAll('#grid img').length") == 16
    browser.evaluate("document.getElementById('seed').value = 7; document.getElementById('redraw').click()")
    browser.wait_for("explore.grid && explore.grid[0].recipe.start.seed === 7")

    browser.evaluate("document.querySelectorAll('#grid img')[3].click()")
    assert browser.evaluate("explore.picked.recipe.start.index") == 3
    browser.evaluate("document.getElementById('set-a').click()")
    browser.evaluate("const s = document.getElementById('slider-0'); s.value = 1.5; s.dispatchEvent(new Event('input'))")
    browser.wait_for("explore.renders >= 1 && explore.rendered.moves.length === 1")
    assert browser.evaluate("explore.rendered.moves[0]") == {"direction": 0, "amount": 1.5}
    assert browser.evaluate("document.getElementById('face').src").startswith("blob:")

    browser.evaluate("document.getElementById('set-b').click(); document.getElementById('steps').value = 5;"
                     "document.getElementById('interpolate').click()")
    browser.wait_for("explore.interpolation.length === 5")
    assert browser.evaluate("explore.interpolation[4].recipe.origin") == "interpolation"

    browser.evaluate("document.getElementById('vary').click()")
    browser.wait_for("explore.variations.length === 8")

    face = tmp_path / "mine.png"
    blob_image(np.random.default_rng(3), 80, 64).save(face)
    browser.set_file("#upload", face)
    browser.wait_for("explore.picked && explore.picked.recipe.origin === 'upload'")
    browser.evaluate("const t = document.getElementById('slider-2'); t.value = -0.7; t.dispatchEvent(new Event('input'))")
    browser.wait_for("explore.rendered.moves.length === 1 && explore.rendered.moves[0].direction === 2")

    browser.evaluate("document.getElementById('save-name').value = 'keeper'; document.getElementById('save').click()")
    assert browser.wait_for("explore.saved.length && explore.saved") == ["keeper.png", "keeper.json"]
    saved = tmp_path / "out"
    rendered = tmp_path / "rendered.png"
    done = runner.invoke(app, ["render", str(saved / "keeper.json"), "--out", str(rendered), *BUILTIN])
    assert done.exit_code == 0, done.output
    assert rendered.read_bytes() == (saved / "keeper.png").read_bytes()
    assert read_recipe(saved / "keeper.json").moves[0].amount == -0.7

    browser.evaluate("document.getElementById('save-interpolation').click()")  # the name moved on to keeper-2
    browser.wait_for("explore.saved.length === 10")
    assert sorted(p.name for p in saved.glob("keeper-2_*.png")) == [f"keeper-2_{i:02d}.png" for i in range(5)]
    done = runner.invoke(app, ["render", str(saved / "keeper-2_02.json"), "--out", str(rendered), "--overwrite", *BUILTIN])
    assert done.exit_code == 0, done.output
    assert rendered.read_bytes() == (saved / "keeper-2_02.png").read_bytes()


def test_browser_bad_upload_bad_save_name_drop_and_keyboard(browser: Browser, server: ExploreServer, tmp_path: Path) -> None:
    browser.open(server.url)
    bad = tmp_path / "notes.png"
    bad.write_text("not a picture")
    browser.set_file("#upload", bad)
    message = browser.wait_for("document.getElementById('message').className === 'error' && "
                               "document.getElementById('message').textContent")
    assert message.startswith("error: the uploaded file: not an image") and "hint: upload a PNG" in message
    browser.evaluate("document.querySelectorAll('#grid img')[0].click();"
                     "document.getElementById('save-name').value = '../escape'; document.getElementById('save').click()")
    browser.wait_for("document.getElementById('message').textContent.includes(\"save name '../escape' is refused\")")
    assert not (tmp_path / "escape.png").exists() and not (tmp_path / "out").exists()
    assert browser.evaluate("document.querySelectorAll('#grid img').length") == 16  # the page still works
    good = tmp_path / "dropped.png"
    blob_image(np.random.default_rng(1), 64, 64).save(good)
    browser.drop_file("#drop", good)
    browser.wait_for("explore.picked && explore.picked.recipe.origin === 'upload'")
    assert "dropped.png encoded" in browser.evaluate("document.getElementById('message').textContent")
    browser.evaluate("document.querySelectorAll('#grid img')[5].focus()")
    browser.send("Input.dispatchKeyEvent", type="keyDown", key="Enter", code="Enter", windowsVirtualKeyCode=13)
    assert browser.evaluate("explore.picked.recipe.start.index") == 5  # faces are picked from the keyboard too


# Moves slider 1 through 21 positions, 20 ms apart, then waits for the last render; sets window.finished.
_SLIDE_LOOP = """window.finished = false; (async () => {
  const slider = document.getElementById('slider-0');
  for (let i = 0; i <= 20; i++) {
    slider.value = (i / 10 - 1).toFixed(1);
    slider.dispatchEvent(new Event('input'));
    await new Promise((done) => setTimeout(done, 20));
  }
  while (rendering) await new Promise((done) => setTimeout(done, 20));
  window.finished = true;
})(); 0"""


def test_four_tabs_steer_at_once_and_each_ends_on_its_own_face(browser: Browser, server: ExploreServer) -> None:
    tabs = [browser, *(browser.new_tab() for _ in range(3))]
    for index, tab in enumerate(tabs):
        tab.open(server.url)
        tab.evaluate(f"document.querySelectorAll('#grid img')[{index}].click()")
    for tab in tabs:
        tab.evaluate(_SLIDE_LOOP)
    for index, tab in enumerate(tabs):
        tab.wait_for("window.finished", timeout=120)
        assert tab.evaluate("explore.rendered.moves") == [{"direction": 0, "amount": 1}]
        assert tab.evaluate("explore.rendered.start.index") == index
        assert tab.evaluate("explore.renders") >= 2  # it kept up: renders landed while the slider moved
        assert tab.evaluate("document.getElementById('message').hidden")  # no error shown


@pytest.mark.slow
def test_browser_class_picker_on_a_labelled_model(browser: Browser, labelled_run, tmp_path: Path) -> None:
    labelled = open_models(labelled_run.runs_dir, labelled_run.run_dir.name, None, ("decoder", "prior", "encoder"), "cpu")
    served = start_server(Studio(labelled, tmp_path / "out"), labelled.origin)
    threading.Thread(target=served.serve_forever, daemon=True).start()
    try:
        browser.open(served.url)
        assert browser.evaluate("[...document.getElementById('class').options].map(o => o.value)") == ["cats", "dogs",
                                                                                                      "rare"]
        assert browser.evaluate("explore.grid[0].recipe.start.class") == "cats"
        browser.evaluate("const c = document.getElementById('class'); c.value = 'rare';"
                         "c.dispatchEvent(new Event('change'))")
        browser.wait_for("explore.grid[0].recipe.start.class === 'rare'")
        browser.evaluate("document.querySelectorAll('#grid img')[1].click(); document.getElementById('save').click()")
        browser.wait_for("explore.saved.length === 2")
        assert read_recipe(tmp_path / "out" / "face-001.json").class_name == "rare"
        assert (tmp_path / "out" / "face-001.png").read_bytes() == Painter(labelled).png(
            read_recipe(tmp_path / "out" / "face-001.json"))
    finally:
        served.shutdown()
        served.server_close()



# ------------------------------------------------------------------ recipes and render


def test_a_browser_that_never_listens_is_stopped(tmp_path: Path, monkeypatch) -> None:
    import browser as driver

    fake = tmp_path / "chromium"
    fake.write_text("#!/bin/sh\nexec sleep 600\n")  # starts, never opens its DevTools port
    fake.chmod(0o755)
    started: list[subprocess.Popen] = []
    popen = subprocess.Popen
    monkeypatch.setattr(driver.subprocess, "Popen", lambda *a, **k: started.append(popen(*a, **k)) or started[-1])
    monkeypatch.setattr(driver.Browser, "_devtools_port", partialmethod(driver.Browser._devtools_port, timeout=0.5))
    try:
        with pytest.raises(driver.BrowserError, match="did not open its DevTools port"):
            driver.Browser(str(fake))
        assert started[0].poll() is not None  # stopped, not left running after the test session
    finally:
        started[0].kill()  # when the driver is broken, this test must not leak the process either
        started[0].wait()


def test_render_refuses_another_models_recipe_and_malformed_files(runner, tmp_path: Path, models: ModelSet) -> None:
    other = Recipe("0" * 64, seed=1)
    (tmp_path / "other.json").write_text(other.to_json())
    done = runner.invoke(app, ["render", str(tmp_path / "other.json"), "--out", str(tmp_path / "x.png"), *BUILTIN])
    assert done.exit_code == 1 and "saved with another model" in done.output and "hint: pass the model" in done.output
    for text, expected in [("{", "is not JSON"), ('{"a": 1}', "not an animevae recipe"),
                           (json.dumps({**Recipe(Painter(models).model_sha256, seed=1).to_dict(),
                                        "moves": [{"direction": 0, "amount": 1e9}]}), "at most 10"),
                           (json.dumps({**Recipe(Painter(models).model_sha256, seed=1).to_dict(),  # past any float
                                        "moves": [{"direction": 0, "amount": 10**400}]}), "must be a finite number")]:
        (tmp_path / "bad.json").write_text(text)
        done = runner.invoke(app, ["render", str(tmp_path / "bad.json"), "--out", str(tmp_path / "x.png"), *BUILTIN])
        assert done.exit_code == 1 and expected in done.output and "Traceback" not in done.output, done.output
    assert not (tmp_path / "x.png").exists()


def test_a_saved_recipe_renders_the_same_bytes(models: ModelSet, tmp_path: Path, runner) -> None:
    studio = Studio(models, tmp_path / "out")
    start = studio.grid(seed=4, temperature=0.8, count=3)[2].recipe
    steered = recipe_from_dict({**start.to_dict(), "moves": [{"direction": 1, "amount": 0.9},
                                                            {"direction": 5, "amount": -2.2}]})
    variation = studio.variations(steered, strength=1.0, seed=3, count=2)[1].recipe
    studio.save(variation, "varied")
    done = runner.invoke(app, ["render", str(tmp_path / "out" / "varied.json"), "--out", str(tmp_path / "r.png"), *BUILTIN])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "r.png").read_bytes() == (tmp_path / "out" / "varied.png").read_bytes()
    assert studio.render(steered) != studio.render(start)  # the moves change the face


def test_grid_image_i_is_generates_image_i(models: ModelSet, tmp_path: Path, runner) -> None:
    face = Studio(models, tmp_path).grid(seed=9, temperature=1.0, count=3)[2]
    done = runner.invoke(app, ["generate", "--count", "3", "--seed", "9", "--out", str(tmp_path / "g"), "-q", *BUILTIN])
    assert done.exit_code == 0, done.output
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(face.png))), np.asarray(Image.open(tmp_path / "g" / "000002.png")))


@pytest.mark.slow
def test_a_labelled_model_draws_by_class(labelled_run, tmp_path: Path) -> None:
    labelled = open_models(labelled_run.runs_dir, labelled_run.run_dir.name, None, ("decoder", "prior", "encoder"), "cpu")
    studio = Studio(labelled, tmp_path)
    cats, rare = studio.grid(0, 1.0, 2, "cats"), studio.grid(0, 1.0, 2, "rare")
    assert cats[0].recipe.class_name == "cats" and cats[0].png != rare[0].png
    assert studio.render(cats[1].recipe) == Painter(labelled).png(read_recipe_text(cats[1].recipe.to_json(), tmp_path))


def read_recipe_text(text: str, folder: Path) -> Recipe:
    """A recipe through its file form."""
    (folder / "r.json").write_text(text)
    return read_recipe(folder / "r.json")


@pytest.mark.slow
def test_render_finds_the_model_that_saved_the_recipe(labelled_run, models: ModelSet, tmp_path: Path, runner) -> None:
    labelled = open_models(labelled_run.runs_dir, labelled_run.run_dir.name, None, ("decoder", "prior"), "cpu")
    runs = ["--runs-dir", str(labelled_run.runs_dir), "--device", "cpu"]
    for name, opened in (("builtin", models), ("labelled", labelled)):  # the newest exported run is the labelled one
        studio = Studio(opened, tmp_path / "out")
        studio.save(studio.grid(5, 1.0, 1)[0].recipe, name)
        done = runner.invoke(app, ["render", str(tmp_path / "out" / f"{name}.json"), "--out", str(tmp_path / f"{name}.png"),
                                   *runs])
        assert done.exit_code == 0, done.output
        assert (tmp_path / f"{name}.png").read_bytes() == (tmp_path / "out" / f"{name}.png").read_bytes()
    (tmp_path / "other.json").write_text(Recipe("0" * 64, seed=1).to_json())
    done = runner.invoke(app, ["render", str(tmp_path / "other.json"), "--out", str(tmp_path / "o.png"), *runs])
    assert done.exit_code == 1 and "saved with another model" in done.output


@pytest.mark.slow
def test_render_refuses_a_seed_drawn_through_another_latent_prior(trained_run, tmp_path: Path, runner) -> None:
    # A copy of the export without its prior.onnx has the same decoder, and samples seeds from the mixture instead.
    with_prior, without = tmp_path / "with", tmp_path / "without"
    shutil.copytree(trained_run.export_dir, with_prior)
    shutil.copytree(trained_run.export_dir, without, ignore=shutil.ignore_patterns("prior.onnx"))
    studio = Studio(open_models(tmp_path, None, str(with_prior), ("decoder", "prior"), "cpu"), tmp_path / "out")
    drawn = studio.grid(2, 1.0, 1)[0].recipe
    studio.save(drawn, "drawn")
    studio.save(Recipe(drawn.model_sha256, latent=tuple(float(v) for v in studio.painter.latent(drawn))), "given")
    for name, model, code in (("drawn", with_prior, 0), ("given", without, 0), ("drawn", without, 1)):
        done = runner.invoke(app, ["render", str(tmp_path / "out" / f"{name}.json"), "--out", str(tmp_path / "r.png"),
                                   "--overwrite", "--model", str(model), "--device", "cpu"])
        assert done.exit_code == code, done.output
        if code == 0:  # a given latent needs no prior
            assert (tmp_path / "r.png").read_bytes() == (tmp_path / "out" / f"{name}.png").read_bytes()
    assert "drawn through another latent prior" in done.output and "hint:" in done.output


# ------------------------------------------------------------------ the command


def test_explore_prints_its_address_and_warns_off_loopback(runner, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(ExploreServer, "serve_forever", lambda self: None)
    done = runner.invoke(app, ["explore", "--port", "0", "--out", str(tmp_path / "out"), *BUILTIN])
    assert done.exit_code == 0, done.output
    assert "explore: http://127.0.0.1:" in done.output and "WARNING" not in done.output
    done = runner.invoke(app, ["explore", "--port", "0", "--host", "0.0.0.0", "--out", str(tmp_path / "out"), *BUILTIN])
    assert done.exit_code == 0 and "WARNING: listening on 0.0.0.0" in done.output


def test_explore_open_flag_opens_the_printed_address(runner, tmp_path: Path, monkeypatch) -> None:
    opened: list[str] = []
    monkeypatch.setattr(ExploreServer, "serve_forever", lambda self: None)
    monkeypatch.setattr("webbrowser.open", opened.append)
    done = runner.invoke(app, ["explore", "--port", "0", "--open", "--out", str(tmp_path / "out"), *BUILTIN])
    assert done.exit_code == 0 and len(opened) == 1 and f"explore: {opened[0]}" in done.output


def test_explore_without_an_encoder_still_browses(runner, tmp_path: Path, monkeypatch) -> None:
    from animevae.model_files import BUILTIN_DIR

    folder = tmp_path / "decoder-only"
    folder.mkdir()
    (folder / "decoder.onnx").write_bytes((BUILTIN_DIR / "decoder.onnx").read_bytes())
    monkeypatch.setattr(ExploreServer, "serve_forever", lambda self: None)
    done = runner.invoke(app, ["explore", "--port", "0", "--model", str(folder), "--device", "cpu"])
    assert done.exit_code == 0, done.output
    models = open_models(Path("runs"), None, str(folder), ("decoder", "prior"), "cpu")
    studio = Studio(models, tmp_path / "out")
    face = studio.grid(0, 1.0, 1)[0]
    with pytest.raises(Exception, match="variations need the encoder"):
        studio.variations(face.recipe, 1.0, 0, 2)
    assert studio.render(face.recipe) == face.png


def test_explore_refuses_a_taken_port_and_a_file_as_out(runner, server: ExploreServer, tmp_path: Path) -> None:
    done = runner.invoke(app, ["explore", "--port", str(server.port), "--out", str(tmp_path / "o"), *BUILTIN])
    assert done.exit_code == 1 and f"cannot listen on 127.0.0.1:{server.port}" in done.output and "hint:" in done.output
    (tmp_path / "file").write_text("x")
    done = runner.invoke(app, ["explore", "--out", str(tmp_path / "file"), *BUILTIN])
    assert done.exit_code == 1 and "is a file, not a folder" in done.output


def test_explore_and_render_never_import_torch(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['torch'] = None\n"
            "from pathlib import Path\nfrom animevae.cli import app\nfrom animevae.explore.studio import Studio\n"
            "from animevae.model_files import open_models\n"
            "models = open_models(Path('runs'), None, 'builtin', ('decoder', 'prior', 'encoder'), 'cpu')\n"
            f"studio = Studio(models, Path({str(tmp_path)!r}))\n"
            "face = studio.grid(0, 1.0, 2)[0]\nstudio.variations(face.recipe, 1.0, 0, 2)\n"
            "studio.interpolate(face.recipe, face.recipe, 3)\nstudio.save(face.recipe, 'x')\n"
            "from typer.testing import CliRunner\n"
            f"done = CliRunner().invoke(app, ['render', {str(tmp_path / 'x.json')!r}, '--out', "
            f"{str(tmp_path / 'r.png')!r}, '--model', 'builtin', '--device', 'cpu'])\n"
            "assert done.exit_code == 0, done.output\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stderr


def test_the_benchmark_runs_quick() -> None:
    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_explore.py"
    done = subprocess.run([sys.executable, str(bench), "--quick"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "slider move, request to PNG bytes (builtin, 5 moves" in done.stdout


def test_explore_stops_on_ctrl_c_and_says_what_next(runner, tmp_path: Path, monkeypatch) -> None:
    def interrupted(self: ExploreServer) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(ExploreServer, "serve_forever", interrupted)
    done = runner.invoke(app, ["explore", "--port", "0", "--out", str(tmp_path / "out"), *BUILTIN])
    assert done.exit_code == 0 and f"next: animevae render {tmp_path / 'out'}/NAME.json" in done.output


def test_sliders_walk_traverses_directions(models: ModelSet) -> None:
    from animevae.latent import traversal_latents

    painter = Painter(models)
    mean = tuple(float(v) for v in models.info.mixture.mean.astype(np.float32))
    grid, _ = traversal_latents(models.info.mixture, components=3, steps=5, span=2.0)  # rows: direction r, t = -2 .. 2
    for direction in range(3):
        for step, amount in enumerate((-2.0, -1.0, 0.0, 1.0, 2.0)):
            recipe = Recipe(painter.model_sha256, latent=mean, moves=(Move(direction, amount),))
            np.testing.assert_allclose(painter.latent(recipe), grid[direction * 5 + step], atol=1e-5)

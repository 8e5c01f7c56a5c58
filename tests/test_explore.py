"""`animevae explore` and `animevae render`: the page in a real headless browser, the server's refusals over plain
HTTP, recipes through the CLI, and four clients at once. All on the built-in model (64x64, fast on 2 cores)."""

from __future__ import annotations

import http.client
import io
import json
import os
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from animevae.cli import app
from animevae.explore.recipe import Painter, Recipe, read_recipe, recipe_from_dict
from animevae.explore.server import ExploreServer, allowed_hosts, start_server
from animevae.explore.studio import MAX_UPLOAD_BYTES, Studio
from animevae.model_files import ModelSet, open_models
from browser import Browser, find_browser
from helpers import blob_image

BUILTIN = ["--model", "builtin", "--device", "cpu"]


@pytest.fixture(scope="module")
def models() -> ModelSet:
    """The built-in model's decoder and encoder on the CPU, opened once for the module."""
    return open_models(Path("runs"), None, "builtin", ("decoder", "encoder"), "cpu")


@pytest.fixture
def server(models: ModelSet, tmp_path: Path) -> Iterator[ExploreServer]:
    """An explore server on a free port, saving into tmp_path/out, serving from a thread."""
    served = start_server(Studio(models, tmp_path / "out"), models.origin)
    thread = threading.Thread(target=served.serve_forever, daemon=True)
    thread.start()
    yield served
    served.shutdown()
    served.server_close()


@pytest.fixture
def browser() -> Iterator[Browser]:
    """A headless Chromium; skipped without one, except under CI (CI=true), where it must be there."""
    executable = find_browser()
    try:
        import websocket  # noqa: F401 - the driver: websocket-client, in the dev extra
    except ImportError:
        executable = None
    if executable is None:
        reason = "no headless browser: install chromium (apt-get install chromium) and websocket-client (the dev extra)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test: {reason}")
        pytest.skip(reason)
    driver = Browser(executable)
    yield driver
    driver.close()


def call(server: ExploreServer, method: str, path: str, body: bytes | dict[str, Any] | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One HTTP request to the server (Host 127.0.0.1:PORT unless `headers` say otherwise): (status, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    sent = {"Host": f"127.0.0.1:{server.port}", **(headers or {})}
    try:
        connection.request(method, path, body=data, headers=sent)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def error_of(answer: tuple[int, bytes]) -> str:
    """The `error` line of a refusal."""
    return json.loads(answer[1])["error"]


def png_bytes(image: Image.Image) -> bytes:
    """An image as PNG file bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (with a tiny, wrong body): what a decompression bomb
    looks like before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


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


def test_browser_shows_a_bad_upload_and_a_bad_save_name(browser: Browser, server: ExploreServer, tmp_path: Path) -> None:
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


# ------------------------------------------------------------------ refusals over HTTP, the server still running


def test_bad_uploads_get_clear_messages_and_the_server_keeps_serving(server: ExploreServer) -> None:
    truncated = png_bytes(blob_image(np.random.default_rng(0), 64, 64))
    cases = {
        b"just some text": "not an image Pillow can read",
        huge_png_header(20_000, 20_000): "refused as a decompression bomb: Image size (400000000 pixels)",
        huge_png_header(7_000, 7_000): "image claims 7000x7000 pixels",
        truncated[: len(truncated) // 2]: "broken image",
    }
    for data, expected in cases.items():
        answer = call(server, "POST", "/api/upload", data, {"Content-Type": "application/octet-stream"})
        assert answer[0] == 400 and expected in error_of(answer), answer
    status, body = call(server, "POST", "/api/upload", truncated, {"Content-Type": "application/octet-stream"})
    assert status == 200 and json.loads(body)["recipe"]["origin"] == "upload"


def test_an_oversized_upload_is_refused_before_it_is_read(server: ExploreServer) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.putrequest("POST", "/api/upload", skip_host=True)
    connection.putheader("Host", f"127.0.0.1:{server.port}")
    connection.putheader("Content-Length", str(MAX_UPLOAD_BYTES + 1))
    connection.endheaders()  # no body follows: the answer must come without it
    response = connection.getresponse()
    assert response.status == 413 and "at most" in json.loads(response.read())["error"]
    connection.close()
    assert call(server, "GET", "/api/info")[0] == 200


def test_foreign_host_and_origin_are_refused(server: ExploreServer) -> None:
    for host in ("evil.example:80", f"evil.example:{server.port}", "127.0.0.1", f"127.0.0.2:{server.port}", ""):
        answer = call(server, "GET", "/", headers={"Host": host})
        assert answer[0] == 403 and "is not this server's address" in error_of(answer), host
    for host in (f"localhost:{server.port}", f"[::1]:{server.port}", f"LOCALHOST:{server.port}"):
        assert call(server, "GET", "/", headers={"Host": host})[0] == 200, host
    answer = call(server, "POST", "/api/grid", {"seed": 0}, {"Origin": "http://evil.example"})
    assert answer[0] == 403 and "requests from 'http://evil.example' are refused" in error_of(answer)
    assert call(server, "POST", "/api/grid", {"seed": 0, "count": 1},
                {"Origin": f"http://127.0.0.1:{server.port}"})[0] == 200


def test_allowed_hosts_with_host_option() -> None:
    assert allowed_hosts("127.0.0.1", 8765) == {"127.0.0.1:8765", "localhost:8765", "[::1]:8765"}
    assert "192.168.1.5:9000" in allowed_hosts("192.168.1.5", 9000)
    assert "localhost" in allowed_hosts("127.0.0.1", 80)  # browsers leave out the default port


def test_save_names_are_plain_and_saves_stay_under_out(server: ExploreServer, tmp_path: Path) -> None:
    grid = json.loads(call(server, "POST", "/api/grid", {"seed": 1, "count": 2})[1])["faces"]
    recipe = grid[0]["recipe"]
    for name in ("../escape", "a/b", "/tmp/abs", ".hidden", "x.png", "", "a" * 65, "na\x00me", "..\\win"):
        answer = call(server, "POST", "/api/save", {"recipe": recipe, "name": name})
        assert answer[0] == 400 and "is refused" in error_of(answer), name
    assert not (tmp_path / "out").exists() and not (tmp_path / "escape.png").exists()
    assert call(server, "POST", "/api/save", {"recipe": recipe, "name": "first"})[0] == 200
    answer = call(server, "POST", "/api/save", {"recipe": grid[1]["recipe"], "name": "first"})
    assert answer[0] == 400 and "first.png already exists" in error_of(answer)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["first.json", "first.png"]


def test_unknown_paths_and_malformed_requests_are_clear(server: ExploreServer) -> None:
    for path in ("/../../etc/passwd", "/static/../server.py", "/index.html"):
        answer = call(server, "GET", path)
        assert answer[0] == 404 and "no page at" in error_of(answer)
    cases = [("/api/grid", b"{not json", "not JSON"), ("/api/grid", b"[1]", "not a JSON object"),
             ("/api/grid", b'{"seed": -1}', "--seed must be 0 or more"),
             ("/api/grid", b'{"seed": "x"}', "'seed' must be a int"),
             ("/api/render", b'{"recipe": {"animevae_recipe": 1}}', "model_sha256"),
             ("/api/nothing", b"{}", "no action at")]
    for path, body, expected in cases:
        answer = call(server, "POST", path, body, {"Content-Type": "application/json"})
        assert answer[0] in (400, 404) and expected in error_of(answer), (path, answer)
    assert call(server, "GET", "/api/info")[0] == 200


def test_four_clients_at_once_all_get_their_faces(server: ExploreServer, models: ModelSet) -> None:
    grid = json.loads(call(server, "POST", "/api/grid", {"seed": 2, "count": 4})[1])["faces"]
    painter = Painter(models)
    wanted, results, failures = {}, {}, []
    for client, face in enumerate(grid):
        for step in range(6):
            recipe = {**face["recipe"], "moves": [{"direction": client, "amount": step / 2 - 1.5}]}
            wanted[client, step] = painter.png(recipe_from_dict(recipe))

    def tab(client: int) -> None:
        try:
            for step in range(6):
                recipe = {**grid[client]["recipe"], "moves": [{"direction": client, "amount": step / 2 - 1.5}]}
                status, body = call(server, "POST", "/api/render", {"recipe": recipe})
                results[client, step] = body if status == 200 else status
                assert call(server, "GET", "/api/info")[0] == 200
        except Exception as error:  # noqa: BLE001 - reported below, from the test's thread
            failures.append(error)

    tabs = [threading.Thread(target=tab, args=(client,)) for client in range(4)]
    for thread in tabs:
        thread.start()
    for thread in tabs:
        thread.join(timeout=120)
    assert not failures and not any(t.is_alive() for t in tabs)
    assert results == wanted


# ------------------------------------------------------------------ recipes and render


def test_render_refuses_another_models_recipe_and_malformed_files(runner, tmp_path: Path, models: ModelSet) -> None:
    other = Recipe("0" * 64, seed=1)
    (tmp_path / "other.json").write_text(other.to_json())
    done = runner.invoke(app, ["render", str(tmp_path / "other.json"), "--out", str(tmp_path / "x.png"), *BUILTIN])
    assert done.exit_code == 1 and "saved with another model" in done.output and "hint: pass the model" in done.output
    for text, expected in [("{", "is not JSON"), ('{"a": 1}', "not an animevae recipe"),
                           (json.dumps({**Recipe(Painter(models).model_sha256, seed=1).to_dict(),
                                        "moves": [{"direction": 0, "amount": 1e9}]}), "at most 10")]:
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
    labelled = open_models(labelled_run.runs_dir, labelled_run.run_dir.name, None, ("decoder", "encoder"), "cpu")
    studio = Studio(labelled, tmp_path)
    cats, rare = studio.grid(0, 1.0, 2, "cats"), studio.grid(0, 1.0, 2, "rare")
    assert cats[0].recipe.class_name == "cats" and cats[0].png != rare[0].png
    assert studio.render(cats[1].recipe) == Painter(labelled).png(read_recipe_text(cats[1].recipe.to_json(), tmp_path))


def read_recipe_text(text: str, folder: Path) -> Recipe:
    """A recipe through its file form."""
    (folder / "r.json").write_text(text)
    return read_recipe(folder / "r.json")


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
    models = open_models(Path("runs"), None, str(folder), ("decoder",), "cpu")
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
            "models = open_models(Path('runs'), None, 'builtin', ('decoder', 'encoder'), 'cpu')\n"
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


def test_a_bug_is_one_line_and_a_500_and_the_server_goes_on(server: ExploreServer, monkeypatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(Studio, "grid", broken)
    answer = call(server, "POST", "/api/grid", {"seed": 0})
    assert answer[0] == 500 and error_of(answer) == "internal error: RuntimeError: boom"
    assert call(server, "GET", "/api/info")[0] == 200


def test_deep_or_huge_json_is_not_json_not_a_bug(server: ExploreServer, tmp_path: Path, runner) -> None:
    for body in (b"[" * 100_000, b'{"seed": 1' + b"0" * 5000 + b"}"):
        answer = call(server, "POST", "/api/grid", body, {"Content-Type": "application/json"})
        assert answer[0] == 400 and error_of(answer) == "the request is not JSON"
    (tmp_path / "deep.json").write_text("[" * 100_000)
    done = runner.invoke(app, ["render", str(tmp_path / "deep.json"), *BUILTIN])
    assert done.exit_code == 1 and "is not JSON" in done.output


@pytest.mark.slow
def test_browser_class_picker_on_a_labelled_model(browser: Browser, labelled_run, tmp_path: Path) -> None:
    labelled = open_models(labelled_run.runs_dir, labelled_run.run_dir.name, None, ("decoder", "encoder"), "cpu")
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


@pytest.mark.slow
def test_render_finds_the_model_that_saved_the_recipe(labelled_run, models: ModelSet, tmp_path: Path, runner) -> None:
    labelled = open_models(labelled_run.runs_dir, labelled_run.run_dir.name, None, ("decoder",), "cpu")
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

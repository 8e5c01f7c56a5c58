"""The explore server over plain HTTP: every refusal is a clear JSON error and the server keeps serving; four
clients at once get exactly their own faces."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from animevae.cli import app
from animevae.explore.recipe import Painter, recipe_from_dict
from animevae.explore.server import MAX_JSON_BYTES, ExploreServer, allowed_hosts, start_server
from animevae.explore.studio import MAX_UPLOAD_BYTES, Studio
from animevae.model_files import ModelSet
from explore_fixtures import BUILTIN, call, error_of, huge_png_header, models, png_bytes, server  # noqa: F401
from helpers import blob_image


def test_bad_uploads_get_clear_messages_and_the_server_keeps_serving(server: ExploreServer) -> None:
    truncated = png_bytes(blob_image(np.random.default_rng(0), 64, 64))
    cases = {
        b"just some text": "not an image the page takes (PNG, JPEG, WebP, GIF or BMP)",
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n": "not an image the page takes",  # no Ghostscript run
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


def test_a_content_length_of_thousands_of_digits_is_too_large_not_a_bug(server: ExploreServer) -> None:
    for path, what in (("/api/upload", "the uploaded file"), ("/api/grid", "the request")):
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        connection.putrequest("POST", path, skip_host=True)
        connection.putheader("Host", f"127.0.0.1:{server.port}")
        connection.putheader("Content-Length", "9" * 5000)  # past int()'s 4,300 digits
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 413, path
        assert json.loads(response.read())["error"] == f"{what} is a 5,000-digit number of bytes (at most " \
            f"{MAX_UPLOAD_BYTES if what == 'the uploaded file' else MAX_JSON_BYTES:,})"
        connection.close()
    assert call(server, "GET", "/api/info")[0] == 200


def test_a_tab_closed_mid_request_leaves_no_traceback(server: ExploreServer, monkeypatch, capsys) -> None:
    handled = threading.Event()
    finish = server.shutdown_request

    def finished(request: Any) -> None:  # called once the connection's handler has returned (or failed)
        finish(request)
        handled.set()

    monkeypatch.setattr(server, "shutdown_request", finished)
    head = f"POST /api/grid HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Length: 100\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as gone:
        gone.sendall(head.encode() + b'{"seed": 1')  # then the tab closes, 90 bytes short
    assert handled.wait(timeout=30)
    assert "Traceback" not in capsys.readouterr().err
    assert call(server, "GET", "/api/info")[0] == 200


def test_stalled_connections_block_no_one_and_are_closed(server: ExploreServer, monkeypatch) -> None:
    assert 0 < server.RequestHandlerClass.timeout <= 120  # a stalled connection must not hold its thread forever
    monkeypatch.setattr(server.RequestHandlerClass, "timeout", 1.0)
    head = f"POST /api/grid HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Length: 100\r\n\r\n"
    stalled = [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(2)]
    stalled[0].sendall(b"GET / HTTP/1.1\r\n")  # headers that never end
    stalled[1].sendall(head.encode() + b'{"seed": 1')  # a body that never ends
    try:
        assert call(server, "POST", "/api/grid", {"seed": 0, "count": 1})[0] == 200  # other tabs go on
        assert stalled[0].recv(1000) == b""  # closed once silent for the timeout
        answer = b"".join(iter(lambda: stalled[1].recv(1000), b""))  # the answer, then the server closes
        assert answer.startswith(b"HTTP/1.1 408") and b"the request stopped arriving" in answer, answer
    finally:
        for connection in stalled:
            connection.close()


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


def test_no_foreign_page_can_save_or_upload(server: ExploreServer, tmp_path: Path) -> None:
    recipe = json.loads(call(server, "POST", "/api/grid", {"seed": 1, "count": 1})[1])["faces"][0]["recipe"]
    save = json.dumps({"recipe": recipe, "name": "forged"}).encode()
    upload = png_bytes(blob_image(np.random.default_rng(0), 64, 64))
    # "null": a sandboxed iframe or a file:// page; a rebinding name with this port; a simple text/plain form post
    for origin in ("null", f"http://evil.example:{server.port}", "http://evil.example"):
        for path, body in (("/api/save", save), ("/api/upload", upload)):
            answer = call(server, "POST", path, body, {"Origin": origin, "Content-Type": "text/plain"})
            assert answer[0] == 403 and "are refused" in error_of(answer), (origin, path)
    for host in (f"evil.example:{server.port}", f"127.0.0.1.evil.example:{server.port}"):
        answer = call(server, "POST", "/api/save", save, {"Host": host})
        assert answer[0] == 403 and "is not this server's address" in error_of(answer), host
    assert not (tmp_path / "out").exists()


def test_a_wildcard_host_answers_on_every_address_it_listens_on(models: ModelSet, tmp_path: Path) -> None:
    # --host 0.0.0.0 is for other machines, which name this one by an address (here 127.0.0.2, on the loopback
    # so the test needs no network) that no lookup of the host name need list; a domain name is still refused.
    served = start_server(Studio(models, tmp_path / "out"), models.origin, "0.0.0.0", 0)
    threading.Thread(target=served.serve_forever, daemon=True).start()
    try:
        for host, status in ((f"127.0.0.2:{served.port}", 200), (f"evil.example:{served.port}", 403)):
            connection = http.client.HTTPConnection("127.0.0.2", served.port, timeout=30)
            connection.request("POST", "/api/grid", body=json.dumps({"seed": 0, "count": 1}),
                               headers={"Host": host, "Origin": f"http://{host}"})
            assert connection.getresponse().status == status, host
            connection.close()
    finally:
        served.shutdown()
        served.server_close()


def test_no_other_site_may_frame_the_page(server: ExploreServer) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("GET", "/", headers={"Host": f"127.0.0.1:{server.port}"})
    response = connection.getresponse()
    response.read()
    connection.close()
    assert response.status == 200 and "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]


def test_allowed_hosts_with_host_option() -> None:
    assert allowed_hosts("127.0.0.1", 8765) == {"127.0.0.1:8765", "localhost:8765", "[::1]:8765"}
    assert "192.168.1.5:9000" in allowed_hosts("192.168.1.5", 9000)
    assert "localhost" in allowed_hosts("127.0.0.1", 80)  # browsers leave out the default port


def test_save_names_are_plain_and_saves_stay_under_out(server: ExploreServer, tmp_path: Path) -> None:
    grid = json.loads(call(server, "POST", "/api/grid", {"seed": 1, "count": 2})[1])["faces"]
    recipe = grid[0]["recipe"]
    for name in ("../escape", "a/b", "/tmp/abs", ".hidden", "x.png", "", "a" * 65, "na\x00me", "..\\win", "nul", "COM1"):
        answer = call(server, "POST", "/api/save", {"recipe": recipe, "name": name})
        assert answer[0] == 400 and "is refused" in error_of(answer), name
    assert not (tmp_path / "out").exists() and not (tmp_path / "escape.png").exists()
    assert call(server, "POST", "/api/save", {"recipe": recipe, "name": "first"})[0] == 200
    answer = call(server, "POST", "/api/save", {"recipe": grid[1]["recipe"], "name": "first"})
    assert answer[0] == 400 and "first.png already exists" in error_of(answer)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["first.json", "first.png"]


def test_a_latent_past_float32_is_refused_not_saved_as_infinity(server: ExploreServer, tmp_path: Path) -> None:
    sha = json.loads(call(server, "GET", "/api/info")[1])["model_sha256"]
    latent = [0.0] * json.loads(call(server, "GET", "/api/info")[1])["latent_dim"]
    latent[3] = 1e39  # a finite JSON number that float32 holds only as infinity
    recipe = {"animevae_recipe": 1, "model_sha256": sha, "start": {"latent": latent}}
    for path in ("/api/save", "/api/render"):
        answer = call(server, "POST", path, {"recipe": recipe, "name": "huge"})
        assert answer[0] == 400 and "start.latent holds 1e+39, past the largest float32" in error_of(answer), answer
    assert not (tmp_path / "out").exists()


def test_a_save_the_disk_refuses_is_a_clear_error(server: ExploreServer, tmp_path: Path) -> None:
    recipe = json.loads(call(server, "POST", "/api/grid", {"seed": 1, "count": 1})[1])["faces"][0]["recipe"]
    (tmp_path / "out").write_text("a file where the --out folder should be")
    answer = call(server, "POST", "/api/save", {"recipe": recipe, "name": "face"})
    assert answer[0] == 400 and error_of(answer).startswith(f"cannot save into {tmp_path / 'out'}: "), answer
    assert call(server, "GET", "/api/info")[0] == 200


def test_unknown_paths_and_malformed_requests_are_clear(server: ExploreServer) -> None:
    for path in ("/../../etc/passwd", "/static/../server.py", "/index.html"):
        answer = call(server, "GET", path)
        assert answer[0] == 404 and "no page at" in error_of(answer)
    recipe = json.dumps(json.loads(call(server, "POST", "/api/grid", {"seed": 1, "count": 1})[1])["faces"][0]["recipe"])
    cases = [("/api/grid", b"{not json", "not JSON"), ("/api/grid", b"[1]", "not a JSON object"),
             ("/api/grid", b'{"seed": -1}', "--seed must be 0 or more"),
             ("/api/grid", b'{"seed": "x"}', "'seed' must be a int"),
             ("/api/grid", b'{"seed": 1, "temperature": 1' + b"0" * 400 + b"}", "--temperature must be in (0, 2]"),
             ("/api/grid", b'{"seed": null}', "the request has no 'seed'"),
             ("/api/grid", b'{"seed": 1, "count": null, "temperature": null}', ""),  # the defaults: a 200
             ("/api/save", b'{"recipe": null, "name": null}', "not an animevae recipe"),
             ("/api/save", b'{"recipe": %s, "name": null}' % recipe.encode(), "save name '' is refused"),
             ("/api/render", b'{"recipe": {"animevae_recipe": 1}}', "model_sha256"),
             ("/api/nothing", b"{}", "no action at")]
    for path, body, expected in cases:
        answer = call(server, "POST", path, body, {"Content-Type": "application/json"})
        if not expected:
            assert answer[0] == 200, (path, body)
            continue
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


def test_two_tabs_saving_one_name_at_once_never_overwrite(server: ExploreServer, tmp_path: Path, monkeypatch) -> None:
    from animevae.explore import studio

    write = studio.write_bytes_atomic

    def slow_write(path: Path, data: bytes) -> None:  # widens the gap between "is the name free" and the write
        time.sleep(0.05)
        write(path, data)

    monkeypatch.setattr(studio, "write_bytes_atomic", slow_write)
    faces = json.loads(call(server, "POST", "/api/grid", {"seed": 6, "count": 8})[1])["faces"]
    statuses: list[int] = []

    def save(face: dict[str, Any]) -> None:
        statuses.append(call(server, "POST", "/api/save", {"recipe": face["recipe"], "name": "same"})[0])

    savers = [threading.Thread(target=save, args=(face,)) for face in faces]
    for thread in savers:
        thread.start()
    for thread in savers:
        thread.join(timeout=60)
    assert sorted(statuses) == [200] + [400] * 7
    kept = json.loads((tmp_path / "out" / "same.json").read_text())
    assert kept in [face["recipe"] for face in faces]
    assert (tmp_path / "out" / "same.png").read_bytes() == call(server, "POST", "/api/render", {"recipe": kept})[1]

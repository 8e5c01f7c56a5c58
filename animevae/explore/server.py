"""The explore page's HTTP server: the standard library's ThreadingHTTPServer over a Studio.

Safety, because any web page the artist opens can make their browser send requests here:
- the Host header must name this server (127.0.0.1, localhost or [::1] and the port; with --host, that host too;
  or the IP address the request arrived on), which defeats DNS rebinding; a request with a foreign Origin is refused too (no cross-site writes);
- bodies are capped before they are read (uploads MAX_UPLOAD_BYTES, JSON MAX_JSON_BYTES), images are capped in
  pixels before they are decoded (data.decode_rgb); a connection silent for SOCKET_TIMEOUT_S is closed;
- the only files read are the page's own three (a fixed table, never a path from the request), and saves go to
  --out under a checked plain name (studio.check_save_name).
Every refusal is a JSON {"error", "hint"} with a 4xx status; a bug is a 500 with one line; the server keeps serving.
"""

from __future__ import annotations

import base64
import json
import math
import socket
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from animevae.errors import AnimeVAEError, ArgumentError, DataError
from animevae.explore.recipe import recipe_from_dict
from animevae.explore.studio import MAX_UPLOAD_BYTES, Face, Studio

MAX_JSON_BYTES = 2 * 1024 * 1024  # a request holds a few recipes of one latent each
# Seconds a connection may stay silent (idle between requests, or stalled mid-request) before it is closed, so
# stalled clients do not pile up threads; a browser opens a new connection for its next request.
SOCKET_TIMEOUT_S = 60.0
LOCAL_NAMES = ("127.0.0.1", "localhost", "[::1]")
WILDCARDS = ("0.0.0.0", "::", "")
# The page's files: the only paths this server reads, whatever the request names.
STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/style.css": ("style.css", "text/css; charset=utf-8")}


class Refused(AnimeVAEError):
    """A request refused before it reached the studio, with its HTTP status."""

    def __init__(self, status: HTTPStatus, message: str, hint: str = "") -> None:
        super().__init__(message, hint)
        self.status = status


def allowed_hosts(host: str, port: int) -> frozenset[str]:
    """The Host header values this server answers: the loopback names with the port (bare too on port 80), and
    with `--host H` H itself (for a wildcard, this machine's name and addresses)."""
    names = set(LOCAL_NAMES)
    if host not in ("127.0.0.1", "localhost", "::1"):
        names.add(f"[{host}]" if ":" in host else host)
        if host in WILDCARDS:
            names.update(_machine_names())
    hosts = {f"{name}:{port}" for name in names}
    return frozenset(hosts | (names if port == 80 else set()))


def address_hosts(address: str, port: int) -> frozenset[str]:
    """The Host header values that name an IP address of this machine (a socket's local address) with the port."""
    address = address.split("%")[0]  # an IPv6 scope (fe80::1%eth0) is not part of a Host header
    if address.startswith("::ffff:") and "." in address:  # IPv4 reaching a dual-stack socket
        address = address.removeprefix("::ffff:")
    name = f"[{address}]" if ":" in address else address
    return frozenset({f"{name}:{port}", *([name] if port == 80 else [])})


def _machine_names() -> set[str]:
    hostname = socket.gethostname()
    names = {hostname, socket.getfqdn()}
    try:
        for *_, address in socket.getaddrinfo(hostname, None):
            names.add(f"[{address[0]}]" if ":" in str(address[0]) else str(address[0]))
    except OSError:
        pass
    return names


def face_json(face: Face) -> dict[str, Any]:
    """A face as the page reads it: the recipe, and the PNG as a data URL."""
    return {"recipe": face.recipe.to_dict(), "image": "data:image/png;base64," + base64.b64encode(face.png).decode()}


def _field(body: dict[str, Any], name: str, kind: type, default: Any = None) -> Any:
    value = body.get(name)
    value = default if value is None else value  # a JSON null is a field left out, not a value to compute with
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value) if abs(value) < 2**1000 else math.inf  # float() raises OverflowError past 1e308
    if value is None and default is None and kind is not str:
        raise ArgumentError(f"the request has no {name!r}", "reload the page")
    if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
        raise ArgumentError(f"{name!r} must be a {kind.__name__} (got {str(value)[:40]!r})", "reload the page")
    return value


class ExploreApp:
    """The routes: each POST takes a JSON object and answers JSON (or PNG bytes for /api/render)."""

    def __init__(self, studio: Studio, origin: str) -> None:
        self.studio = studio
        self.origin = origin  # how the model was chosen, shown on the page
        self.routes: dict[str, Callable[[dict[str, Any]], Any]] = {
            "/api/grid": self.grid, "/api/render": self.render, "/api/variations": self.variations,
            "/api/interpolate": self.interpolate, "/api/save": self.save, "/api/save-strip": self.save_strip,
        }

    def info(self) -> dict[str, Any]:
        """What the page needs to draw itself."""
        painter = self.studio.painter
        return {"model": self.origin, "model_sha256": painter.model_sha256, "image_size": self.studio.models.image_size,
                "latent_dim": self.studio.models.latent_dim, "shares": self.studio.variance_shares(),
                "classes": list(painter.classes.names) if painter.classes else [], "out": str(self.studio.out),
                "encoder": self.studio.models.encoder is not None}

    def grid(self, body: dict[str, Any]) -> dict[str, Any]:
        class_name = _field(body, "class", str) or None
        faces = self.studio.grid(_field(body, "seed", int), _field(body, "temperature", float, 1.0),
                                 _field(body, "count", int, 16), class_name)
        return {"faces": [face_json(f) for f in faces]}

    def render(self, body: dict[str, Any]) -> bytes:
        return self.studio.render(recipe_from_dict(body.get("recipe")))

    def variations(self, body: dict[str, Any]) -> dict[str, Any]:
        faces = self.studio.variations(recipe_from_dict(body.get("recipe")), _field(body, "strength", float, 1.0),
                                       _field(body, "seed", int, 0), _field(body, "count", int, 8))
        return {"faces": [face_json(f) for f in faces]}

    def interpolate(self, body: dict[str, Any]) -> dict[str, Any]:
        faces = self.studio.interpolate(recipe_from_dict(body.get("a")), recipe_from_dict(body.get("b")),
                                        _field(body, "steps", int, 8))
        return {"faces": [face_json(f) for f in faces]}

    def save(self, body: dict[str, Any]) -> dict[str, Any]:
        paths = self.studio.save(recipe_from_dict(body.get("recipe")), _field(body, "name", str, ""))
        return {"saved": [p.name for p in paths], "folder": str(self.studio.out)}

    def save_strip(self, body: dict[str, Any]) -> dict[str, Any]:
        recipes = body.get("recipes")
        if not isinstance(recipes, list):
            raise ArgumentError("the request has no list of recipes", "reload the page")
        paths = self.studio.save_strip([recipe_from_dict(r) for r in recipes], _field(body, "name", str, ""))
        return {"saved": [p.name for p in paths], "folder": str(self.studio.out)}

    def upload(self, data: bytes) -> dict[str, Any]:
        return face_json(self.studio.encode_upload(data))


def make_handler(app: ExploreApp, hosts: frozenset[str]) -> type[BaseHTTPRequestHandler]:
    """The request handler class bound to `app`, answering only requests whose Host is in `hosts`."""
    page = resources.files("animevae.explore") / "static"
    files = {path: ((page / name).read_bytes(), kind) for path, (name, kind) in STATIC.items()}

    class Handler(BaseHTTPRequestHandler):
        server_version = "animevae-explore"
        protocol_version = "HTTP/1.1"
        # Headers and body leave in two writes: with Nagle on, the body waits for the client's delayed ACK
        # (on Linux up to 40 ms by default), longer than a whole render.
        disable_nagle_algorithm = True
        timeout = SOCKET_TIMEOUT_S

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass  # one line per slider move would drown the address and the errors

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._answer(self._get)

        def do_POST(self) -> None:  # noqa: N802
            self._answer(self._post)

        def _get(self) -> tuple[bytes, str]:
            path = urlsplit(self.path).path
            if path == "/api/info":
                return _json(app.info())
            if path not in files:
                raise Refused(HTTPStatus.NOT_FOUND, f"no page at {path[:80]}", "open / instead")
            return files[path]

        def _post(self) -> tuple[bytes, str]:
            path = urlsplit(self.path).path
            if path == "/api/upload":
                return _json(app.upload(self._body(MAX_UPLOAD_BYTES, "the uploaded file")))
            if path not in app.routes:
                raise Refused(HTTPStatus.NOT_FOUND, f"no action at {path[:80]}", "reload the page")
            try:
                body = json.loads(self._body(MAX_JSON_BYTES, "the request"))
            except (ValueError, RecursionError):  # bad JSON or UTF-8, an integer of 5,000 digits, [[[[...
                raise DataError("the request is not JSON", "reload the page") from None
            if not isinstance(body, dict):
                raise DataError("the request is not a JSON object", "reload the page")
            answer = app.routes[path](body)
            return (answer, "image/png") if isinstance(answer, bytes) else _json(answer)

        def _body(self, cap: int, what: str) -> bytes:
            length = self.headers.get("Content-Length", "")
            if not length.isascii() or not length.isdigit():
                raise Refused(HTTPStatus.LENGTH_REQUIRED, f"{what} came without a Content-Length", "reload the page")
            length = length.lstrip("0") or "0"
            if len(length) > len(str(cap)) or int(length) > cap:  # int() refuses more than 4,300 digits
                size = f"{int(length):,} bytes" if len(length) <= 20 else f"a {len(length):,}-digit number of bytes"
                raise Refused(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"{what} is {size} (at most {cap:,})",
                              "upload a smaller image" if cap == MAX_UPLOAD_BYTES else "reload the page")
            try:
                return self.rfile.read(int(length))
            except TimeoutError:
                raise Refused(HTTPStatus.REQUEST_TIMEOUT, f"{what} stopped arriving", "reload the page") from None

        def _check_caller(self) -> None:
            # The address the request arrived on names this server too: a wildcard --host listens on addresses that
            # no lookup of the host name need list. A rebinding page's Host is its own domain name, never this.
            here = hosts | address_hosts(self.connection.getsockname()[0], self.server.server_address[1])
            host = self.headers.get("Host", "")
            if host.lower() not in here:
                raise Refused(HTTPStatus.FORBIDDEN, f"Host {host[:80]!r} is not this server's address",
                              f"open http://127.0.0.1:{self.server.server_address[1]}/ in the browser")
            origin = self.headers.get("Origin")
            if origin is not None and urlsplit(origin).netloc.lower() not in here:
                raise Refused(HTTPStatus.FORBIDDEN, f"requests from {origin[:80]!r} are refused",
                              "use the page this server serves")

        def _answer(self, route: Callable[[], tuple[bytes, str]]) -> None:
            try:
                self._check_caller()
                body, kind = route()
                status = HTTPStatus.OK
            except Refused as error:
                body, kind = _json({"error": error.message, "hint": error.hint})
                status = error.status
                self.close_connection = True  # an unread body must not be taken for the next request
            except AnimeVAEError as error:
                body, kind = _json({"error": error.message, "hint": error.hint})
                status = HTTPStatus.BAD_REQUEST
            except Exception as error:  # noqa: BLE001 - a bug: one line on the page, and the server goes on
                body, kind = _json({"error": f"internal error: {type(error).__name__}: {error}".splitlines()[0][:300],
                                    "hint": "report it, with the steps that led here"})
                status = HTTPStatus.INTERNAL_SERVER_ERROR
            try:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("X-Content-Type-Options", "nosniff")
                # frame-ancestors: no other site may frame the page and steer the artist's clicks (clickjacking).
                self.send_header("Content-Security-Policy",
                                 "default-src 'self'; img-src 'self' data: blob:; frame-ancestors 'none'")
                self.end_headers()
                self.wfile.write(body)
            except (ConnectionError, TimeoutError):  # the tab closed (or stopped reading) before its answer
                self.close_connection = True

    return Handler


def _json(value: Any) -> tuple[bytes, str]:
    return json.dumps(value).encode(), "application/json"


class ExploreServer(ThreadingHTTPServer):
    """A threaded HTTP server (one thread per connection, none kept at exit), IPv6 when the host is an IPv6 address."""

    daemon_threads = True

    def __init__(self, host: str, port: int, app: ExploreApp) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), BaseHTTPRequestHandler, bind_and_activate=True)
        self.RequestHandlerClass = make_handler(app, allowed_hosts(host, self.port))

    @property
    def port(self) -> int:
        """The port bound (the free one picked for --port 0)."""
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        """The address to open, on the loopback name unless the server listens on another host only."""
        host = self.server_address[0]
        shown = "127.0.0.1" if host in WILDCARDS else (f"[{host}]" if ":" in host else host)
        return f"http://{shown}:{self.port}/"


def start_server(studio: Studio, origin: str, host: str = "127.0.0.1", port: int = 0) -> ExploreServer:
    """Bind the server (not serving yet: call serve_forever); OSError when the port is taken."""
    return ExploreServer(host, port, ExploreApp(studio, origin))

"""Take docs/explore.png: the explore page on the built-in model in headless chromium, with a face picked and
steered, its variations and an interpolation strip shown.

    python examples/explore_screenshot.py [--out docs/explore.png]

Needs chromium and websocket-client (the dev extra), as the browser test does.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from browser import Browser, find_browser  # noqa: E402

from animevae.explore.server import start_server  # noqa: E402
from animevae.explore.studio import Studio  # noqa: E402
from animevae.model_files import open_models  # noqa: E402



def slide(browser: Browser, direction: int, amount: float) -> None:
    """Move one slider as a user would, and wait for the face to follow."""
    browser.evaluate(f"const s{direction} = document.getElementById('slider-{direction}'); s{direction}.value = {amount};"
                     f"s{direction}.dispatchEvent(new Event('input'))")
    browser.wait_for(f"explore.rendered.moves.some(m => m.direction === {direction} && m.amount === {amount})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/explore.png"))
    args = parser.parse_args()
    executable = find_browser()
    if executable is None:
        raise SystemExit("no chromium found: apt-get install chromium")
    models = open_models(Path("runs"), None, "builtin", ("decoder", "prior", "encoder"), "cpu")
    # Nothing is saved: the folder only names where saves would go (the command's default).
    server = start_server(Studio(models, Path("explore")), models.origin)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    browser = Browser(executable, 1100, 840)
    try:
        browser.open(server.url)
        browser.evaluate("document.getElementById('seed').value = 3; document.getElementById('redraw').click()")
        browser.wait_for("explore.grid[0].recipe.start.seed === 3")
        browser.evaluate("document.querySelectorAll('#grid img')[1].click(); document.getElementById('set-a').click()")
        browser.evaluate("document.querySelectorAll('#grid img')[6].click(); document.getElementById('set-b').click()")
        browser.evaluate("document.getElementById('interpolate').click()")
        browser.wait_for("explore.interpolation.length === 8")
        browser.evaluate("document.querySelectorAll('#grid img')[1].click()")
        slide(browser, 0, 1.2)
        slide(browser, 2, -0.8)
        browser.evaluate("document.getElementById('vary').click()")
        browser.wait_for("explore.variations.length === 8")
        browser.screenshot(args.out, 1100, 840)
    finally:
        browser.close()
        server.shutdown()
    # A palette of 256 colours: the page is flat colour and small faces, and the file a fraction of the size.
    Image.open(args.out).convert("RGB").quantize(256, dither=Image.Dither.NONE).save(args.out, optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

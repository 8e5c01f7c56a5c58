"""`animevae explore`: a local web page to browse, steer and save faces, and `animevae render` for its recipes.

recipe.py   what a saved face is (model hash, start, slider moves) and how it becomes PNG bytes
studio.py   the page's operations over one model, without HTTP (grid, variations, interpolation, uploads, saves)
server.py   the HTTP server: routes, Host/Origin checks, body caps, JSON errors
commands.py the two Typer commands
static/     the page: one HTML file, plain JavaScript and CSS, no build step
"""

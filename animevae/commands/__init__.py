"""The commands, one module per group (training, generate, folders, latent, info); cli.py registers them.

Each command is a plain function with Typer annotations: it parses, calls the core, and prints. What several
share (the consoles, progress, the model opener, failure tables) is in shared.py; the error policy is cli.py's.
"""

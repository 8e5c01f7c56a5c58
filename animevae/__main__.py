"""`python -m animevae`, which torchrun needs."""

from animevae.cli import main

main()

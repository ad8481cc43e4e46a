"""`python -m imagesim.cli …`: the `imagesim` command."""

from imagesim.cli import entry

entry()

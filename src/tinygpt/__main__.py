"""`python -m tinygpt` is the same as the `tinygpt` command."""

from tinygpt.cli import entry

entry()

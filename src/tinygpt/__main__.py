"""`python -m tinygpt` is the same as the `tinygpt` command."""

from tinygpt.launch import entry

entry()

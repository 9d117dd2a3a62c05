"""The `tinygpt` console script and `python -m tinygpt`, from their first instant.

Importing the command line takes a moment; a Ctrl-C or SIGTERM that arrives during it would
otherwise end in a traceback from the middle of an import. This module imports nothing but
the standard library until both are in hand, then hands over to `tinygpt.cli.entry`.
"""

from __future__ import annotations

import os
import signal
import sys


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # while importing, SIGTERM stops it the way Ctrl-C does


def entry() -> None:
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        from tinygpt.cli import entry as cli_entry
    except KeyboardInterrupt:
        print("tinygpt: interrupted", file=sys.stderr, flush=True)
        os._exit(130)
    signal.signal(signal.SIGTERM, previous)
    cli_entry()

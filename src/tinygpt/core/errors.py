"""The one exception type users see.

A `TinyGPTError` carries a message written for the user: what is wrong and how to fix it.
The command line prints it as a single line and exits with status 2; Python callers can
catch it. Nothing else in the package should print a traceback for bad input.
"""

from __future__ import annotations


class TinyGPTError(Exception):
    """Bad input or an impossible request, with a message that says how to proceed."""

    exit_code = 2

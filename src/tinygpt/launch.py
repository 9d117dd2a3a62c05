"""The `tinygpt` console script and `python -m tinygpt`, from their first instant.

Two things can go wrong with a Ctrl-C (or SIGTERM) while a command is starting:

- During the import of the command line itself, it would end in a traceback from the
  middle of an import: caught here, it is one line and exit status 130.
- During `import torch`, a KeyboardInterrupt raised inside one of the Python callbacks that
  torch's C++ start-up makes cannot unwind through C++: the process aborts ("terminate
  called after throwing an instance of 'pybind11::error_already_set'"). So the first import
  of torch runs with the two signals held back, and they are delivered as soon as it is
  done. (An import finder does this, whichever command module imports torch first.)

This module imports nothing but the standard library until both are in hand, then hands
over to `tinygpt.cli.entry`.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from types import ModuleType

HELD = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def held_signals() -> Iterator[None]:
    """SIGINT and SIGTERM noted, not acted on, until the block ends; then the first one
    noted goes to the handler that was in place."""
    pending: list[int] = []
    old = {sig: signal.signal(sig, lambda s, f: pending.append(s)) for sig in HELD}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if pending:
            handler = old[signal.Signals(pending[0])]
            if callable(handler):
                handler(pending[0], None)
            elif handler != signal.SIG_IGN:
                raise KeyboardInterrupt


class _TorchImportGuard(importlib.abc.MetaPathFinder):
    """Runs the first `import torch` with signals held (module docstring)."""

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name != "torch":
            return None
        sys.meta_path.remove(self)  # once; and no recursion in the lookup below
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _HeldLoader(spec.loader)
        return spec


class _HeldLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with held_signals():
            self.loader.exec_module(module)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # while importing, SIGTERM stops it the way Ctrl-C does


def entry() -> None:
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        if "torch" not in sys.modules:
            sys.meta_path.insert(0, _TorchImportGuard())
        from tinygpt.cli import entry as cli_entry
    except KeyboardInterrupt:
        print("tinygpt: interrupted", file=sys.stderr, flush=True)
        os._exit(130)
    signal.signal(signal.SIGTERM, previous)
    cli_entry()

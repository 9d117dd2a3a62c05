"""How a training command's configuration is resolved from what the user typed.

`resolve_config` applies the rules the command line promises on top of `load_config`
(defaults → preset → `--config FILE` → dotted overrides, `tinygpt.core.config`): dedicated
flags after overrides, budgets on the command line replacing the preset's, and a resumed
run starting from its own `config.toml`. `add_config_arguments` and `settings_help` give the
parser its `--preset`/`--config` flags and the list of dotted settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tinygpt.core.config import (
    BUDGETS,
    DEFAULT_PRESET,
    SECTIONS,
    Overrides,
    RunConfig,
    list_presets,
    load_config,
    parse_overrides,
)
from tinygpt.core.errors import TinyGPTError
from tinygpt.core.run import RunDir


def resolve_config(
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: Overrides = (),
    *,
    settings: Mapping[str, Any] | None = None,
    budgets: Mapping[str, Any] | None = None,
    resume_run: str | Path | None = None,
) -> RunConfig:
    """The configuration a training command asks for, with the rules the CLI promises.

    - `settings`: typed values of dedicated flags (`{"train.seed": 3}`); None values are
      skipped; they apply after the dotted `overrides`.
    - `budgets`: `max_steps`/`max_tokens`/`max_time`/`max_epochs` given on the command line.
      When any is given, they *replace* the preset's budget (the others become 0) instead
      of adding a second budget to it.
    - `resume_run`: a run folder being resumed. Without `preset` or `config_file` the run's
      own `config.toml` is the starting point, so a resumed run keeps its settings.
    """
    if resume_run is not None and not (preset or config_file):
        own = RunDir(resume_run).config_path
        if own.is_file():
            config_file = own
    merged = dict(parse_overrides(overrides))
    extra = {k: v for k, v in (settings or {}).items() if v is not None}
    given = {k: v for k, v in (budgets or {}).items() if v is not None}
    unknown = set(budgets or {}) - set(BUDGETS)
    if unknown:
        raise TinyGPTError(
            f"unknown budget {sorted(unknown)[0]!r}; budgets are {', '.join(BUDGETS)}"
        )
    if given:
        extra.update({f"train.{name}": given.get(name, 0) for name in BUDGETS})
    for section, values in parse_overrides(extra).items():
        merged.setdefault(section, {}).update(values)
    return load_config(
        preset, config_file, {f"{s}.{k}": v for s, d in merged.items() for k, v in d.items()}
    )


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """`--preset` and `--config`; dotted overrides are collected by `parse_known_args`."""
    parser.add_argument(
        "--preset",
        default=None,
        help=f"named preset ({', '.join(list_presets())}); default {DEFAULT_PRESET}",
    )
    parser.add_argument(
        "--config", default=None, metavar="FILE", help="a config.toml to start from"
    )


def settings_help(config: RunConfig | None = None) -> str:
    """Every dotted setting with its value in `config` (default: the default preset)."""
    config = config or load_config()
    lines = ["settings (override with --section.key VALUE; values of the default preset):"]
    for name in SECTIONS:
        section = getattr(config, name)
        items = [
            f"{name}.{f.name}={getattr(section, f.name)!r}" for f in dataclasses.fields(section)
        ]
        lines.append("  " + ", ".join(items))
    return "\n".join(textwrap.fill(line, 96, subsequent_indent="    ") for line in lines)

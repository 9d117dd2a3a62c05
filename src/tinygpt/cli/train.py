"""`tinygpt train`: resolve the config, find or prepare the data, run the loop."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from tinygpt.errors import TinyGPTError


def register(sub: argparse._SubParsersAction) -> None:
    from tinygpt.cli import HelpFormatter
    from tinygpt.config import add_config_arguments, settings_help

    p = sub.add_parser(
        "train",
        help="train a model (with no arguments: the default preset on Shakespeare)",
        formatter_class=HelpFormatter,
        description=(
            "Train a GPT. Settings resolve as defaults < --preset < --config < dotted\n"
            "overrides such as --model.n_layer 6 --train.lr 3e-4 (see `tinygpt info`)."
        ),
        epilog=settings_help(),
    )
    add_config_arguments(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", metavar="DIR", help="a folder made by `tinygpt prepare`")
    src.add_argument("--corpus", metavar="NAME", help="a built-in corpus (prepared on the fly)")
    src.add_argument("--input", metavar="PATH", help="your text: file, folder, glob or .jsonl")
    p.add_argument(
        "--text-field", metavar="F", help="JSONL field holding the text (data.text_field)"
    )
    p.add_argument(
        "--errors",
        choices=["strict", "replace"],
        help="bytes that are not UTF-8: stop, or replace with U+FFFD (data.errors)",
    )
    p.add_argument("--out", metavar="RUN", help="run folder (default: runs/<preset>-<time>)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimiser steps")
    p.add_argument("--max-tokens", type=int, help="stop after this many training tokens")
    p.add_argument("--max-time", type=float, metavar="S", help="stop after S seconds of training")
    p.add_argument(
        "--resume",
        nargs="?",
        const="yes",
        choices=["yes", "auto"],
        help="continue the run in --out (auto: only if it has a checkpoint)",
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], help="default: auto")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--seed", type=int, help="seed for data order, dropout and samples")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run, allow_overrides=True)


def resolve(args: argparse.Namespace):
    """The RunConfig this command line asks for (also used by tests)."""
    from tinygpt.config import load_config

    overrides = list(getattr(args, "overrides", []) or [])
    budgets = {
        "max_steps": args.max_steps,
        "max_tokens": args.max_tokens,
        "max_time": args.max_time,
    }
    if any(v is not None for v in budgets.values()):
        # A budget on the command line replaces the preset's budget instead of adding to it.
        for key, value in budgets.items():
            overrides += [f"--train.{key}", str(value if value is not None else 0)]
    for flag in ("device", "threads", "seed", "compile"):
        value = getattr(args, flag)
        if value is not None:
            overrides += [f"--train.{flag}", str(value)]
    for flag in ("text_field", "errors"):
        value = getattr(args, flag)
        if value is not None:
            overrides += [f"--data.{flag}", str(value)]
    config_file = args.config
    out = Path(args.out) if args.out else None
    if args.resume and out and (out / "config.toml").is_file() and not (args.preset or config_file):
        config_file = str(out / "config.toml")  # resume with the run's own settings
    return load_config(args.preset, config_file, overrides)


def run(args: argparse.Namespace) -> int:
    from tinygpt.train import train

    config = resolve(args)
    if args.resume and not args.out:
        raise TinyGPTError("--resume needs --out RUN, the run folder to continue")
    out = (
        Path(args.out)
        if args.out
        else Path("runs") / (f"{config.preset or 'run'}-{dt.datetime.now():%Y%m%d-%H%M%S}")
    )
    data_dir = find_data(args, config)
    result = train(
        config,
        data_dir=data_dir,
        out_dir=out,
        resume=args.resume,
        command=["tinygpt", *sys.argv[1:]],
        progress=not args.no_progress,
    )
    if result.stopped == "interrupted":
        print(
            f"interrupted at step {result.step}; continue with: tinygpt train --out {out} --resume",
            file=sys.stderr,
        )
        return 130
    print(f"run: {out}")
    print(
        f"steps {result.step}, tokens {result.tokens:,}, training {result.train_time_s:.1f} s,"
        f" final eval {result.timings.get('final_eval_s', 0):.1f} s"
    )
    if result.val_loss is not None:
        print(f"val_loss {result.val_loss:.4f} (full validation split)")
    if result.sample:
        print("--- sample ---")
        print(result.sample)
    return 0


def find_data(args: argparse.Namespace, config) -> Path:
    """--data DIR, or prepare --corpus/--input (or the config's data source) on the fly."""
    if args.data:
        return Path(args.data)
    if config.data.dir and not (args.corpus or args.input):
        return Path(config.data.dir)
    from tinygpt.data import prepare_for_training

    source = args.corpus or args.input or config.data.source
    d = config.data
    return prepare_for_training(
        source,
        tokenizer=d.tokenizer,
        vocab_size=d.vocab_size or config.model.vocab_size,
        backend=d.backend,
        val_fraction=d.val_fraction,
        text_field=d.text_field,
        errors=d.errors,
        block_size=config.model.block_size,
    )

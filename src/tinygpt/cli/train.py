"""`tinygpt train`: resolve the config, find or prepare the data, run the loop."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from tinygpt.core.errors import TinyGPTError


def setting(flag: str, name: str):
    """The argparse type of a flag that sets `train.<name>`: the setting's own Range."""
    from tinygpt.core.config import TrainConfig
    from tinygpt.core.numbers import arg, field_range

    return arg(field_range(TrainConfig, name), flag)


def register(sub: argparse._SubParsersAction) -> None:
    from tinygpt.cli import HelpFormatter
    from tinygpt.core.resolution import add_config_arguments, settings_help

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
    p.add_argument(
        "--max-steps",
        type=setting("--max-steps", "max_steps"),
        help="stop after this many optimiser steps",
    )
    p.add_argument(
        "--max-tokens",
        type=setting("--max-tokens", "max_tokens"),
        help="stop after this many training tokens",
    )
    p.add_argument(
        "--max-time",
        type=setting("--max-time", "max_time"),
        metavar="S",
        help="stop after S seconds of training",
    )
    p.add_argument(
        "--max-epochs",
        type=setting("--max-epochs", "max_epochs"),
        metavar="E",
        help="stop after E passes over the training data",
    )
    p.add_argument(
        "--resume",
        nargs="?",
        const="yes",
        choices=["yes", "auto"],
        help="continue the run in --out (auto: only if it has a checkpoint)",
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], help="default: auto")
    p.add_argument("--threads", type=setting("--threads", "threads"), help="CPU threads for torch")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument(
        "--seed", type=setting("--seed", "seed"), help="seed for data order, dropout and samples"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--force", action="store_true", help="train into an --out folder that holds other files"
    )
    add_push_flag(p, "training")
    p.set_defaults(func=run, allow_overrides=True)


def add_push_flag(p: argparse.ArgumentParser, what: str) -> None:
    """`--push-to-hub USER/NAME`, shared by `train` and `finetune`."""
    p.add_argument(
        "--push-to-hub",
        metavar="USER/NAME",
        help=f"after a finished {what}, export the run to RUN/export/hf and upload it to this"
        " Hugging Face Hub repository (token: HF_TOKEN, a .env file or `hf auth login`; see"
        " `tinygpt push`); a failed upload leaves the export on disk",
    )


def check_push(args: argparse.Namespace) -> None:
    """Before any work: a --push-to-hub name of the wrong form, or no huggingface_hub, is an
    error now rather than after the training."""
    if args.push_to_hub:
        from tinygpt.export.hub import check_push_ready

        check_push_ready(args.push_to_hub, "--push-to-hub")


def push_after(args: argparse.Namespace, out: Path | str) -> None:
    """Export the finished run `out` and upload it, when --push-to-hub asks for it."""
    if args.push_to_hub:
        from tinygpt.export.hub import push_to_hub

        sys.stdout.flush()
        print(f"pushed: {push_to_hub(out, args.push_to_hub)}")


def resolve(args: argparse.Namespace):
    """The RunConfig this command line asks for (`tinygpt.core.resolution.resolve_config`)."""
    from tinygpt.core.config import BUDGETS
    from tinygpt.core.resolution import resolve_config

    settings = {f"train.{flag}": getattr(args, flag) for flag in ("device", "threads", "seed")}
    settings["train.compile"] = args.compile
    settings["data.text_field"] = args.text_field
    settings["data.errors"] = args.errors
    if args.corpus or args.input:  # a source given here wins over a prepared folder in a config
        settings.update({"data.source": args.corpus or args.input, "data.dir": ""})
    return resolve_config(
        args.preset,
        args.config,
        getattr(args, "overrides", []) or [],
        settings=settings,
        budgets={name: getattr(args, name) for name in BUDGETS},
        resume_run=args.out if args.resume and args.out else None,
    )


def run(args: argparse.Namespace) -> int:
    from tinygpt.train.pretrain import train

    if args.resume and not args.out:
        raise TinyGPTError("--resume needs --out RUN, the run folder to continue")
    check_push(args)
    config = resolve(args)
    out = (
        Path(args.out)
        if args.out
        else Path("runs") / (f"{config.preset or 'run'}-{dt.datetime.now():%Y%m%d-%H%M%S}")
    )
    result = train(
        config,
        out_dir=out,
        data_dir=args.data,
        resume=args.resume,
        command=["tinygpt", *sys.argv[1:]],
        progress=not args.no_progress,
        force=args.force,
    )
    if not result.is_main:  # under torchrun, rank 0 reports
        return 0
    if result.stopped == "interrupted":
        import signal

        name = signal.Signals(result.signal or signal.SIGINT).name
        print(
            f"interrupted at step {result.step} ({name}), checkpoint saved; continue with:"
            f" tinygpt train --out {out} --resume",
            file=sys.stderr,
        )
        return 128 + (result.signal or signal.SIGINT)
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
    push_after(args, out)
    return 0

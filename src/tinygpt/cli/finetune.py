"""`tinygpt finetune`: argument parsing and the closing report; the work is
`tinygpt.finetune.finetune`."""

from __future__ import annotations

import argparse
import sys

from tinygpt.errors import TinyGPTError

DESCRIPTION = """\
Fine-tune a trained model — a run folder, or a local Hugging Face model folder (imported on
the fly) — on instructions or on more text, into a new run folder that every command reads.

Data (--format, default auto):
  alpaca    {"instruction", "input"?, "output"}   user = instruction (+ blank line + input)
  prompt    {"prompt", "response"|"completion"}
  messages  {"messages": [{"role": "system"|"user"|"assistant", "content"}, ...]}
  text      anything `tinygpt prepare` reads: continued pre-training with the base's tokenizer
A .jsonl (or .json list) file, or hf:NAME[:CONFIG]; conversations are rendered with the chat
template (--template; see docs/chat.md), prepared once into a cached examples folder, and
only the assistant's tokens are scored (--train-on-prompt: all). Malformed records are
skipped and reported; examples longer than the context are dropped and counted.

Settings: the model is the base's (only --model.dropout and a shorter --model.block_size may
change); training settings come from the `finetune` preset (AdamW, lr 5e-4, 3 epochs),
overridden by dotted settings (--train.lr 1e-4) and budgets."""


def register(sub: argparse._SubParsersAction) -> None:
    from tinygpt.chat import list_templates
    from tinygpt.cli import HelpFormatter
    from tinygpt.cli.train import setting
    from tinygpt.examples import FORMATS

    p = sub.add_parser(
        "finetune",
        help="fine-tune a run or a Hugging Face model on instructions or text",
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    p.add_argument("base", metavar="BASE", help="a run folder or a local Hugging Face model folder")
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--data",
        metavar="DIR",
        help="an examples folder, or text prepared with the base's tokenizer",
    )
    src.add_argument(
        "--input", metavar="PATH", help="a .jsonl/.json file, text, or hf:NAME[:CONFIG]"
    )
    src.add_argument("--corpus", metavar="NAME", help="a built-in corpus (text)")
    p.add_argument("--out", required=True, metavar="RUN", help="the new run folder")
    p.add_argument(
        "--checkpoint", default="best", help="the base's checkpoint: best, latest or step-N"
    )
    p.add_argument("--format", default="auto", choices=FORMATS, help="how to read --input")
    p.add_argument(
        "--template",
        default=None,
        metavar="NAME",
        help=f"chat template ({', '.join(list_templates())}); default: the base's, else default",
    )
    p.add_argument(
        "--train-on-prompt",
        action="store_true",
        help="score every token of an example, not only the assistant's",
    )
    p.add_argument(
        "--text-field", default="text", metavar="F", help="JSONL text field (text format)"
    )
    p.add_argument(
        "--errors",
        choices=("strict", "replace"),
        default="strict",
        help="bytes that are not UTF-8: stop, or replace with U+FFFD",
    )
    p.add_argument(
        "--max-steps", type=setting("--max-steps", "max_steps"), help="stop after N optimiser steps"
    )
    p.add_argument(
        "--max-tokens", type=setting("--max-tokens", "max_tokens"), help="stop after N tokens"
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
        help="stop after E passes over the data",
    )
    p.add_argument("--resume", action="store_true", help="continue the fine-tune in --out")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], help="default: auto")
    p.add_argument("--threads", type=setting("--threads", "threads"), help="CPU threads for torch")
    p.add_argument(
        "--seed",
        type=setting("--seed", "seed"),
        help="seed for data order, new token rows and dropout",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--force", action="store_true", help="fine-tune into an --out folder that holds other files"
    )
    p.set_defaults(func=run, allow_overrides=True)


def run(args: argparse.Namespace) -> int:
    from tinygpt.config import BUDGETS
    from tinygpt.finetune import finetune

    if not args.resume and not (args.data or args.input or args.corpus):
        raise TinyGPTError(
            "give the data to fine-tune on: --data DIR, --input PATH or --corpus NAME"
        )

    def note(line: str) -> None:
        print(f"note: {line}", file=sys.stderr, flush=True)

    settings = {f"train.{flag}": getattr(args, flag) for flag in ("device", "threads", "seed")}
    out = finetune(
        args.base,
        out_dir=args.out,
        data_dir=args.data,
        input=args.input,
        corpus=args.corpus,
        checkpoint=args.checkpoint,
        fmt=args.format,
        template=args.template,
        train_on_prompt=args.train_on_prompt,
        resume=args.resume,
        overrides=getattr(args, "overrides", []) or [],
        budgets={name: getattr(args, name) for name in BUDGETS},
        settings=settings,
        text_field=args.text_field,
        errors=args.errors,
        command=["tinygpt", *sys.argv[1:]],
        progress=not args.no_progress,
        report=note,
        force=args.force,
    )
    result = out.train
    if not result.is_main:
        return 0
    if result.stopped == "interrupted":
        print(
            f"interrupted at step {result.step}; continue with: tinygpt finetune {args.base}"
            f" --out {args.out} --resume",
            file=sys.stderr,
        )
        return 130
    print(f"run: {args.out}")
    print(
        f"steps {result.step}, tokens {result.tokens:,}, training {result.train_time_s:.1f} s,"
        f" final eval {result.timings.get('final_eval_s', 0):.1f} s"
    )
    if result.val_loss is not None:
        before = "" if out.val_loss_before is None else f"{out.val_loss_before:.4f} -> "
        print(f"held-out loss {before}{result.val_loss:.4f} ({out.evaluated})")
    if result.sample:
        print("--- sample ---")
        print(result.sample)
    if out.template:
        print(f"chat with it: tinygpt chat {args.out}")
    return 0

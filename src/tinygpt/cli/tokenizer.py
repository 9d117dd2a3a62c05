"""`tinygpt tokenizer train | encode | decode`: argument parsing and printing only.

The work is done by `tinygpt.data.tokenizer` (training, loading) and `tinygpt.data.corpora`
(reading the text).
"""

from __future__ import annotations

import argparse
import sys
import time

from tinygpt.cli import HelpFormatter
from tinygpt.cli.prepare import (
    VOCAB,
    add_min_frequency_argument,
    add_normalizer_arguments,
    add_source_arguments,
)
from tinygpt.core.errors import TinyGPTError
from tinygpt.core.numbers import arg


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tokenizer",
        help="train a tokenizer, or look at how one cuts text",
        description="Train a character or byte-level BPE tokenizer, and inspect one.",
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="tokenizer_command", metavar="SUBCOMMAND", required=True)
    _train_command(sub)
    _encode_commands(sub)


def _train_command(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser(
        "train",
        help="learn a tokenizer from a corpus and write its tokenizer.json",
        description=(
            "Learn a tokenizer and write a Hugging Face-compatible tokenizer.json.\n"
            "char: one id per character seen (plus <|endoftext|>).\n"
            "bpe:  byte-level BPE with --vocab-size ids (256 bytes + merges + specials)."
        ),
        formatter_class=HelpFormatter,
    )
    add_source_arguments(train)
    train.add_argument("--tokenizer", choices=("char", "bpe"), default="bpe", help="the kind")
    train.add_argument(
        "--vocab-size",
        type=arg(VOCAB, "--vocab-size"),
        default=None,
        metavar="N",
        help="bpe: total ids, bytes and specials included (default 4096); char: set by the text",
    )
    train.add_argument(
        "--backend",
        choices=("native", "hf"),
        default="native",
        help="bpe: our trainer, or Hugging Face tokenizers (faster on large corpora)",
    )
    train.add_argument(
        "--pattern", choices=("gpt2", "gpt4"), default="gpt4", help="bpe: the pre-split regex"
    )
    add_min_frequency_argument(train)
    train.add_argument(
        "--unk",
        action="store_true",
        help="char: map characters missing from the training text to <unk> instead of failing",
    )
    train.add_argument(
        "--special",
        action="append",
        default=[],
        metavar="TOKEN",
        help="bpe: an extra special token (repeatable); <|endoftext|> is always there",
    )
    train.add_argument("--out", required=True, metavar="FILE", help="where to write tokenizer.json")
    add_normalizer_arguments(train)
    train.set_defaults(func=cmd_train)


def _encode_commands(sub: argparse._SubParsersAction) -> None:
    """`tokenizer encode` and `tokenizer decode`: looking at how a tokenizer cuts text."""
    encode = sub.add_parser(
        "encode",
        help="show the tokens of a string",
        description="Show how a tokenizer cuts TEXT: one line per token, its id and its piece.",
        formatter_class=HelpFormatter,
    )
    encode.add_argument(
        "file", metavar="FILE", help="a tokenizer.json (or a folder holding one), or gpt2"
    )
    encode.add_argument("text", metavar="TEXT", help="the text to encode")
    encode.add_argument(
        "--allowed-special",
        action="store_true",
        help="turn literal special-token strings such as <|endoftext|> into their ids",
    )
    encode.add_argument("--ids", action="store_true", help="print only the ids, on one line")
    encode.set_defaults(func=cmd_encode)

    decode = sub.add_parser(
        "decode",
        help="turn token ids back into text",
        description="Print the text of token ids (separated by spaces or commas).",
        formatter_class=HelpFormatter,
    )
    decode.add_argument(
        "file", metavar="FILE", help="a tokenizer.json (or a folder holding one), or gpt2"
    )
    decode.add_argument("ids", nargs="+", metavar="ID", help="token ids")
    decode.set_defaults(func=cmd_decode)


def _load(spec: str):
    """A tokenizer.json (or a folder holding one), or "gpt2" for GPT-2's vocabulary."""
    from tinygpt.data.tokenizer import gpt2_tokenizer, load_tokenizer

    return gpt2_tokenizer() if spec == "gpt2" else load_tokenizer(spec)


def cmd_train(args: argparse.Namespace) -> int:
    from tinygpt.data.corpora import corpus_info
    from tinygpt.data.sources import iter_documents
    from tinygpt.data.tokenizer import BPETokenizer, Normalizer, train_tokenizer

    if args.tokenizer == "char" and (
        args.vocab_size is not None or args.special or args.min_frequency != 1
    ):
        raise TinyGPTError(
            "--vocab-size, --special and --min-frequency apply to --tokenizer bpe; a char "
            "vocabulary is set by the text"
        )
    normalizer = Normalizer.build(lowercase=args.lowercase, whitespace=args.normalize_whitespace)
    if args.tokenizer == "bpe" and args.unk:
        raise TinyGPTError("--unk applies to --tokenizer char; byte-level BPE has no unknown input")
    if args.corpus is not None:
        corpus_info(args.corpus)  # an unknown name fails here, with the closest known one
    source = args.corpus if args.corpus is not None else args.input
    docs = iter_documents(source, text_field=args.text_field, errors=args.errors)

    def note(msg: str) -> None:
        print(f"  {msg}", file=sys.stderr)

    start = time.perf_counter()
    tok = train_tokenizer(
        args.tokenizer,
        docs,
        vocab_size=args.vocab_size,
        backend=args.backend,
        pattern=args.pattern,
        unk=args.unk,
        special_tokens=args.special,
        min_frequency=args.min_frequency,
        normalizer=normalizer,
        progress=note,
    )
    seconds = time.perf_counter() - start
    if tok.shortfall:
        print(f"note: {tok.shortfall}", file=sys.stderr)
    path = tok.save(args.out)
    detail = ""
    if isinstance(tok, BPETokenizer):  # the "bpe" kind
        detail = f", {len(tok.merges)} merges, pattern {args.pattern}"
    print(
        f"wrote {path}: {tok.kind}, vocabulary {tok.vocab_size}{detail}, trained in {seconds:.1f} s"
    )
    return 0


def cmd_encode(args: argparse.Namespace) -> int:
    tok = _load(args.file)
    ids = tok.encode(args.text, allowed_special=args.allowed_special)
    if args.ids:
        print(" ".join(map(str, ids)))
        return 0
    width = max(len("id"), *(len(str(i)) for i in ids)) if ids else len("id")
    print(f"{'id':>{width}}  piece")
    for i in ids:
        print(f"{i:>{width}}  {tok.piece(i)}")
    n_bytes = len(args.text.encode("utf-8"))
    print(f"{len(ids)} tokens, {n_bytes} bytes")
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    tok = _load(args.file)
    ids: list[int] = []
    for given in args.ids:
        for part in given.replace(",", " ").split():
            try:
                ids.append(int(part))
            except ValueError:
                raise TinyGPTError(f"token id {part!r} is not an integer") from None
    for i in ids:
        tok.check_id(i)
    sys.stdout.write(tok.decode(ids) + "\n")
    return 0

"""`tinygpt eval`, `report`, `plot` and `attention`: argument parsing for looking at runs.

The work is done by `tinygpt.infer.evaluate` (loss, bits per byte, BLEU/chrF, samples),
`tinygpt.export.report` (report.md/html) and `tinygpt.train.plots` (curves and attention maps); run
folders are read through `tinygpt.core.run`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tinygpt.core.errors import TinyGPTError

EVAL_DESCRIPTION = """\
Score a trained run on text: mean loss (nats per token), perplexity and bits per byte.

bits per byte = summed loss of the scored tokens / ln 2 / the UTF-8 bytes those tokens
decode to. End-of-text targets stand for 0 bytes but their loss still counts. Unlike the
loss per token it does not depend on the tokenizer, so char-level and BPE models can be
compared on the same text.

By default the whole validation split of the dataset the run was trained on is scored, as
training scores it (non-overlapping windows of block_size tokens); --stride N slides the
windows by N tokens so that every token has at least block_size - N tokens of context.
--prompts / --make-prompts also score greedy (or seeded) continuations with BLEU and chrF."""


def register(sub: argparse._SubParsersAction) -> None:
    _eval_command(sub)
    _report_command(sub)
    _plot_command(sub)
    _attention_command(sub)


def _eval_command(sub: argparse._SubParsersAction) -> None:
    from tinygpt.cli import HelpFormatter
    from tinygpt.cli.model import add_threads_argument
    from tinygpt.cli.prepare import add_reading_arguments
    from tinygpt.core.numbers import BATCH, COUNT, arg

    p = sub.add_parser(
        "eval",
        help="loss, perplexity, bits per byte (and BLEU/chrF) of a trained run",
        description=EVAL_DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    p.add_argument("run", metavar="RUN", help="a run folder written by `tinygpt train`")
    p.add_argument("--checkpoint", default="best", help="best, latest or step-N")
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--data", metavar="DIR", help="a prepared folder; without --data or --input, the run's own"
    )
    src.add_argument(
        "--input", metavar="PATH", help="any text: file, folder, glob, .jsonl or hf:NAME"
    )
    add_reading_arguments(p)
    p.add_argument(
        "--per-line",
        action="store_true",
        help="with --input FILE: score each line on its own (after end-of-text, its closing"
        " end-of-text scored too); corpus-level loss, perplexity and bits per byte",
    )
    p.add_argument(
        "--stride", type=arg(COUNT, "--stride"), default=None, help="sliding-window stride (tokens)"
    )
    p.add_argument(
        "--max-tokens",
        type=arg(COUNT, "--max-tokens"),
        default=None,
        help="evaluate only the first N tokens",
    )
    p.add_argument(
        "--batch-size", type=arg(BATCH, "--batch-size"), default=32, help="windows per forward pass"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    add_threads_argument(p)
    p.add_argument("--json", action="store_true", help="print one JSON line")
    _generation_arguments(p)
    p.add_argument("--no-loss", action="store_true", help="skip the loss evaluation")
    p.set_defaults(func=run_eval)


def _generation_arguments(p: argparse.ArgumentParser) -> None:
    """eval's prompts to continue and score (BLEU/chrF), and samples to write."""
    from tinygpt.core.config import SAMPLING
    from tinygpt.core.numbers import Range, arg

    p.add_argument("--prompts", metavar="FILE", help='JSONL of {"prompt", "reference"} lines')
    p.add_argument(
        "--make-prompts",
        metavar="K,M",
        help="cut prompts from the validation split: K prompt tokens, M reference tokens;"
        " written to RUN/eval/prompts.jsonl and scored",
    )
    p.add_argument(
        "--num-prompts",
        type=arg(SAMPLING["num_samples"], "--num-prompts"),
        default=20,
        help="prompts for --make-prompts",
    )
    p.add_argument(
        "--temperature",
        type=arg(SAMPLING["temperature"], "--temperature"),
        default=0.0,
        help="for --prompts/--samples; 0 = greedy",
    )
    p.add_argument(
        "--top-k",
        type=arg(SAMPLING["top_k"], "--top-k"),
        default=None,
        help="for --prompts/--samples",
    )
    p.add_argument(
        "--seed",
        type=arg(SAMPLING["seed"], "--seed"),
        default=0,
        help="seed for sampled continuations",
    )
    p.add_argument(
        "--samples",
        type=arg(Range(lo=0, hi=SAMPLING["num_samples"].hi, integer=True), "--samples"),
        default=0,
        metavar="N",
        help="write N samples to RUN/samples/",
    )


def _report_command(sub: argparse._SubParsersAction) -> None:
    from tinygpt.cli import HelpFormatter

    r = sub.add_parser(
        "report",
        help="write RUN/report.md and a self-contained RUN/report.html",
        description="Config, parameters, data, training, evaluation, samples and plots of a"
        " run in one page (run `tinygpt eval RUN` first to include evaluation results).",
        formatter_class=HelpFormatter,
    )
    r.add_argument("run", metavar="RUN", help="a run folder")
    r.add_argument("--no-plots", action="store_true", help="do not redraw the curves")
    r.set_defaults(func=run_report)


def _plot_command(sub: argparse._SubParsersAction) -> None:
    from tinygpt.cli import HelpFormatter

    pl = sub.add_parser(
        "plot",
        help="loss, learning rate, tokens/s and gradient norm curves of one or more runs",
        description="Overlay the curves of runs (legend by run folder name) in one PNG.",
        formatter_class=HelpFormatter,
    )
    pl.add_argument("runs", nargs="+", metavar="RUN", help="run folders")
    pl.add_argument(
        "--out", metavar="FILE", default=None, help="PNG to write; None: RUN/curves.png"
    )
    pl.add_argument("--log", action="store_true", help="log-scale losses and gradient norms")
    pl.set_defaults(func=run_plot)


def _attention_command(sub: argparse._SubParsersAction) -> None:
    from tinygpt.cli import HelpFormatter
    from tinygpt.core.numbers import Range, arg

    a = sub.add_parser(
        "attention",
        help="heatmaps of attention probabilities for a prompt (layer × head)",
        description="Draw what each head attends to: row i is the query at token i, column j"
        " the probability it gives token j (the manual attention path's softmax).",
        formatter_class=HelpFormatter,
    )
    a.add_argument("run", metavar="RUN", help="a run folder")
    a.add_argument("--prompt", required=True, help="the text to look at")
    a.add_argument(
        "--layer",
        type=arg(Range(lo=0, integer=True), "--layer"),
        default=None,
        help="one layer only (0-based)",
    )
    a.add_argument(
        "--out", metavar="FILE", default=None, help="PNG to write; None: RUN/attention.png"
    )
    a.add_argument("--checkpoint", default="best", help="best, latest or step-N")
    a.add_argument("--device", default="cpu", help="cpu, cuda or mps")
    a.set_defaults(func=run_attention)


def _check_run(run: str, *, whole: bool = True) -> Path:
    """A run folder (`whole`), or any existing folder (`plot` needs only metrics.csv)."""
    from tinygpt.core.run import RunDir

    if whole or not Path(run).is_dir():
        return RunDir(run).require().path
    return Path(run)


def _parse_km(text: str) -> tuple[int, int]:
    try:
        k, m = (int(x) for x in text.split(","))
    except ValueError:
        raise TinyGPTError(
            f"--make-prompts {text!r} should be K,M (prompt and reference tokens), e.g. 32,32"
        ) from None
    return k, m


def run_eval(args: argparse.Namespace) -> int:
    from tinygpt.cli.model import set_threads
    from tinygpt.infer import evaluate

    run_dir = _check_run(args.run)
    set_threads(args.threads)
    generating = bool(args.prompts or args.make_prompts or args.samples)
    if args.no_loss and not generating:
        raise TinyGPTError(
            "--no-loss leaves nothing to do; add --prompts, --make-prompts or --samples"
        )
    out: dict = {}
    if not args.no_loss:
        result = evaluate.evaluate_run(
            run_dir,
            checkpoint=args.checkpoint,
            data=args.data,
            input=args.input,
            text_field=args.text_field,
            errors=args.errors,
            stride=args.stride,
            max_tokens=args.max_tokens,
            device=args.device,
            batch_size=args.batch_size,
            per_line=args.per_line,
        )
        out.update(result.to_dict())
        if not args.json:
            print(f"run {run_dir} ({result.checkpoint}, step {result.step}) on {result.data}")
            lines = f", {result.lines:,} lines" if result.lines is not None else ""
            print(
                f"loss {result.val_loss:.4f}  perplexity {result.val_ppl:.3f}"
                f"  bits/byte {result.val_bpb:.4f}  ({result.tokens:,} tokens,"
                f" {result.bytes:,} bytes{lines})"
            )
    if generating:
        out.update(
            evaluate.evaluate_run_generation(
                run_dir,
                checkpoint=args.checkpoint,
                prompts_file=args.prompts,
                make=_parse_km(args.make_prompts) if args.make_prompts else None,
                num_prompts=args.num_prompts,
                samples=args.samples,
                data=args.data,
                input=args.input,
                text_field=args.text_field,
                errors=args.errors,
                temperature=args.temperature,
                top_k=args.top_k,
                seed=args.seed,
                device=args.device,
                report=None if args.json else print,
            )
        )
    if args.json:
        print(json.dumps(out, ensure_ascii=False))
    return 0


def _need_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise TinyGPTError("plots need matplotlib: pip install 'tinygpt[eval]'") from None


def run_report(args: argparse.Namespace) -> int:
    from tinygpt.export.report import write_report

    md, page = write_report(_check_run(args.run), plots=not args.no_plots)
    print(f"wrote {md} and {page}")
    return 0


def run_plot(args: argparse.Namespace) -> int:
    from tinygpt.train.plots import plot_runs

    _need_matplotlib()
    from tinygpt.core.run import CURVES_PNG

    dirs = [_check_run(r, whole=False) for r in args.runs]
    out = Path(args.out) if args.out else dirs[0] / CURVES_PNG
    if out.suffix.lower() != ".png":
        raise TinyGPTError(f"--out {out} should end in .png")
    print(f"wrote {plot_runs(dirs, out, log=args.log)}")
    return 0


def run_attention(args: argparse.Namespace) -> int:
    from tinygpt.core.runtime import resolve_device
    from tinygpt.train.plots import plot_attention

    _need_matplotlib()
    if args.out and Path(args.out).suffix.lower() != ".png":
        raise TinyGPTError(f"--out {args.out} should end in .png")
    path = plot_attention(
        _check_run(args.run),
        args.prompt,
        out=args.out,
        layer=args.layer,
        checkpoint=args.checkpoint,
        device=resolve_device(args.device),
    )
    print(f"wrote {path}")
    return 0

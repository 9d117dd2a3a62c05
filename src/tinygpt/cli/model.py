"""`tinygpt info` and `tinygpt sample`: argument parsing for the model commands.

The work is done by `tinygpt.core.info` (accounting) and `tinygpt.infer.generate` (sampling); run
folders are read through `tinygpt.core.run` and configs through `tinygpt.core.config`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tinygpt.core.errors import TinyGPTError


def register(subparsers: argparse._SubParsersAction) -> None:
    from tinygpt.cli import HelpFormatter
    from tinygpt.core.config import SAMPLING
    from tinygpt.core.numbers import COUNT, arg

    info = subparsers.add_parser(
        "info",
        help="parameters, FLOPs and memory of a model configuration",
        description="Parameters per component, FLOPs per token and memory for a preset, a "
        "config file or a run folder. FLOPs count matmuls only, attention dense at full "
        "context; training is 3x forward.",
        formatter_class=HelpFormatter,
    )
    info.add_argument("run", nargs="?", default=None, metavar="RUN", help="a run folder")
    info.add_argument("--preset", default=None, help="a named preset")
    info.add_argument("--config", default=None, metavar="FILE", help="a config.toml")
    info.add_argument(
        "--batch", type=arg(COUNT, "--batch"), default=1, help="batch size for the memory estimate"
    )
    info.add_argument(
        "--context",
        type=arg(COUNT, "--context"),
        default=None,
        help="context length (default: block_size)",
    )
    info.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="value type of weights and activations for the memory estimate",
    )
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.set_defaults(func=run_info)

    sample = subparsers.add_parser(
        "sample",
        help="generate text from a trained run or an ONNX export",
        description="Continue a prompt with a trained model. Prints prompt and continuation; "
        "several samples are separated by a line of dashes. RUN may also be a folder that "
        "`tinygpt export --format onnx` wrote: it then runs with onnxruntime and NumPy, "
        "without torch.",
        formatter_class=HelpFormatter,
    )
    sample.add_argument(
        "run", metavar="RUN", help="a run folder written by `tinygpt train`, or an ONNX export"
    )
    sample.add_argument("--checkpoint", default="best", help="best, latest or step-N (runs)")
    sample.add_argument("--prompt", default="", help="text to continue ('' starts a document)")
    add_sampling_arguments(sample)
    sample.add_argument(
        "--num-samples", type=arg(SAMPLING["num_samples"], "--num-samples"), default=1
    )
    sample.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    sample.add_argument("--stream", action="store_true", help="print text as it is generated")
    sample.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    add_threads_argument(sample)
    sample.set_defaults(func=run_sample)


def add_threads_argument(p: argparse.ArgumentParser) -> None:
    """--threads: CPU threads for torch (the setting training calls train.threads)."""
    from tinygpt.core.config import TrainConfig
    from tinygpt.core.numbers import arg, field_range

    p.add_argument(
        "--threads",
        type=arg(field_range(TrainConfig, "threads"), "--threads"),
        default=0,
        help="CPU threads for torch; 0 = torch's default",
    )


def set_threads(n: int) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def add_sampling_arguments(p: argparse.ArgumentParser, *, max_new_tokens: int = 256) -> None:
    """The sampling flags of `sample` (and of other commands that generate), checked against
    `tinygpt.core.config.SAMPLING`."""
    from tinygpt.core.config import SAMPLE_TEMPERATURE, SAMPLE_TOP_K, SAMPLING
    from tinygpt.core.numbers import Range, arg

    p.add_argument(
        "--max-new-tokens",
        type=arg(SAMPLING["max_new_tokens"], "--max-new-tokens"),
        default=max_new_tokens,
    )
    p.add_argument(
        "--temperature",
        type=arg(SAMPLING["temperature"], "--temperature"),
        default=SAMPLE_TEMPERATURE,
        help="0 for greedy decoding",
    )
    top_k = Range(lo=0, hi=SAMPLING["top_k"].hi, integer=True)
    p.add_argument(
        "--top-k", type=arg(top_k, "--top-k"), default=SAMPLE_TOP_K, help="0 for no limit"
    )
    p.add_argument(
        "--top-p",
        type=arg(SAMPLING["top_p"], "--top-p"),
        default=1.0,
        help="nucleus mass; 1 for off",
    )
    p.add_argument(
        "--repetition-penalty",
        type=arg(SAMPLING["repetition_penalty"], "--repetition-penalty"),
        default=1.0,
        help="1 for off",
    )
    p.add_argument(
        "--seed",
        type=arg(SAMPLING["seed"], "--seed"),
        default=None,
        help="for reproducible samples",
    )


def _resolve_config(args: argparse.Namespace):
    from tinygpt.core.config import RunConfig, load_config
    from tinygpt.core.run import RunDir

    given = [x for x in (args.run, args.preset, args.config) if x]
    if len(given) != 1:
        raise TinyGPTError("give exactly one of RUN, --preset P or --config FILE")
    if args.run:
        path = Path(args.run)
        if path.is_file():  # a config.toml given without --config
            return RunConfig.from_toml(path).model, str(path)
        return RunDir(path).read_config().model, str(path)
    if args.config:
        from tinygpt.core.files import require_file

        require_file(args.config, "config file")
    config = load_config(preset=args.preset, config_file=args.config).model
    return config, args.preset or args.config


def run_info(args: argparse.Namespace) -> int:
    from tinygpt.core.info import format_info, model_info

    config, name = _resolve_config(args)
    data = model_info(config, batch=args.batch, context=args.context, dtype=args.dtype)
    if args.json:
        print(json.dumps({"source": name, **data}, indent=2))
    else:
        print(format_info(data, title=f"model: {name}"))
    return 0


def run_sample(args: argparse.Namespace) -> int:
    from tinygpt import load
    from tinygpt.infer.textgen import check_sampling

    sampling = dict(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k or None,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
    )
    check_sampling(num_samples=args.num_samples, **sampling)
    set_threads(args.threads)
    gen = load(args.run, checkpoint=args.checkpoint, device=args.device)
    gen.encode_prompt(args.prompt)  # an unencodable prompt fails before any output
    if not args.stream:
        # All samples are rows of one batch.
        texts = gen.generate(
            args.prompt, num_samples=args.num_samples, seed=args.seed, stop=args.stop, **sampling
        )
        texts = [texts] if isinstance(texts, str) else texts
        print(("\n" + "-" * 40 + "\n").join(args.prompt + t for t in texts))
        return 0
    for i in range(args.num_samples):
        # Streamed samples are generated one after another; sample i uses seed + i.
        if i:
            print("-" * 40)
        seed = None if args.seed is None else args.seed + i
        sys.stdout.write(args.prompt)
        for piece in gen.stream(args.prompt, seed=seed, stop=args.stop, **sampling):
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
    return 0

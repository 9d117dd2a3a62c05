"""`tinygpt export`, `tinygpt import` and `tinygpt push`: argument parsing for sharing models.

The work is done by `tinygpt.export.hf_run` (run folder <-> transformers folder),
`tinygpt.export.gguf` (run folder -> a GGUF file for llama.cpp), `tinygpt.export.onnx` (run
folder -> an ONNX folder) and `tinygpt.export.hub` (token lookup and upload); torch,
transformers, gguf and onnx are imported only when a command runs.
"""

from __future__ import annotations

import argparse

FORMATS = ["hf", "gguf", "onnx"]
GGUF_TYPES = ["f32", "f16", "q8_0"]  # tinygpt.export.gguf.TYPES, without importing it
ONNX_QUANTIZE = ["int8"]  # tinygpt.export.onnx.QUANTIZE, without importing it


def register(subparsers: argparse._SubParsersAction) -> None:
    _export_command(subparsers)
    _import_command(subparsers)
    _push_command(subparsers)


def _export_command(subparsers: argparse._SubParsersAction) -> None:
    from tinygpt.cli import HelpFormatter
    from tinygpt.cli.model import add_threads_argument

    export = subparsers.add_parser(
        "export",
        help="write a run as a Hugging Face transformers folder, a GGUF file for llama.cpp or "
        "an ONNX folder",
        description="Write one checkpoint of a run.\n\n"
        "--format hf: a folder that transformers loads with no network and no "
        "trust_remote_code: config.json, model.safetensors, generation_config.json, "
        "tokenizer.json + tokenizer_config.json + special_tokens_map.json, and a model card "
        "README.md. GPT-2-style configs become GPT2LMHeadModel, Llama-style ones "
        "LlamaForCausalLM, Llama-style with QK-norm (the default preset) Qwen3ForCausalLM.\n\n"
        "--format gguf: one file that llama.cpp (and the apps built on it) runs, with the "
        "tokenizer and a chat run's template inside: architecture gpt2, llama or qwen3 as "
        "above; weights as --type. Character and byte-level BPE tokenizers (gpt2 or gpt4 "
        "pattern, no lowercasing) map exactly.\n\n"
        "--format onnx: a folder that needs neither the run nor torch: model.onnx (opset 18, "
        "weights inside; a graph over 2 GB keeps them in model.onnx.data) with a KV cache "
        "(inputs input_ids, attention_mask, position_ids, past_key_values.{i}.key/.value; "
        "outputs logits, present.{i}.key/.value; dynamic batch, sequence and past), "
        "config.json, generation_config.json, the tokenizer files and tinygpt_onnx.json "
        "(format version). `tinygpt sample DIR` and tinygpt.load(DIR) run it with "
        "onnxruntime and NumPy. --quantize int8: onnxruntime's dynamic int8 quantization of "
        "every weight matrix and embedding.\n\n"
        "The output is written next to --out and renamed into place when complete.",
        formatter_class=HelpFormatter,
    )
    export.add_argument("run", metavar="RUN", help="a run folder written by `tinygpt train`")
    export.add_argument("--format", default="hf", choices=FORMATS, help="output format")
    export.add_argument(
        "--out", required=True, metavar="PATH", help="folder (hf, onnx) or file (gguf) to write"
    )
    export.add_argument(
        "--type",
        default=None,
        choices=GGUF_TYPES,
        help="gguf weights: f32, f16, or q8_0 (8-bit blocks); norms and biases stay f32"
        " (default: f32)",
    )
    export.add_argument(
        "--quantize",
        default=None,
        metavar="TYPE",
        help="onnx weights: int8 (onnxruntime's dynamic quantization; default: keep fp32)",
    )
    export.add_argument(
        "--no-reduce-range",
        dest="reduce_range",
        action="store_false",
        help="onnx int8 with full-range (8-bit) weights, for CPUs with AVX-512 VNNI; by "
        "default weights keep 7 bits, which is safe on CPUs without VNNI",
    )
    export.add_argument("--checkpoint", default="best", help="best, latest or step-N")
    export.add_argument(
        "--force", action="store_true", help="replace --out when it exists (and is not empty)"
    )
    _card_arguments(export)
    add_threads_argument(export)
    export.set_defaults(func=run_export)


def _import_command(subparsers: argparse._SubParsersAction) -> None:
    from tinygpt.cli import HelpFormatter

    imp = subparsers.add_parser(
        "import",
        help="turn a local transformers folder into a run folder",
        description="Turn a local transformers folder (GPT-2, Llama or Qwen3 family, with a "
        "byte-level BPE or character tokenizer.json) into a run folder that sample, eval "
        "and info accept. Biases that are all zero become model.bias = false.",
        formatter_class=HelpFormatter,
    )
    imp.add_argument("hf_dir", metavar="HF_DIR", help="a folder save_pretrained wrote")
    imp.add_argument("--out", required=True, metavar="RUN", help="new run folder to write")
    imp.set_defaults(func=run_import)


def _push_command(subparsers: argparse._SubParsersAction) -> None:
    from tinygpt.cli import HelpFormatter

    push = subparsers.add_parser(
        "push",
        help="upload a run or an exported folder to the Hugging Face Hub",
        description="Upload to the Hugging Face Hub. A run folder is exported first, into "
        "RUN/export/hf (replaced on each push). The token comes from HF_TOKEN, then a .env "
        "file in the working directory (HF_TOKEN=...), then a prior `hf auth login`; it is "
        "never printed or written. Needs the huggingface_hub package (tinygpt[hub]).",
        formatter_class=HelpFormatter,
    )
    push.add_argument("path", metavar="DIR_OR_RUN", help="a run folder or a folder `export` wrote")
    push.add_argument("--repo-id", required=True, metavar="USER/NAME", help="Hub repository")
    push.add_argument("--private", action="store_true", help="create the repository private")
    push.add_argument("--revision", default=None, help="branch to push to (default: main)")
    push.add_argument("--checkpoint", default="best", help="for a run: best, latest or step-N")
    _card_arguments(push)
    push.set_defaults(func=run_push)


def _card_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--license", default="mit", help="licence of the weights, for the model card"
    )
    parser.add_argument(
        "--language",
        default=None,
        help="language code for the model card (default: that of a built-in corpus)",
    )


def run_export(args: argparse.Namespace) -> int:
    from tinygpt.cli.model import set_threads
    from tinygpt.core.errors import TinyGPTError

    set_threads(args.threads)
    if args.quantize is not None and (args.format != "onnx" or args.quantize not in ONNX_QUANTIZE):
        how = {
            "hf": "a transformers folder has no quantization",
            "gguf": "for gguf give --type q8_0",
            "onnx": f"choose {', '.join(ONNX_QUANTIZE)}",
        }[args.format]
        raise TinyGPTError(
            f"--quantize {args.quantize} is not available for --format {args.format}; {how}"
        )
    if not args.reduce_range and args.quantize is None:
        raise TinyGPTError(
            "--no-reduce-range applies to --quantize int8 only; add it or drop the flag"
        )
    _lora_note(args.run)
    if args.format == "onnx":
        if args.type is not None:
            raise TinyGPTError("--type applies to --format gguf; for onnx give --quantize int8")
        from tinygpt.export.onnx import export_run_onnx

        out = export_run_onnx(
            args.run,
            args.out,
            checkpoint=args.checkpoint,
            quantize=args.quantize,
            reduce_range=args.reduce_range,
            force=args.force,
        )
        print(f"exported {args.run} to {out}")
        return 0
    if args.format == "gguf":
        from tinygpt.export.gguf import export_run_gguf

        out = export_run_gguf(
            args.run,
            args.out,
            checkpoint=args.checkpoint,
            type=args.type or "f32",
            license=args.license,
            force=args.force,
        )
        print(f"exported {args.run} to {out}")
        return 0
    if args.type is not None:
        raise TinyGPTError("--type applies to --format gguf; a transformers folder keeps fp32")
    from tinygpt.export.hf_run import export_run

    out = export_run(
        args.run,
        args.out,
        checkpoint=args.checkpoint,
        force=args.force,
        license=args.license,
        language=args.language,
    )
    print(f"exported {args.run} to {out}")
    return 0


def _lora_note(path: str) -> None:
    """Exports of a LoRA run fold the adapter into the base's weights as they load it."""
    import sys

    from tinygpt.core.run import RunDir

    if RunDir(path).is_lora():
        print(
            f"note: {path} is a LoRA run: its adapter is merged into its base's weights on the"
            f" fly for this export (tinygpt merge {path} --out DIR keeps a merged run)",
            file=sys.stderr,
        )


def run_import(args: argparse.Namespace) -> int:
    from tinygpt.export.hf_run import import_hf

    out = import_hf(args.hf_dir, args.out)
    print(f"imported {args.hf_dir} into the run folder {out}")
    return 0


def run_push(args: argparse.Namespace) -> int:
    from tinygpt.export.hub import push_to_hub

    _lora_note(args.path)
    url = push_to_hub(
        args.path,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        checkpoint=args.checkpoint,
        license=args.license,
        language=args.language,
    )
    print(f"pushed to {url}")
    return 0

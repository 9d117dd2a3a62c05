"""`tinygpt serve`: argument parsing for the OpenAI-compatible server.

The work is done by `tinygpt.serve` (the application, the backend, uvicorn).
"""

from __future__ import annotations

import argparse
import os
import sys

from tinygpt.core.errors import TinyGPTError

API_KEY_ENV = "TINYGPT_API_KEY"


def register(subparsers: argparse._SubParsersAction) -> None:
    from tinygpt.cli import HelpFormatter

    p = subparsers.add_parser(
        "serve",
        help="serve a run or an ONNX export over an OpenAI-compatible HTTP API and a chat page",
        description="Serve a trained run (or its ONNX export) over HTTP with OpenAI's API: GET "
        "/v1/models, POST /v1/completions, POST /v1/chat/completions (models with a chat "
        "template), GET /health, GET /info, and a chat page at GET /. A run's concurrent "
        "requests are generated together (continuous batching); an ONNX folder is generated "
        "with onnxruntime, one request at a time (the others wait in the queue), without "
        "logprobs. A request's max_tokens defaults to 256 (or the cap, if lower). Needs the "
        "serve extra: pip install 'tinygpt[serve]'.",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "run",
        metavar="RUN",
        help="a run folder written by `tinygpt train`, or an ONNX folder written by "
        "`tinygpt export --format onnx`",
    )
    p.add_argument("--checkpoint", default="best", help="best, latest or step-N (runs only)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument(
        "--api-key",
        default=None,
        help=f"require 'Authorization: Bearer KEY' on /v1 (default: ${API_KEY_ENV}, else none)",
    )
    p.add_argument("--model-name", default=None, help="the model id (default: the run's name)")
    p.add_argument(
        "--max-batch", type=int, default=16, help="requests generated at once (runs only)"
    )
    p.add_argument("--max-queue", type=int, default=64, help="requests that may wait; more get 503")
    p.add_argument("--max-tokens-cap", type=int, default=1024, help="the largest max_tokens")
    p.add_argument("--max-n", type=int, default=8, help="the most choices per request")
    p.add_argument(
        "--timeout", type=float, default=600.0, help="seconds a request may take, queue included"
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (an ONNX folder: cpu)")
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads for torch (or onnxruntime)"
    )
    p.add_argument(
        "--log-level",
        default="info",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn's log level",
    )
    p.set_defaults(func=run_serve)


def _check(args: argparse.Namespace) -> None:
    for flag in ("max_batch", "max_tokens_cap", "max_n"):
        if getattr(args, flag) < 1:
            raise TinyGPTError(f"--{flag.replace('_', '-')} must be at least 1")
    if args.max_queue < 0:
        raise TinyGPTError("--max-queue must be 0 or more")
    if not 0 <= args.port <= 65535:
        raise TinyGPTError(f"--port must be from 0 to 65535, got {args.port}")
    if not args.timeout > 0:
        raise TinyGPTError(f"--timeout must be positive seconds, got {args.timeout}")
    if args.threads is not None and args.threads < 1:
        raise TinyGPTError("--threads must be at least 1")
    if args.api_key is not None and not args.api_key.strip():
        raise TinyGPTError(
            "--api-key is empty, which would leave the server open; give a key, or leave the"
            " flag out to serve without one"
        )


def run_serve(args: argparse.Namespace) -> int:
    _check(args)
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise TinyGPTError(
            "tinygpt serve needs FastAPI and uvicorn; install them with "
            "pip install 'tinygpt[serve]'"
        ) from None
    from tinygpt.serve import Limits, create_app, open_model, run
    from tinygpt.serve.server import bind

    # Bound before the model loads (a busy port fails at once) and kept, so that with
    # --port 0 (a free port the system picks) the port printed is the port served.
    sock = bind(args.host, args.port)
    port = sock.getsockname()[1]
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    try:
        served = open_model(
            args.run,
            checkpoint=args.checkpoint,
            device=args.device,
            max_batch=args.max_batch,
            max_queue=args.max_queue,
            timeout=args.timeout,
            name=args.model_name,
            threads=args.threads,
        )
    except BaseException:
        sock.close()
        raise
    limits = Limits(max_tokens_cap=args.max_tokens_cap, max_n=args.max_n)
    app = create_app(served, api_key=api_key, limits=limits, timeout=args.timeout)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    chat = served.template.name if served.template is not None else "none"
    batch = served.backend.max_batch
    how = f"max batch {batch}" if batch > 1 else "one request at a time"
    print(
        f"serving {served.name!r} at http://{shown}:{port}/v1 ({served.runtime}, {how}, "
        f"chat template: {chat}, API key: {'required' if api_key else 'none'}); "
        f"chat page at http://{shown}:{port}/; Ctrl-C stops",
        file=sys.stderr,
        flush=True,
    )
    if api_key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"tinygpt: warning: listening on {args.host} without an API key: anyone who can "
            "reach this machine can use the model",
            file=sys.stderr,
            flush=True,
        )
    try:
        run(app, args.host, port, log_level=args.log_level, sock=sock)
    finally:
        served.backend.close()
        sock.close()
    return 0

"""An OpenAI-compatible HTTP server for a trained run (`tinygpt serve RUN`).

Three layers, each ignorant of the one above it:

- `tinygpt.serve.protocol`: OpenAI's request fields, answer shapes and errors (pure Python).
- `tinygpt.serve.backend`: what generates (the continuous-batching `tinygpt.infer.engine.Engine`
  for a run folder) and the `Backend` surface another kind of model would offer.
- `tinygpt.serve.app`: the FastAPI routes joining the two; `tinygpt.serve.server` runs
  them under uvicorn.

From Python:

    from tinygpt.serve import create_app, start
    app = create_app("runs/chat", max_batch=16, api_key="secret")
    with start(app, port=8000) as server:      # a background thread; or run(app, ...)
        ...                                     # point OpenAI(base_url=server.url + "/v1")

Needs the `serve` extra (`pip install "tinygpt[serve]"`: FastAPI and uvicorn).
"""

from __future__ import annotations

from typing import Any

__all__ = ["Limits", "ServedModel", "create_app", "open_model", "run", "start"]


def __getattr__(name: str) -> Any:
    # Imported on use: the protocol and backend need no web framework, the app does.
    if name == "create_app":
        from tinygpt.serve.app import create_app

        return create_app
    if name in ("run", "start"):
        from tinygpt.serve import server

        return getattr(server, name)
    if name == "Limits":
        from tinygpt.serve.protocol import Limits

        return Limits
    if name in ("ServedModel", "open_model"):
        from tinygpt.serve import backend

        return getattr(backend, name)
    raise AttributeError(f"module 'tinygpt.serve' has no attribute {name!r}")

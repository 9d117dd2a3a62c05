"""The HTTP application: OpenAI's completions and chat endpoints over a generation backend.

Owns: the FastAPI application of one served model: which route answers which path
(`GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/completions`,
`POST /v1/chat/completions`, `GET /health`, `GET /info`, and the chat page: `GET /` and its
files under `/static/`), the API key on every `/v1` route, closing an owned backend at
shutdown, and the answer to every error no route handled (OpenAI's error shape). What each
route does is `tinygpt.serve.routes`'. Knows nothing about models, torch or how tokens are
generated: that is the backend's business (`tinygpt.serve.backend`), nor about opening a
folder (`tinygpt.serve.open_model`).

The chat page (`tinygpt/serve/static/`: plain HTML, CSS and JavaScript, no build step, nothing
fetched from elsewhere) talks to the same API as any client: it reads `GET /info` (the
model's name, size, context, whether it has a chat template) and streams answers from
`/v1/chat/completions` or `/v1/completions`. `page=False` leaves it out. Unknown paths answer
404 in OpenAI's error shape.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from tinygpt.core.errors import TinyGPTError
from tinygpt.serve.backend import ServedModel
from tinygpt.serve.protocol import APIError, Limits, error_body
from tinygpt.serve.routes import Routes

# The chat page's files, shipped inside the package.
STATIC = Path(__file__).resolve().parent / "static"
# The page runs only its own files: no inline script, nothing from another origin. Should text
# ever reach the page as HTML, the browser would still refuse to run its handlers.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def create_app(
    source: Any,
    *,
    name: str | None = None,
    template: Any = None,
    api_key: str | None = None,
    limits: Limits | None = None,
    timeout: float | None = 600.0,
    page: bool = True,
    **open_options: Any,
) -> FastAPI:
    """The FastAPI application serving one model.

    `source` is a `ServedModel` (the app closes its backend when it shuts down if it is
    `owned`), or a started backend such as a `tinygpt.infer.engine.Engine` (then `name`,
    default "tinygpt", and `template`, a `tinygpt.data.template.ChatTemplate` or None,
    describe it; the caller closes it). A run or ONNX folder is opened first by
    `tinygpt.serve.create_app` (or `tinygpt.serve.open_model`), which chooses its backend.

    - api_key: when set, every `/v1` request needs `Authorization: Bearer <api_key>`.
    - limits: max_tokens default and cap, the most choices per request (`Limits`).
    - timeout: seconds a request may take from its arrival, queueing included (None: none).
    - page: serve the chat page at `GET /` (its files under `/static/`).
    """
    if isinstance(source, ServedModel):
        served = source
    elif isinstance(source, (str, os.PathLike)):
        raise TinyGPTError(
            f"{source} is a folder: open it with tinygpt.serve.create_app or "
            "tinygpt.serve.open_model, which choose its backend"
        )
    else:
        if open_options:
            raise TinyGPTError(
                f"{', '.join(open_options)} only apply when the app opens a run folder"
            )
        served = ServedModel(source, name or "tinygpt", template=template)
    server = Routes(served, limits or Limits(), api_key or None, timeout)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if served.owned:
            served.backend.close()

    app = FastAPI(
        title="tinygpt",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.served, app.state.limits = served, server.limits
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _server_error)

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(server.check_key)])
    v1.add_api_route("/models", server.models, methods=["GET"])
    v1.add_api_route("/models/{model_id:path}", server.model, methods=["GET"])
    v1.add_api_route("/completions", server.completions, methods=["POST"])
    v1.add_api_route("/chat/completions", server.chat, methods=["POST"])
    app.include_router(v1)
    app.add_api_route("/health", server.health, methods=["GET"])
    app.add_api_route("/info", server.info, methods=["GET"])
    if page:
        app.add_api_route("/", _page, methods=["GET"], include_in_schema=False)
        app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


async def _page() -> Response:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=PAGE_HEADERS)


# ----------------------------------------------------------------------------- errors


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        message = f"there is no {request.url.path} here; the API is under /v1"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    return JSONResponse(
        error_body(message, code=str(exc.status_code)),
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


async def _server_error(request: Request, exc: Exception) -> Response:
    return JSONResponse(
        error_body(f"the server failed: {type(exc).__name__}: {exc}", type="server_error"),
        status_code=500,
    )

"""A Gradio chat app over a tinygpt model: `python app.py` (where a Hugging Face Space runs it).

The model folder (a run folder, or an ONNX export folder) is `$TINYGPT_MODEL`, else `model/`
beside this file. It is opened with `tinygpt.serve.open_model`, the same backend `tinygpt
serve` uses: a run generates in the continuous-batching engine (so people chatting at once
share its forward passes), an ONNX folder with onnxruntime one request at a time. There is
no second generation loop here: this file turns the chat box's messages into prompt ids
(the model's chat template; a model without one continues the text it is given), submits
them, and shows the engine's text as it arrives. Stopping an answer in the page cancels its
request, which frees its row.

Gradio's analytics are off and the app is never shared through Gradio's tunnel
(`share=False`); it listens on 127.0.0.1 unless `GRADIO_SERVER_NAME` says otherwise (a Space
sets 0.0.0.0) and on `GRADIO_SERVER_PORT` (default 7860). Needs the `gradio` extra:
`pip install "tinygpt[gradio]"`. A model folder that does not exist, or is not a model,
gives one line on standard error and exit status 2.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Before gradio is imported: it reads this once.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

HERE = Path(__file__).resolve().parent
if (HERE / "src" / "tinygpt").is_dir() and str(HERE / "src") not in sys.path:
    sys.path.insert(0, str(HERE / "src"))  # a checkout of the repository, not installed

MODEL_ENV = "TINYGPT_MODEL"
DEFAULT_MODEL = HERE / "model"
MAX_BATCH = 8  # people whose answers are generated together


def model_path() -> Path:
    """The model folder: $TINYGPT_MODEL, else model/ beside this file."""
    return Path(os.environ.get(MODEL_ENV) or DEFAULT_MODEL)


def content_text(content: Any) -> str:
    """The text of a chat box message: a string, or Gradio's list of parts / part dict."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or "")
    if isinstance(content, (list, tuple)):
        return "".join(content_text(part) for part in content)
    return "" if content is None else str(content)


class ChatApp:
    """The chat box's predict function (`respond`) and page (`build`) for one served model
    (`tinygpt.serve.backend.ServedModel`)."""

    def __init__(self, served: Any) -> None:
        self.served = served
        self.backend = served.backend
        self.tokenizer = served.backend.tokenizer
        self.template = served.template
        self.context: int = served.backend.context

    def describe(self) -> str:
        parts = []
        if self.served.parameters is not None:
            parts.append(f"{self.served.parameters:,} parameters")
        parts.append(f"context {self.context} tokens")
        if self.template is None:
            parts.append("no chat template: it continues the text you send")
        else:
            parts.append(f"chat template {self.template.name}")
        parts.append(self.served.runtime)
        return " · ".join(parts)

    def prompt_ids(
        self, message: str, history: list[dict[str, Any]], system: str, max_tokens: int
    ) -> list[int]:
        """The ids to continue: the conversation through the chat template, its oldest
        exchanges left out until the answer has room (min(max_tokens, context / 2) tokens);
        without a template, the message alone, as text (one too long for the context is
        refused by the engine, with both numbers)."""
        from tinygpt.data.template import fit_history

        if self.template is None:
            return self.tokenizer.encode(message) or [self.tokenizer.eot_id]
        messages = [{"role": "system", "content": system}] if system.strip() else []
        for turn in history:
            text = content_text(turn.get("content"))
            if turn.get("role") in ("user", "assistant") and text:
                messages.append({"role": turn["role"], "content": text})
        # Gradio keeps what it showed, even an answer that was stopped before any text:
        # keep the conversation alternating, the newest message last.
        kept: list[dict[str, str]] = []
        for m in [*messages, {"role": "user", "content": message}]:
            if kept and kept[-1]["role"] == m["role"] == "user":
                kept[-1] = m
            elif (
                kept
                and kept[-1]["role"] == m["role"] == "assistant"
                or not kept
                and m["role"] == "assistant"
            ):
                continue
            else:
                kept.append(m)
        budget = self.context - min(max_tokens, self.context // 2)
        fitted, _ = fit_history(self.template, self.tokenizer, kept, budget)
        ids, _ = self.template.encode(self.tokenizer, fitted, add_generation_prompt=True)
        return ids

    def respond(
        self,
        message: Any,
        history: list[dict[str, Any]] | None,
        system: str = "",
        temperature: float = 0.8,
        top_p: float = 1.0,
        max_tokens: int = 256,
    ) -> Iterator[str]:
        """Yield the answer so far each time the engine releases text."""
        import gradio as gr

        from tinygpt.core.errors import TinyGPTError

        text = content_text(message)
        if not text.strip():
            raise gr.Error("Type a message first.")
        try:
            ids = self.prompt_ids(text, history or [], system or "", int(max_tokens))
            handle = self.backend.submit(
                ids,
                max_tokens=int(max_tokens),
                temperature=float(temperature),
                top_p=float(top_p),
                stop_token_ids=self.served.stop_ids,
            )
        except TinyGPTError as exc:  # too long, the queue full, settings out of range
            raise gr.Error(str(exc)) from None
        answer = ""
        # Leaving this loop early (the page's Stop button closes the generator) cancels
        # the request: the engine frees its row at its next step.
        for event in handle:
            answer += event.text
            if event.finish_reason in ("timeout", "error", "cancelled"):
                why = event.error or event.finish_reason
                answer += f"\n\n[the answer ended early: {why}]"
            yield answer

    def build(self) -> Any:
        """The Gradio page: a chat box and its settings."""
        import gradio as gr

        cap = max(1, min(1024, self.context - 1))
        settings = [
            gr.Textbox(
                label="System message",
                lines=2,
                visible=self.template is not None,
                placeholder="Optional: how the model should answer",
            ),
            gr.Slider(0.0, 2.0, value=0.8, step=0.05, label="Temperature"),
            gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Top-p"),
            gr.Slider(1, cap, value=min(256, cap), step=1, label="Max new tokens"),
        ]
        return gr.ChatInterface(
            self.respond,
            additional_inputs=settings,
            additional_inputs_accordion=gr.Accordion("Settings", open=False),
            title=self.served.name,
            description=self.describe(),
            analytics_enabled=False,
            concurrency_limit=self.backend.max_batch,
            fill_height=True,
        )


def open_served(path: str | os.PathLike[str]) -> Any:
    """The model folder opened for serving, as `tinygpt serve` opens it."""
    from tinygpt.serve import open_model

    return open_model(path, max_batch=MAX_BATCH, max_queue=64)


def launch(app: ChatApp, *, port: int | None = None, block: bool = True) -> Any:
    """Start the page (`block=False`: in the background, for tests); returns the Blocks."""
    import gradio as gr

    demo = app.build()
    demo.queue(default_concurrency_limit=app.backend.max_batch)
    demo.launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=port if port is not None else int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
        share=False,
        prevent_thread_lock=not block,
        ssr_mode=False,
        quiet=not block,
        theme=gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["monospace"]),
    )
    return demo


def main() -> int:
    from tinygpt.core.errors import TinyGPTError

    path = model_path()
    try:
        served = open_served(path)
    except TinyGPTError as exc:
        print(f"app.py: error: {exc} (set {MODEL_ENV} to a model folder)", file=sys.stderr)
        return 2
    try:
        import gradio  # noqa: F401
    except ImportError:
        served.backend.close()
        print('app.py: error: the app needs Gradio: pip install "tinygpt[gradio]"', file=sys.stderr)
        return 2
    try:
        launch(ChatApp(served))
    finally:
        served.backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

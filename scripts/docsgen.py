"""Numbers for the documentation, produced by the code they describe.

The walkthrough (`docs/walkthrough.md`, and its Turkish twin) and the chat templates' page
(`docs/chat.md`) hold generated blocks:

    <!-- gen:params one-layer -->
    ...text written by this module...
    <!-- /gen -->

`regenerate(text)` rewrites the inside of every block from its generator (`GENERATORS`,
name plus space-separated arguments); `python scripts/docsgen.py --write` updates the files,
`--check` fails when one is stale (the test suite runs the same check), and `--images`
redraws the pictures in `docs/images/` (a short training run; not part of the check).

Every generator is deterministic and cheap: seeded, untrained models of the `one-layer`
preset, tokenizers trained on a fixed sentence or conversation, CPU and fp32. It knows nothing about
Markdown beyond the block markers.
"""

from __future__ import annotations

import argparse
import functools
import math
import re
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from tinygpt.core.errors import TinyGPTError

BLOCK = re.compile(
    r"(?P<open><!-- gen:(?P<name>[\w-]+)(?P<args>(?: [^>]*?)?) -->\n)(?P<body>.*?)(?P<close><!-- /gen -->)",
    re.S,
)
DOCS = ("walkthrough.md", "walkthrough.tr.md", "chat.md")
SENTENCE = "To be, or not to be: that is the question.\n"
BPE_TEXT = "the cat sat on the mat. the cat ate the rat. that hat is the best hat. "
SEED = 0


def _model(preset: str = "one-layer", **changes: object):
    from tinygpt.core.config import load_config
    from tinygpt.core.model import GPT, GPTConfig

    cfg = load_config(preset).model
    if changes:
        cfg = GPTConfig(**{**cfg.__dict__, **changes})
    torch.manual_seed(SEED)
    return GPT(cfg).eval()


def _code(lines: list[str], lang: str = "text") -> str:
    return "\n".join([f"```{lang}", *lines, "```"])


# ------------------------------------------------------------------------------ generators


def gen_char_tokens() -> str:
    from tinygpt.data.tokenizer import CharTokenizer

    tok = CharTokenizer.train([SENTENCE])
    ids = tok.encode("to be")
    vocab = " ".join(f"{tok.piece(i)}={i}" for i in range(len(tok.chars)))
    return _code(
        [
            f"vocabulary ({tok.vocab_size} ids): {vocab} <|endoftext|>={tok.eot_id}",
            f"encode('to be')  -> {ids}",
            f"decode({ids}) -> {tok.decode(ids)!r}",
        ]
    )


def gen_bpe_merges() -> str:
    from tinygpt.data.tokenizer.bpe import BPETokenizer

    n_merges = 10
    tok = BPETokenizer.train([BPE_TEXT * 20], vocab_size=256 + n_merges + 1)
    lines = ["rank  left    + right   -> new id  token"]
    for rank, (a, b) in enumerate(tok.merges):
        joined = tok.token_bytes(a) + tok.token_bytes(b)
        new = tok.encode(joined.decode())[0] if len(tok.encode(joined.decode())) == 1 else -1
        lines.append(
            f"{rank:>4}  {tok.piece(a):<7} + {tok.piece(b):<7} -> {new:>6}  {tok.piece(new)}"
        )
    text = "the cat sat on the hat"
    ids = tok.encode(text)
    lines += [
        "",
        f"encode({text!r})",
        f"  bytes  : {len(text.encode())} ids {list(text.encode())[:8]}...",
        f"  merged : {len(ids)} ids {ids}",
        "  pieces : " + " ".join(tok.piece(i) for i in ids),
    ]
    return _code(lines)


def gen_params(preset: str = "one-layer") -> str:
    from tinygpt.core.info import param_breakdown

    model = _model(preset)
    c = model.config
    lines = [f"{'parameter':<28} {'shape':<14} {'count':>9}"]
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        lines.append(f"{name:<28} {str(tuple(p.shape)):<14} {p.numel():>9,}")
    total = model.num_params()
    if total != param_breakdown(c)["total"]:
        raise TinyGPTError("tinygpt.core.info.param_breakdown disagrees with the model")
    lines.append(f"{'total (tied head counted once)':<43} {total:>9,}")
    return _code(lines)


def gen_shapes(preset: str = "one-layer") -> str:
    model = _model(preset)
    c = model.config
    B, T = 2, 8
    shapes: list[tuple[str, tuple[int, ...]]] = []
    hooks = []
    block = model.blocks[0]
    watch = [
        ("tok_emb(idx)", model.tok_emb),
        ("blocks[0].norm1(x)", block.norm1),
        ("blocks[0].attn.qkv(...)", block.attn.qkv),
        ("blocks[0].attn (output)", block.attn),
        ("blocks[0].mlp.fc(...)", block.mlp.fc),
        ("blocks[0].mlp (output)", block.mlp),
        ("norm_f(x)", model.norm_f),
        ("lm_head(...) = logits", model.lm_head),
    ]
    for label, module in watch:
        hooks.append(
            module.register_forward_hook(
                lambda m, i, o, label=label: shapes.append((label, tuple(o.shape)))
            )
        )
    try:
        idx = torch.zeros(B, T, dtype=torch.long)
        model(idx)
    finally:
        for h in hooks:
            h.remove()
    H, D = c.n_head, c.head_dim
    lines = [f"B={B} T={T} C={c.n_embd} H={H} D={D} V={c.vocab_size}", ""]
    for label, shape in shapes:
        lines.append(f"{label:<28} {shape}")
        if label.startswith("blocks[0].attn.qkv"):
            lines.append(f"{'  q, k, v after view':<28} {(B, H, T, D)} each")
            lines.append(f"{'  q @ k^T (scores)':<28} {(B, H, T, T)}")
    return _code(lines)


def attention_steps(text: str = "to be") -> dict[str, torch.Tensor]:
    """Layer 0's attention for `text`, computed step by step from the model's own weights
    (char tokenizer of SENTENCE, seeded one-layer model with that vocabulary)."""
    from tinygpt.data.tokenizer import CharTokenizer

    tok = CharTokenizer.train([SENTENCE])
    model = _model(vocab_size=tok.vocab_size)
    idx = torch.tensor([tok.encode(text)])  # (1, T)
    T = idx.size(1)
    attn = model.blocks[0].attn
    with torch.no_grad():
        x = model.tok_emb(idx) + model.pos_emb.weight[:T]  # (1, T, C)
        h = model.blocks[0].norm1(x)
        H, D = attn.n_head, attn.head_dim
        q, k, _ = attn.qkv(h).split([H * D, H * D, H * D], dim=-1)
        q = q.view(1, T, H, D).transpose(1, 2)  # (1, H, T, D)
        k = k.view(1, T, H, D).transpose(1, 2)
        scores = q @ k.transpose(-2, -1) / math.sqrt(D)  # (1, H, T, T)
        mask = torch.ones(T, T, dtype=torch.bool).tril()
        masked = scores.masked_fill(~mask, float("-inf"))
        probs = masked.softmax(-1)
        reference = model.attention_maps(idx)[0]
    if not torch.allclose(probs, reference, atol=1e-6):
        raise TinyGPTError("the step-by-step attention disagrees with the model's")
    return {"scores": scores[0, 0], "masked": masked[0, 0], "probs": probs[0, 0], "ids": idx[0]}


def _matrix(m: torch.Tensor, labels: list[str], digits: int = 3) -> list[str]:
    width = digits + 4
    head = " " * 6 + "".join(f"{lab:>{width}}" for lab in labels)
    rows = [head]
    for lab, row in zip(labels, m.tolist()):
        cells = "".join(
            f"{'-inf':>{width}}" if v == float("-inf") else f"{v:>{width}.{digits}f}" for v in row
        )
        rows.append(f"{lab:>5} {cells}")
    return rows


def gen_attention_numbers(text: str = "to be") -> str:
    steps = attention_steps(text)
    labels = [repr(ch)[1:-1].replace(" ", "␣") for ch in text]
    lines = ["scores = q @ k^T / sqrt(D)   (layer 0, head 0)"]
    lines += _matrix(steps["scores"], labels)
    lines += ["", "after the causal mask"]
    lines += _matrix(steps["masked"], labels)
    lines += ["", "softmax over each row (each row sums to 1)"]
    lines += _matrix(steps["probs"], labels)
    return _code(lines)


def gen_init_loss(preset: str = "one-layer") -> str:
    model = _model(preset)
    V = model.config.vocab_size
    g = torch.Generator().manual_seed(SEED)
    idx = torch.randint(V, (4, model.config.block_size + 1), generator=g)
    with torch.no_grad():
        logits, loss = model(idx[:, :-1], idx[:, 1:])
    p = logits.softmax(-1)
    return _code(
        [
            f"V = {V}:  ln V = {math.log(V):.4f}",
            f"loss of the untrained model on random tokens = {loss.item():.4f}",
            f"its probabilities lie in [{p.min().item():.5f}, {p.max().item():.5f}];"
            f" 1/V = {1 / V:.5f}",
        ]
    )


def gen_lr_schedule(preset: str = "one-layer") -> str:
    from tinygpt.core.config import load_config
    from tinygpt.train.schedule import budget_progress, lr_at

    tc = load_config(preset).train
    steps = sorted(
        {0, tc.warmup_steps // 2, tc.warmup_steps - 1, tc.max_steps // 2, tc.max_steps - 1}
    )
    lines = [
        f"lr={tc.lr} warmup_steps={tc.warmup_steps} schedule={tc.schedule}"
        f" min_lr_ratio={tc.min_lr_ratio} max_steps={tc.max_steps}",
        "",
        "step   lr",
    ]
    for s in steps:
        lines.append(f"{s:>4}   {lr_at(s, budget_progress(s, 0, 0.0, tc), tc):.6f}")
    return _code(lines)


def gen_gqa(preset: str = "one-layer") -> str:
    from tinygpt.core.info import kv_cache_bytes_per_token, param_breakdown

    base = _model(preset).config
    lines = ["n_kv_head  qkv weight     attention params  KV cache bytes/token (fp32)"]
    for kv in sorted({base.n_head, base.n_head // 2, 1}, reverse=True):
        model = _model(preset, n_kv_head=kv)
        c = model.config
        w = tuple(model.blocks[0].attn.qkv.weight.shape)
        lines.append(
            f"{kv:>9}  {str(w):<13} {param_breakdown(c)['per_block']['attention']:>17,}"
            f"  {kv_cache_bytes_per_token(c):>10,}"
        )
    return _code(lines)


def gen_rope() -> str:
    from tinygpt.core.model import GPTConfig, apply_rope, rope_tables

    cfg = GPTConfig(vocab_size=8, block_size=16, n_layer=1, n_head=1, n_embd=8, pos="rope")
    cos, sin = rope_tables(cfg)
    g = torch.Generator().manual_seed(SEED)
    q, k = torch.randn(1, 1, 1, 8, generator=g), torch.randn(1, 1, 1, 8, generator=g)

    def score(i: int, j: int) -> float:
        qi = apply_rope(q, cos[i : i + 1], sin[i : i + 1])
        kj = apply_rope(k, cos[j : j + 1], sin[j : j + 1])
        return float((qi * kj).sum())

    lines = ["the same q and k placed at positions (i, j): the score depends only on i - j"]
    for i, j in ((3, 1), (7, 5), (12, 10), (5, 1), (9, 5)):
        lines.append(f"  i={i:>2} j={j:>2}  i-j={i - j}  q·k = {score(i, j):+.4f}")
    return _code(lines)


def gen_kv_cache() -> str:
    from tinygpt.infer.generate import generate_ids

    # Wide initial weights (init_std 1.0) so that greedy decoding does not repeat one token.
    model = _model(init_std=1.0)
    prompt = [1, 2, 3, 4]

    def greedy(n: int, cache: bool) -> list[int]:
        return generate_ids(model, prompt, max_new_tokens=n, temperature=0, use_cache=cache)[0]

    long = model.config.block_size + 16
    return _code(
        [
            f"greedy, with the KV cache   : {greedy(12, True)}",
            f"greedy, without (full input): {greedy(12, False)}",
            f"{long} new tokens, past the {model.config.block_size}-token context:"
            f" identical = {greedy(long, True) == greedy(long, False)}",
        ]
    )


CHAT_EXAMPLE = [
    {"role": "system", "content": "Answer in one sentence."},
    {"role": "user", "content": "What is the capital of Türkiye?"},
    {"role": "assistant", "content": "Ankara."},
    {"role": "user", "content": "And its largest city?"},
    {"role": "assistant", "content": "Istanbul."},
]


def gen_chat_template(name: str) -> str:
    """A template's special tokens, its rendering of CHAT_EXAMPLE, and what the loss
    scores, from `ChatTemplate.encode` with a character tokenizer (one id per character,
    so the scored ids decode to exactly the scored text)."""
    from tinygpt.data.template import get_template
    from tinygpt.data.tokenizer import CharTokenizer

    t = get_template(name)
    text = t.render(CHAT_EXAMPLE)
    tok = CharTokenizer.train([text]).with_special_tokens(t.special_tokens)
    ids, mask = t.encode(tok, CHAT_EXAMPLE)
    spans: list[list[int]] = []
    for i, (token, m) in enumerate(zip(ids, mask)):
        if m:
            if not i or not mask[i - 1]:
                spans.append([])
            spans[-1].append(token)
    prompt = t.render(CHAT_EXAMPLE[:2], add_generation_prompt=True)
    return _code(
        [
            f"special tokens : {' '.join(t.special_tokens)}",
            f"end of turn    : {t.end_of_turn}",
            "",
            "render(messages):",
            *text.splitlines(),
            "",
            f"{len(ids)} ids, {sum(mask)} scored by the loss:",
            *(f"  {tok.decode(span)!r}" for span in spans),
            "",
            "render(messages[:2], add_generation_prompt=True):",
            f"  {prompt!r}",
        ]
    )


def gen_chat_jinja(name: str) -> str:
    from tinygpt.data.template import get_template

    return _code(get_template(name).jinja().splitlines(), "jinja")


GENERATORS: dict[str, Callable[..., str]] = {
    "char-tokens": gen_char_tokens,
    "bpe-merges": gen_bpe_merges,
    "params": gen_params,
    "shapes": gen_shapes,
    "attention-numbers": gen_attention_numbers,
    "init-loss": gen_init_loss,
    "lr-schedule": gen_lr_schedule,
    "gqa": gen_gqa,
    "rope": gen_rope,
    "kv-cache": gen_kv_cache,
    "chat-template": gen_chat_template,
    "chat-jinja": gen_chat_jinja,
}


# --------------------------------------------------------------------------------- driver


@functools.cache
def render(name: str, args: tuple[str, ...] = ()) -> str:
    """The body of block gen:name with `args` (cached: the generators are deterministic)."""
    if name not in GENERATORS:
        raise TinyGPTError(f"unknown generated block gen:{name}; known: {', '.join(GENERATORS)}")
    return GENERATORS[name](*args)


def regenerate(text: str) -> str:
    """`text` with the body of every generated block rewritten (results cached per block)."""
    done: dict[tuple[str, str], str] = {}

    def replace(m: re.Match[str]) -> str:
        key = (m["name"], m["args"].strip())
        if key not in done:
            done[key] = render(key[0], tuple(key[1].split()))
        return f"{m['open']}{done[key]}\n{m['close']}"

    return BLOCK.sub(replace, text)


def docs_dir() -> Path:
    """The repository's docs/ folder (this script lives in scripts/)."""
    folder = Path(__file__).resolve().parents[1] / "docs"
    if not folder.is_dir():
        raise TinyGPTError("docs/ not found next to the source tree; pass --docs DIR")
    return folder


def stale(folder: Path) -> list[Path]:
    return [
        p
        for p in (folder / name for name in DOCS)
        if p.is_file()
        and regenerate(p.read_text(encoding="utf-8")) != p.read_text(encoding="utf-8")
    ]


def make_images(folder: Path, steps: int = 200) -> list[Path]:
    """Train the one-layer model briefly on a repetitive passage and draw its loss curves
    and attention maps into `folder/images/` (needs matplotlib)."""
    import tempfile

    from tinygpt.cli import main as cli
    from tinygpt.infer.loader import load_run
    from tinygpt.train.plots import _pyplot, attention_figure, plot_run

    plt = _pyplot()
    images = folder / "images"
    images.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        txt = Path(tmp) / "text.txt"
        txt.write_text(SENTENCE * 400, encoding="utf-8")
        data, run = Path(tmp) / "data", Path(tmp) / "one-layer"
        cli(["prepare", "--input", str(txt), "--tokenizer", "char", "--out", str(data)])
        cli(
            [
                "train", "--data", str(data), "--out", str(run), "--preset", "one-layer",
                "--max-steps", str(steps), "--no-progress", "--seed", str(SEED),
                "--train.batch_size", "8", "--model.block_size", "48",
                "--train.eval_interval", "50", "--train.warmup_steps", "30",
            ]
        )  # fmt: skip
        loss, _ = plot_run(run)
        out = [images / "loss-one-layer.png"]
        out[0].write_bytes(loss.read_bytes())
        loaded = load_run(run)
        fig = attention_figure(loaded.model, loaded.tokenizer, "that is the question", title="")
        out.append(images / "attention-one-layer.png")
        fig.savefig(out[-1], dpi=80)
        plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python scripts/docsgen.py", description=__doc__)
    parser.add_argument("--docs", type=Path, default=None, help="the docs folder")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="rewrite stale generated blocks")
    mode.add_argument("--check", action="store_true", help="exit 1 if a block is stale")
    mode.add_argument("--images", action="store_true", help="redraw docs/images/*.png")
    args = parser.parse_args(argv)
    try:
        folder = args.docs or docs_dir()
        if args.images:
            for p in make_images(folder):
                print(f"wrote {p} ({p.stat().st_size // 1024} KB)")
            return 0
        old = stale(folder)
        if args.check:
            for p in old:
                print(f"{p} is out of date; run python scripts/docsgen.py --write", file=sys.stderr)
            return 1 if old else 0
        for p in old:
            p.write_text(regenerate(p.read_text(encoding="utf-8")), encoding="utf-8")
            print(f"updated {p}")
        return 0
    except TinyGPTError as exc:
        print(f"tinygpt: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

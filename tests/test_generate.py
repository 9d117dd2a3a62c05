"""Generation: KV cache equals no cache, seeds, stopping, streaming, CLI. (The sampling
rules themselves are tested in tests/test_sampling.py.)"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tinygpt.core.errors import TinyGPTError
from tinygpt.core.model import GPT, GPTConfig
from tinygpt.infer.generate import (
    StreamDecoder,
    TextGenerator,
    generate_ids,
    generate_tokens,
)


class ByteTokenizer:
    """Every token is one byte; 256 is end-of-text. Multi-byte characters span tokens."""

    vocab_size = 257
    eot_id = 256
    special_tokens = {"<|endoftext|>": 256}
    kind = "bpe"

    def encode(self, text: str, *, allowed_special: bool = False) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def token_bytes(self, id: int) -> bytes:
        return b"" if id == 256 else bytes([id])


def tiny_model(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    base = dict(vocab_size=257, block_size=16, n_layer=2, n_head=4, n_embd=32, init_std=0.2)
    return GPT(GPTConfig(**{**base, **kw})).eval()


class ScriptedModel(nn.Module):
    """Says the bytes of `script` after a prompt of `prompt_len` tokens, then end-of-text."""

    def __init__(self, script: bytes, prompt_len: int = 1) -> None:
        super().__init__()
        self.config = GPTConfig(vocab_size=257, block_size=512, n_layer=1, n_head=1, n_embd=8)
        self.script, self.prompt_len = script, prompt_len
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, idx, targets=None, *, cache=None, last_only=False, attention_mask=None):
        step = idx.size(1) - self.prompt_len
        nxt = self.script[step] if step < len(self.script) else 256
        logits = torch.zeros(idx.size(0), 1, 257)
        logits[:, :, nxt] = 10.0
        return logits, None


PRIMES = [dict(), dict(pos="rope"), dict(n_kv_head=2), dict(pos="rope", n_kv_head=1)]


@pytest.mark.parametrize("kw", PRIMES)
@pytest.mark.parametrize("chunk", [None, 3])
def test_greedy_cache_equals_no_cache_across_context_limit(kw, chunk):
    model = tiny_model(**kw)
    prompt = torch.randint(0, 257, (2, 5))
    common = dict(max_new_tokens=40, temperature=0.0)  # 45 tokens > block_size 16
    fast = torch.stack(list(generate_tokens(model, prompt, prefill_chunk=chunk, **common)), 1)
    slow = torch.stack(list(generate_tokens(model, prompt, use_cache=False, **common)), 1)
    assert fast.shape == (2, 40)
    assert torch.equal(fast, slow)


@pytest.mark.parametrize("kw", [dict(), dict(pos="rope", n_kv_head=2)])
def test_seeded_sampling_cache_equals_no_cache(kw):
    """Greedy output of a random model repeats itself; sampling visits varied tokens and
    still agrees, because both paths give the same probabilities to the same generator."""
    model = tiny_model(**kw)
    prompt = torch.randint(0, 257, (2, 3))
    common = dict(max_new_tokens=40, temperature=1.0, seed=11)
    fast = torch.stack(list(generate_tokens(model, prompt, **common)), 1)
    slow = torch.stack(list(generate_tokens(model, prompt, use_cache=False, **common)), 1)
    assert len(set(fast[0].tolist())) > 20
    assert torch.equal(fast, slow)


@pytest.mark.parametrize("kw", [dict(), dict(pos="rope", n_kv_head=2)])
def test_prompt_longer_than_context(kw):
    model = tiny_model(**kw)
    prompt = torch.randint(0, 257, (1, 30))
    common = dict(max_new_tokens=8, temperature=0.0)
    fast = torch.stack(list(generate_tokens(model, prompt, prefill_chunk=4, **common)), 1)
    slow = torch.stack(list(generate_tokens(model, prompt, use_cache=False, **common)), 1)
    assert torch.equal(fast, slow)


def test_seeds():
    model = tiny_model()
    kw = dict(max_new_tokens=20, temperature=1.0, num_samples=2)
    state = torch.random.get_rng_state()
    a = generate_ids(model, [1, 2, 3], seed=7, **kw)
    b = generate_ids(model, [1, 2, 3], seed=7, **kw)
    c = generate_ids(model, [1, 2, 3], seed=8, **kw)
    assert a == b
    assert a != c
    assert a[0] != a[1]  # rows of one batch are different samples
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched


def test_stops_at_end_of_text():
    model = tiny_model()
    greedy = generate_ids(model, [5, 6], max_new_tokens=6, temperature=0.0)[0]
    # Declare the third greedy token to be end-of-text: output stops before it.
    eot = greedy[2]
    cut = generate_ids(model, [5, 6], max_new_tokens=6, temperature=0.0, eot_id=eot)[0]
    assert cut == greedy[: greedy.index(eot)]


def test_stops_at_any_stop_id_and_ended_rows_repeat_it():
    model = tiny_model()
    greedy = generate_ids(model, [5, 6], max_new_tokens=6, temperature=0.0)[0]
    end = greedy[3]  # an end-of-turn token, say; end-of-text stays an end too
    cut = generate_ids(
        model, [5, 6], max_new_tokens=6, temperature=0.0, eot_id=256, stop_ids=[end]
    )[0]
    assert cut == greedy[: greedy.index(end)]
    prompt = torch.tensor([[5, 6], [7, 8]])
    steps = list(generate_tokens(model, prompt, max_new_tokens=8, temperature=0.0, stop_ids=[end]))
    rows = torch.stack(steps, 1).tolist()
    first = rows[0].index(end)
    assert rows[0][first:] == [end] * (len(rows[0]) - first)  # repeated once ended


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (dict(temperature=-1.0), r"temperature = -1.0 must not be negative"),
        (dict(top_k=0), r"top_k = 0 must be at least 1"),
        (dict(top_p=0.0), r"top_p = 0.0 must be in \(0, 1\]"),
        (dict(top_p=1.5), r"top_p = 1.5 must be in \(0, 1\]"),
        (dict(repetition_penalty=0.0), r"repetition_penalty = 0.0 must be a positive number"),
        (dict(max_new_tokens=-1), r"max_new_tokens = -1 must be at least 0"),
        (dict(num_samples=0), r"num_samples = 0 must be at least 1"),
        (dict(temperature=float("nan")), r"temperature = nan must be a finite number"),
        (dict(repetition_penalty=float("nan")), r"repetition_penalty = nan must be a finite"),
        (dict(seed=10**23), r"seed = 100000000000000000000000 is too large"),
        (dict(max_new_tokens=10**20), r"max_new_tokens = 100000000000000000000 is too large"),
        (dict(num_samples=10**9), r"num_samples = 1000000000 must be at most 1,024 \(every"),
    ],
)
def test_bad_sampling_arguments(kw, message):
    gen = TextGenerator(tiny_model(), ByteTokenizer())
    with pytest.raises(TinyGPTError, match=message):
        gen.generate("hi", **{"max_new_tokens": 3, **kw})


TEXT = "Işık ğüzel, şöyle: 😀 çok İyi! ✓"


def test_stream_decoder_never_splits_characters():
    tok = ByteTokenizer()
    dec = StreamDecoder(tok)
    pieces = [dec.push(b) for b in TEXT.encode("utf-8")] + [dec.flush()]
    assert "".join(pieces) == TEXT
    assert all("\ufffd" not in p for p in pieces)
    assert "😀" in pieces  # a 4-byte character comes out whole, once complete


def test_streaming_generation_pieces():
    gen = TextGenerator(ScriptedModel(TEXT.encode("utf-8")), ByteTokenizer())
    pieces = list(gen.stream("", temperature=0.0, max_new_tokens=100, use_cache=False))
    assert "".join(pieces) == TEXT
    assert all(p and "\ufffd" not in p for p in pieces)
    assert gen.generate("", temperature=0.0, max_new_tokens=100, use_cache=False) == TEXT


def test_stop_strings_streaming_and_batch():
    gen = TextGenerator(ScriptedModel(TEXT.encode("utf-8")), ByteTokenizer())
    kw = dict(temperature=0.0, max_new_tokens=100, use_cache=False)
    pieces = list(gen.stream("", stop=["😀", "never"], **kw))
    assert "".join(pieces) == "Işık ğüzel, şöyle: "
    assert gen.generate("", stop="ş", **kw) == "I"
    assert gen.generate("", stop="zel", **kw) == "Işık ğü"
    # A stop string that only begins to match is released once it cannot match.
    assert gen.generate("", stop="şöx", **kw) == TEXT
    assert gen.generate("", stop=["ok", "ğü"], num_samples=2, **kw) == ["Işık "] * 2


def test_max_new_tokens_cuts_mid_character():
    gen = TextGenerator(ScriptedModel("😀".encode()), ByteTokenizer())
    assert gen.generate("", temperature=0.0, max_new_tokens=2, use_cache=False) == "\ufffd"
    assert gen.generate("", temperature=0.0, max_new_tokens=0, use_cache=False) == ""


def test_text_generator_on_real_model():
    gen = TextGenerator(tiny_model(), ByteTokenizer())
    a = gen.generate("ab", max_new_tokens=12, seed=3, temperature=1.0, top_k=None)
    assert a == gen.generate("ab", max_new_tokens=12, seed=3, temperature=1.0, top_k=None)
    many = gen.generate("ab", max_new_tokens=5, seed=3, num_samples=3, top_p=0.9)
    assert isinstance(many, list) and len(many) == 3
    greedy = gen.generate("ab", max_new_tokens=10, temperature=0.0)
    assert "".join(gen.stream("ab", max_new_tokens=10, temperature=0.0)) == greedy


# ------------------------------------------------------------------------------- the CLI


@pytest.fixture
def char_run(tmp_path):
    from tinygpt.core.config import RunConfig
    from tinygpt.data.tokenizer import train_tokenizer
    from tinygpt.infer.loader import save_model_run

    tok = train_tokenizer("char", ["hello world, ahoy there"])
    config = RunConfig()
    config.model = GPTConfig(
        vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16
    )
    torch.manual_seed(0)
    run = tmp_path / "run"
    save_model_run(run, config, GPT(config.model), tok)
    return run


def test_cli_sample(char_run, capsys):
    from tinygpt.cli import main

    args = [
        "sample",
        str(char_run),
        "--prompt",
        "hello",
        "--max-new-tokens",
        "20",
        "--temperature",
        "0",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    plain = capsys.readouterr().out
    assert plain.startswith("hello")
    assert main([*args, "--stream"]) == 0
    assert capsys.readouterr().out == plain
    assert main([*args[:-4], "--seed", "1", "--num-samples", "2", "--checkpoint", "latest"]) == 0
    assert capsys.readouterr().out.count("-" * 40) == 1


def test_load_api(char_run):
    import tinygpt.infer.generate

    gen = tinygpt.infer.generate.load(char_run, checkpoint="best")
    text = gen.generate("ahoy", max_new_tokens=5, seed=0)
    assert isinstance(text, str)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--prompt", "hello ☃"], "☃"),
        (["--temperature", "-1"], "--temperature = -1.0 must not be negative"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--checkpoint", "step-99"], "step-99"),
    ],
)
def test_cli_sample_errors(char_run, capsys, extra, message):
    from tinygpt.cli import main

    assert main(["sample", str(char_run), "--max-new-tokens", "3", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tinygpt: error:") and message in err


def test_cli_sample_missing_run(tmp_path, capsys):
    from tinygpt.cli import main

    assert main(["sample", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


# ------------------------------------------------------------------ prompts of different lengths


def greedy_alone(model, prompt: list[int], n: int) -> tuple[list[int], float]:
    """Greedy tokens of one prompt by full passes (no cache, the last block_size tokens),
    and the smallest gap between the two largest logits over the steps."""
    seq, margin = list(prompt), float("inf")
    bs = model.config.block_size
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([seq[-bs:]]))[0][0, -1]
            top = logits.topk(2).values
            margin = min(margin, (top[0] - top[1]).item())
            seq.append(int(logits.argmax()))
    return seq[len(prompt) :], margin


# Batch shape changes the last bits of a CPU matmul (the kernel blocks the rows differently),
# so a batched row's logits differ from its logits alone by about 1e-6. Greedy tokens can only
# differ where the top two logits are closer than that; each test checks that the gaps of its
# prompts are above 1e-4, so that "identical tokens" is a fair claim.
MIN_MARGIN = 1e-4
PROMPTS = [[5, 9, 100, 7, 3, 250, 11], [42], [17, 200, 201, 3], [88, 1, 2, 3, 4, 5, 6, 7, 9, 10]]


@pytest.mark.parametrize("kw", PRIMES)
@pytest.mark.parametrize(("use_cache", "chunk"), [(True, None), (True, 3), (False, None)])
def test_left_padded_batch_generates_what_each_prompt_generates_alone(kw, use_cache, chunk):
    """40 new tokens past a context of 16: the rows' windows slide at different steps."""
    model = tiny_model(seed=4, **kw)  # a seed whose greedy margins are all above 1e-3
    T = max(len(p) for p in PROMPTS)
    prompt = torch.tensor([[0] * (T - len(p)) + p for p in PROMPTS])
    mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in PROMPTS])
    steps = generate_tokens(
        model,
        prompt,
        max_new_tokens=40,
        temperature=0.0,
        attention_mask=mask,
        use_cache=use_cache,
        prefill_chunk=chunk,
    )
    batched = torch.stack(list(steps), 1).tolist()
    for row, p in zip(batched, PROMPTS):
        expected, margin = greedy_alone(model, p, 40)
        assert margin > MIN_MARGIN
        assert row == expected


def test_text_generator_batch_of_prompts():
    gen = TextGenerator(tiny_model(), ByteTokenizer())
    prompts = ["ab", "", "a longer prompt", "ğ"]
    common = dict(max_new_tokens=12, temperature=0.0)
    alone = [gen.generate(p, **common) for p in prompts]
    for p in prompts:
        ids = gen.encode_prompt(p)
        assert greedy_alone(gen.model, ids, 12)[1] > MIN_MARGIN
    assert gen.generate(prompts, **common) == alone
    many = gen.generate(prompts[:2], num_samples=2, seed=1, max_new_tokens=5, temperature=1.0)
    assert [len(m) for m in many] == [2, 2]
    assert many == gen.generate(
        prompts[:2], num_samples=2, seed=1, max_new_tokens=5, temperature=1.0
    )
    # row r draws from the seed's child r: the first row is the first prompt's sample alone
    alone_sample = gen.generate(prompts[0], seed=1, max_new_tokens=5, temperature=1.0)
    assert many[0][0] == alone_sample != many[0][1]
    stop = [alone[0][3:5], alone[2][:2]]
    cut = [t[: min((t.find(s) for s in stop if s in t), default=len(t))] for t in alone]
    assert len(cut[0]) <= 3 and cut[2] == ""
    assert gen.generate(prompts, stop=stop, **common) == cut
    with pytest.raises(TinyGPTError, match="no prompts were given"):
        gen.generate([])


def test_batch_of_scripted_rows_stop_independently():
    gen = TextGenerator(ScriptedModel(TEXT.encode("utf-8")), ByteTokenizer())
    kw = dict(temperature=0.0, max_new_tokens=100, use_cache=False)
    assert gen.generate(["", ""], stop="ğü", **kw) == ["Işık "] * 2


@pytest.mark.parametrize(
    "mask",
    [[[1, 1, 0], [1, 1, 1]], [[0, 1, 0], [1, 1, 1]], [[0, 0, 0], [1, 1, 1]], [[1, 1], [1, 1]]],
)
def test_attention_mask_must_be_left_padding(mask):
    with pytest.raises(TinyGPTError, match="attention_mask"):
        list(
            generate_tokens(
                tiny_model(),
                torch.zeros(2, 3, dtype=torch.long),
                max_new_tokens=2,
                attention_mask=torch.tensor(mask),
            )
        )

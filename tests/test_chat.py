"""Chat templates: exact renderings, loss masks token by token, parity with transformers'
`apply_chat_template` on our Jinja, message checks, the run folder's template file, and the
special-token rule on the training and the prompt path."""

from __future__ import annotations

import json
import string

import numpy as np
import pytest
import torch

from tinygpt.core.errors import TinyGPTError
from tinygpt.core.model import GPT, GPTConfig
from tinygpt.data.template import (
    DEFAULT_TEMPLATE,
    TEMPLATE_FILE,
    get_template,
    list_templates,
    load_template,
    save_template,
    template_for_jinja,
    validate_messages,
)
from tinygpt.data.tokenizer import EOT, CharTokenizer, load_tokenizer, train_tokenizer
from tinygpt.infer.generate import TextGenerator
from tinygpt.train.finetune import masked_targets
from tokenizer_text import corpus

CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Türkiye'nin başkenti?"},
    {"role": "assistant", "content": "Ankara."},
]

RENDERED = {
    "default": (
        "<|system|>\nBe brief.<|end|>\n"
        "<|user|>\nHi there<|end|>\n"
        "<|assistant|>\nHello!<|end|>\n"
        "<|user|>\nTürkiye'nin başkenti?<|end|>\n"
        "<|assistant|>\nAnkara.<|end|>\n"
    ),
    "chatml": (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi there<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nTürkiye'nin başkenti?<|im_end|>\n"
        "<|im_start|>assistant\nAnkara.<|im_end|>\n"
    ),
    # The system message goes in front of the first instruction, joined by a blank line.
    "inst": (
        "<INST>Be brief.\n\nHi there</INST><RESP>Hello!</RESP>"
        "<INST>Türkiye'nin başkenti?</INST><RESP>Ankara.</RESP>"
    ),
}
GENERATION_PROMPT = {
    "default": "<|assistant|>\n",
    "chatml": "<|im_start|>assistant\n",
    "inst": "<RESP>",
}


# Hand-made pieces of each rendering: (text, is a special token, scored by the loss).
def T(text):  # template text or a prompt message: not scored
    return (text, False, False)


def S(text):  # a special token the template placed, not scored
    return (text, True, False)


def A(text):  # an assistant message: scored
    return (text, False, True)


def E(text):  # the end-of-turn token closing an assistant message: scored
    return (text, True, True)


PIECES = {
    "default": [
        S("<|system|>"), T("\nBe brief."), S("<|end|>"), T("\n"),
        S("<|user|>"), T("\nHi there"), S("<|end|>"), T("\n"),
        S("<|assistant|>"), T("\n"), A("Hello!"), E("<|end|>"), T("\n"),
        S("<|user|>"), T("\nTürkiye'nin başkenti?"), S("<|end|>"), T("\n"),
        S("<|assistant|>"), T("\n"), A("Ankara."), E("<|end|>"), T("\n"),
    ],
    "chatml": [
        S("<|im_start|>"), T("system\nBe brief."), S("<|im_end|>"), T("\n"),
        S("<|im_start|>"), T("user\nHi there"), S("<|im_end|>"), T("\n"),
        S("<|im_start|>"), T("assistant\n"), A("Hello!"), E("<|im_end|>"), T("\n"),
        S("<|im_start|>"), T("user\nTürkiye'nin başkenti?"), S("<|im_end|>"), T("\n"),
        S("<|im_start|>"), T("assistant\n"), A("Ankara."), E("<|im_end|>"), T("\n"),
    ],
    "inst": [
        S("<INST>"), T("Be brief.\n\nHi there"), S("</INST>"),
        S("<RESP>"), A("Hello!"), E("</RESP>"),
        S("<INST>"), T("Türkiye'nin başkenti?"), S("</INST>"),
        S("<RESP>"), A("Ankara."), E("</RESP>"),
    ],
}  # fmt: skip

TEMPLATES = list(RENDERED)
SPECIAL_EVERYWHERE = sorted({s for n in TEMPLATES for s in get_template(n).special_tokens})


@pytest.fixture(scope="module")
def char_base():
    """A character tokenizer that knows every character of the tests' conversations."""
    texts = [*RENDERED.values(), string.printable]
    return CharTokenizer.train(texts, unk=True)


@pytest.fixture(scope="module")
def bpe_base():
    return train_tokenizer("bpe", corpus(60_000, seed=3), vocab_size=600, backend="hf")


def with_template(tok, name):
    return tok.with_special_tokens(get_template(name).special_tokens)


# ------------------------------------------------------------------------------ rendering


def test_templates_are_listed_and_default_first():
    assert list_templates()[0] == DEFAULT_TEMPLATE == "default"
    assert set(TEMPLATES) <= set(list_templates())


@pytest.mark.parametrize("name", TEMPLATES)
def test_render_is_exact(name):
    t = get_template(name)
    assert t.render(CONV) == RENDERED[name]
    assert "".join(p[0] for p in PIECES[name]) == RENDERED[name]
    # The prompt for the last answer is the rendering up to where that answer begins.
    head = RENDERED[name][: RENDERED[name].rindex("Ankara.")]
    assert t.render(CONV[:-1], add_generation_prompt=True) == head
    assert head.endswith(GENERATION_PROMPT[name])
    assert t.assistant[0] == GENERATION_PROMPT[name]


@pytest.mark.parametrize(
    ("name", "end", "specials"),
    [
        ("default", "<|end|>", ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")),
        ("chatml", "<|im_end|>", ("<|im_start|>", "<|im_end|>")),
        ("inst", "</RESP>", ("<INST>", "</INST>", "<RESP>", "</RESP>")),
    ],
)
def test_special_tokens_and_end_of_turn(name, end, specials):
    t = get_template(name)
    assert t.end_of_turn == end and t.special_tokens == specials


def test_inst_system_message_rules():
    t = get_template("inst")
    user = {"role": "user", "content": "Soru"}
    assert t.render([{"role": "system", "content": "Kısa ol."}, user]) == (
        "<INST>Kısa ol.\n\nSoru</INST>"
    )
    # An empty system message adds nothing; without one the instruction is as typed.
    assert t.render([{"role": "system", "content": ""}, user]) == "<INST>Soru</INST>"
    assert t.render([user], add_generation_prompt=True) == "<INST>Soru</INST><RESP>"


# ---------------------------------------------------------------------------- loss masks


@pytest.mark.parametrize("name", TEMPLATES)
def test_loss_mask_token_by_token(char_base, name):
    """With one id per character, the expected ids and mask follow from the hand-made
    pieces: each special piece is one id, each text piece one id per character."""
    tok = with_template(char_base, name)
    expected_ids: list[int] = []
    expected_mask: list[int] = []
    for text, special, scored in PIECES[name]:
        piece_ids = [tok.special_tokens[text]] if special else [tok.stoi[c] for c in text]
        expected_ids += piece_ids
        expected_mask += [int(scored)] * len(piece_ids)
    ids, mask = get_template(name).encode(tok, CONV)
    assert ids == expected_ids
    assert mask == expected_mask
    assert tok.decode(ids) == RENDERED[name]


@pytest.mark.parametrize("name", TEMPLATES)
def test_mask_aligns_with_shifted_targets(char_base, name):
    """The model reads ids[:t+1] and predicts ids[t+1]: targets = ids[1:] where the mask
    of ids[1:] is set, -1 elsewhere. The first scored target is predicted from the last
    token of the assistant's header; the scored targets spell the answers and their end
    tokens, nothing else."""
    t = get_template(name)
    tok = with_template(char_base, name)
    ids, mask = t.encode(tok, CONV)
    targets = masked_targets(ids, mask)
    assert len(targets) == len(ids) - 1
    for i, target in enumerate(targets):
        assert target == (ids[i + 1] if mask[i + 1] else -1)
    first = next(i for i, target in enumerate(targets) if target != -1)
    assert tok.decode(ids[: first + 1]).endswith(GENERATION_PROMPT[name])
    assert tok.decode([targets[first]]) == "H"
    scored = [target for target in targets if target != -1]
    assert tok.decode(scored) == f"Hello!{t.end_of_turn}Ankara.{t.end_of_turn}"
    # Inputs and targets as a training batch row sees them; the loss ignores the -1s.
    inputs, y = torch.tensor(ids[:-1]), torch.tensor(targets)
    assert inputs.shape == y.shape and int((y != -1).sum()) == sum(mask[1:])


@pytest.mark.parametrize("name", TEMPLATES)
def test_bpe_mask_covers_exactly_the_answers(bpe_base, name):
    t = get_template(name)
    tok = with_template(bpe_base, name)
    ids, mask = t.encode(tok, CONV)
    runs, current = [], []
    for i, m in zip(ids, mask):
        if m:
            current.append(i)
        elif current:
            runs.append(current)
            current = []
    runs += [current] if current else []
    assert [tok.decode(r) for r in runs] == [f"Hello!{t.end_of_turn}", f"Ankara.{t.end_of_turn}"]


def test_train_on_prompt_scores_everything(char_base):
    t = get_template("default")
    tok = with_template(char_base, "default")
    ids, mask = t.encode(tok, CONV, train_on_prompt=True)
    assert mask == [1] * len(ids) and ids == t.encode(tok, CONV)[0]


def test_generation_prompt_scores_nothing(char_base):
    t = get_template("chatml")
    tok = with_template(char_base, "chatml")
    ids, mask = t.encode(tok, CONV[:-1], add_generation_prompt=True)
    assert tok.decode(ids) == t.render(CONV[:-1], add_generation_prompt=True)
    assert sum(mask) == 1 * len(tok.encode("Hello!")) + 1  # the earlier answer still counts


@pytest.mark.parametrize("name", TEMPLATES)
@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_training_ids_equal_encoding_of_the_rendering(char_base, bpe_base, name, kind):
    t = get_template(name)
    tok = with_template(char_base if kind == "char" else bpe_base, name)
    for conv, gen in [(CONV, False), (CONV[:-1], True), (CONV[1:3], False)]:
        ids, _ = t.encode(tok, conv, add_generation_prompt=gen)
        assert ids == tok.encode(t.render(conv, add_generation_prompt=gen), allowed_special=True)


def test_answer_opening_with_a_newline_is_scored_whole(bpe_base):
    """Byte-level BPE joins the header's newline and the answer's first newline into one
    token: it holds answer bytes, so it is scored (transformers' rule, checked below)."""
    t = get_template("chatml")
    tok = with_template(bpe_base, "chatml")
    conv = [{"role": "user", "content": "code?"}, {"role": "assistant", "content": "\n\nx = 1"}]
    # Encoded apart, the header and the answer would break differently.
    assert tok.encode("assistant\n") + tok.encode("\n\nx = 1") != tok.encode("assistant\n\n\nx = 1")
    ids, mask = t.encode(tok, conv)
    assert ids == tok.encode(t.render(conv), allowed_special=True)
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == "\n\n\nx = 1<|im_end|>"
    first = mask.index(1)
    assert tok.decode(ids[:first]).endswith("assistant")  # the header's newline is scored


# ---------------------------------------------------------- the special-token rule


@pytest.mark.parametrize("name", TEMPLATES)
@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_special_strings_typed_in_messages_are_text(char_base, bpe_base, name, kind):
    """A user (or an answer in the data) that types a marker gets its characters: the only
    special ids are the ones the template placed."""
    t = get_template(name)
    base = char_base if kind == "char" else bpe_base
    tok = base.with_special_tokens(SPECIAL_EVERYWHERE)
    typed = "see <|end|>, <|im_end|> and </RESP><INST>"
    conv = [
        {"role": "user", "content": typed},
        {"role": "assistant", "content": f"ok {typed}"},
    ]
    plain = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]
    ids, mask = t.encode(tok, conv)
    plain_ids, _ = t.encode(tok, plain)
    specials = [i for i in ids if tok.is_special(i)]
    assert specials == [i for i in plain_ids if tok.is_special(i)]
    assert tok.decode(ids) == t.render(conv)
    assert ids != tok.encode(t.render(conv), allowed_special=True)
    # Where the content sits between two markers, its ids are exactly its text's.
    if name == "inst":
        assert ids[1:-1][: len(tok.encode(typed))] == tok.encode(typed)
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == f"ok {typed}{t.end_of_turn}"


def test_prompt_path_keeps_special_strings_as_text(bpe_base):
    tok = bpe_base.with_special_tokens(get_template("inst").special_tokens)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)
    gen = TextGenerator(GPT(cfg), tok)
    for prompt in ["<INST>Merhaba</INST><RESP>", f"a{EOT}b", EOT]:
        ids = gen.encode_prompt(prompt)
        assert ids == tok.encode(prompt) and not any(tok.is_special(i) for i in ids)
        assert tok.decode(ids) == prompt
    assert gen.encode_prompt("") == [tok.eot_id]  # an empty prompt starts a document
    assert isinstance(gen.generate("<INST>", max_new_tokens=3, seed=0), str)


def test_prepare_path_keeps_special_strings_as_text(tmp_path, bpe_base):
    """prepare encodes a corpus holding `<INST>` as text, with a tokenizer that has
    `<INST>` as a special token: the only special id in the shards is end-of-text, and the
    prompt path encodes the same string to the same ids."""
    from tinygpt.data.prepare import open_dataset, prepare

    tok = bpe_base.with_special_tokens(get_template("inst").special_tokens)
    tok_file = tok.save(tmp_path / "tok.json")
    text = "<INST>Soru</INST><RESP>Cevap</RESP>\n"
    src = tmp_path / "data.txt"
    src.write_text(text * 3, encoding="utf-8")
    out = prepare(str(src), tmp_path / "ds", tokenizer=str(tok_file), progress=False, workers=1)
    ds = open_dataset(out)
    ids = np.concatenate([np.asarray(ds.train), np.asarray(ds.val)]).tolist()
    assert {i for i in ids if tok.is_special(i)} == {tok.eot_id}
    doc = [i for i in ids if i != tok.eot_id]
    assert doc == tok.encode(text * 3)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)
    assert TextGenerator(GPT(cfg), tok).encode_prompt(text) == tok.encode(text)


# ------------------------------------------------------------------- twin: transformers

transformers = pytest.importorskip("transformers")

PARITY_CONVS = [
    CONV,
    [{"role": "user", "content": "One turn only."}, {"role": "assistant", "content": "Yes."}],
    [
        {"role": "system", "content": ""},
        {"role": "user", "content": "Boş sistem mesajı"},
        {"role": "assistant", "content": "Tamam 👍🏽"},
    ],
    [
        {"role": "user", "content": "code?\r\n  indented"},
        {"role": "assistant", "content": "\n\nx = 1\n"},
        {"role": "user", "content": "  spaces  "},
        {"role": "assistant", "content": ""},
    ],
]


def _hf(tok, template, tmp_path, generation_blocks=False):
    path = tok.save(tmp_path / f"{template.name}-{tok.kind}.json")
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=str(path))
    fast.chat_template = template.jinja(generation_blocks=generation_blocks)
    return fast


@pytest.mark.parametrize("name", TEMPLATES)
@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_jinja_in_transformers_gives_our_text_ids_and_mask(
    char_base, bpe_base, tmp_path, name, kind
):
    t = get_template(name)
    tok = with_template(char_base if kind == "char" else bpe_base, name)
    plain = _hf(tok, t, tmp_path)
    marked = _hf(tok, t, tmp_path, generation_blocks=True)
    for conv in PARITY_CONVS:
        if kind == "char" and any(c not in tok.stoi for m in conv for c in m["content"]):
            conv = [{**m, "content": m["content"].encode("ascii", "ignore").decode()} for m in conv]
        prompt = conv[:-1]
        for fast in (plain, marked):
            text = fast.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
            assert text == t.render(prompt, add_generation_prompt=True)
            ids = fast.apply_chat_template(
                prompt, tokenize=True, add_generation_prompt=True, return_dict=False
            )
            assert ids == t.encode(tok, prompt, add_generation_prompt=True)[0]
            assert fast.apply_chat_template(conv, tokenize=False) == t.render(conv)
        out = marked.apply_chat_template(
            conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids, mask = t.encode(tok, conv)
        assert out["input_ids"] == ids
        assert out["assistant_masks"] == mask


@pytest.mark.parametrize("name", TEMPLATES)
def test_jinja_refuses_what_we_refuse(bpe_base, tmp_path, name):
    t = get_template(name)
    fast = _hf(with_template(bpe_base, name), t, tmp_path)
    user, bot = {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}
    system = {"role": "system", "content": "s"}
    stranger = {"role": "bot", "content": "c"}
    for bad in ([user, user], [bot], [user, system], [system], [], [user, stranger]):
        with pytest.raises(TinyGPTError):
            validate_messages(bad)
        with pytest.raises(Exception, match="alternate|system|user message|empty|roles are"):
            fast.apply_chat_template(bad, tokenize=False)
    with pytest.raises(Exception, match="end with one"):
        fast.apply_chat_template([user, bot], tokenize=False, add_generation_prompt=True)


def test_transformers_sanitized_markers_are_text_too(bpe_base, tmp_path):
    """transformers' `sanitize_control_tokens` keeps a typed marker as text as we do: same
    text, and no special id where the user typed one."""
    t = get_template("default")
    tok = with_template(bpe_base, "default")
    fast = _hf(tok, t, tmp_path)
    conv = [{"role": "user", "content": "what does <|end|> mean?"}]
    theirs = fast.apply_chat_template(
        conv, add_generation_prompt=True, sanitize_control_tokens=True, return_dict=False
    )
    ours, _ = t.encode(tok, conv, add_generation_prompt=True)
    assert tok.decode(theirs) == tok.decode(ours) == t.render(conv, add_generation_prompt=True)
    special = [i for i in ours if tok.is_special(i)]
    assert special == [i for i in theirs if tok.is_special(i)]
    assert len(special) == 3  # <|user|>, <|end|>, <|assistant|>


def test_template_for_jinja_finds_ours():
    for name in TEMPLATES:
        t = get_template(name)
        assert template_for_jinja(t.jinja()) is t
        assert template_for_jinja(t.jinja(generation_blocks=True)) is t
    assert template_for_jinja("{{ messages }}") is None


# ----------------------------------------------------------------------------- bad input


def test_unknown_template_suggests_the_closest():
    with pytest.raises(
        TinyGPTError, match=r"unknown chat template 'chatlm'; did you mean 'chatml'"
    ):
        get_template("chatlm")
    with pytest.raises(TinyGPTError, match="choose one of: default, chatml, inst"):
        get_template("zzzzzz")


U, B = {"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}


@pytest.mark.parametrize(
    ("messages", "kwargs", "error"),
    [
        ("hello", {}, "messages must be a list .* got str"),
        ({"role": "user", "content": "q"}, {}, "messages must be a list .* got dict"),
        ([], {}, "the conversation is empty"),
        ([U, "a"], {}, "message 1 is a str, not a"),
        ([{"role": "user"}], {}, "message 0 has no 'content'"),
        ([U, {"content": "a"}], {}, "message 1 has no 'role'"),
        ([U, {"role": "bot", "content": "a"}], {}, "message 1 has role 'bot'; roles are"),
        ([{"role": "usr", "content": "q"}], {}, "did you mean 'user'"),
        ([U, {"role": "assistant", "content": ["a"]}], {}, "message 1's content is a list"),
        ([U, {"role": "assistant", "content": None}], {}, "message 1's content is a NoneType"),
        ([U, U], {}, "message 1 is from the user where the assistant was expected"),
        ([B], {}, "message 0 is from the assistant where the user was expected"),
        ([U, B, B], {}, "message 2 is from the assistant where the user"),
        ([U, {"role": "system", "content": "s"}], {}, "message 1 is a system message"),
        ([{"role": "system", "content": "s"}], {}, "no user message"),
        ([U, B], {"add_generation_prompt": True}, r"last message \(message 1\)"),
        ([U], {"training": True}, "no assistant message"),
    ],
)
def test_malformed_messages(messages, kwargs, error):
    with pytest.raises(TinyGPTError, match=error):
        validate_messages(messages, **kwargs)


def test_encode_checks_messages_and_tokenizer(char_base):
    t = get_template("default")
    tok = with_template(char_base, "default")
    with pytest.raises(TinyGPTError, match="no assistant message"):
        t.encode(tok, [U])  # a training example without an answer
    assert t.encode(tok, [U], add_generation_prompt=True)[0]
    with pytest.raises(TinyGPTError, match="message 1 is from the user"):
        t.render([U, U])
    with pytest.raises(TinyGPTError, match=r"lacks the special token\(s\) <\|system\|>"):
        t.encode(char_base, [U, B])


# ---------------------------------------------------------------------------- run folder


def test_template_file_round_trip(tmp_path):
    assert load_template(tmp_path) is None  # a pre-trained run has no template
    for name in TEMPLATES:
        path = save_template(tmp_path, get_template(name))
        assert path == tmp_path / TEMPLATE_FILE
        data = json.loads(path.read_text(encoding="utf-8"))
        assert data == {"format": 1, "name": name, "jinja": get_template(name).jinja()}
        assert load_template(tmp_path) is get_template(name)
    assert sorted(p.name for p in tmp_path.iterdir()) == [TEMPLATE_FILE]  # no temp files


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ("{not json", "is not valid JSON"),
        ('["default"]', "does not name a chat template"),
        ('{"format": 2, "name": "default", "jinja": ""}', "has format 2"),
        ('{"format": 1, "name": "chatlm", "jinja": ""}', "did you mean 'chatml'"),
        ('{"format": 1, "name": "inst", "jinja": "{{ x }}"}', "differs from this version's"),
    ],
)
def test_bad_template_file(tmp_path, content, error):
    (tmp_path / TEMPLATE_FILE).write_text(content, encoding="utf-8")
    with pytest.raises(TinyGPTError, match=error):
        load_template(tmp_path)


def test_saved_tokenizer_keeps_template_ids(char_base, tmp_path):
    tok = with_template(char_base, "inst")
    back = load_tokenizer(tok.save(tmp_path))
    t = get_template("inst")
    assert t.encode(back, CONV) == t.encode(tok, CONV)

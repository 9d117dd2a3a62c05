"""Instruction examples: the four shapes, malformed records reported by line, the examples
folder (ids and masks equal the template's, reuse, damage), the context rule, the batch
source over examples and the evaluator of held-out answers."""

from __future__ import annotations

import json
import socket
import string

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tinygpt.core.errors import TinyGPTError
from tinygpt.core.model import GPT, GPTConfig
from tinygpt.core.runtime import Dist
from tinygpt.data.batches import ExampleBatches
from tinygpt.data.examples import (
    ExampleSplit,
    fit_to_context,
    open_examples,
    prepare_examples,
    read_conversations,
    resolve_format,
)
from tinygpt.data.records import detect_shape, to_messages
from tinygpt.data.template import get_template
from tinygpt.data.tokenizer import CharTokenizer
from tinygpt.infer.scoring import ExampleEvaluator
from tinygpt.train.finetune import masked_targets

ALPHABET = string.ascii_letters + string.digits + " .,;:!?'\"-()\n"


def write_jsonl(path, records):
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def tokenizer_file(tmp_path):
    return CharTokenizer(sorted(set(ALPHABET))).save(tmp_path / "base-tokenizer.json")


def qa(n, long=False):
    """n alpaca records with distinct answers."""
    return [
        {
            "instruction": f"Question {i}?",
            "output": ("Answer " + "x" * (60 if long else 0)) + str(i),
        }
        for i in range(n)
    ]


# ------------------------------------------------------------------------------ shapes


def test_each_shape_becomes_messages():
    alpaca = to_messages(
        {"instruction": "Translate.", "input": "merhaba", "output": "hello"}, "alpaca"
    )
    assert alpaca == [
        {"role": "user", "content": "Translate.\n\nmerhaba"},
        {"role": "assistant", "content": "hello"},
    ]
    no_input = to_messages({"instruction": "Hi?", "input": "", "output": "Hey."}, "alpaca")
    assert no_input[0]["content"] == "Hi?"
    with_system = to_messages(
        {"system": "Be brief.", "prompt": "Hi?", "completion": "Hey."}, "prompt"
    )
    assert [m["role"] for m in with_system] == ["system", "user", "assistant"]
    assert to_messages({"prompt": "a", "response": "b"}, "prompt")[1]["content"] == "b"
    turns = [
        {"role": "user", "content": "1"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "3"},
        {"role": "assistant", "content": "4", "name": "extra keys are dropped"},
    ]
    assert to_messages({"messages": turns}, "messages")[-1] == {"role": "assistant", "content": "4"}


def test_records_that_cannot_be_examples_say_why():
    with pytest.raises(TinyGPTError, match="keys found: q, a; --format alpaca needs"):
        to_messages({"q": 1, "a": 2}, "alpaca")
    with pytest.raises(TinyGPTError, match="field 'output' is a list, not text"):
        to_messages({"instruction": "x", "output": ["y"]}, "alpaca")
    with pytest.raises(TinyGPTError, match="from the user where the assistant was expected"):
        to_messages({"messages": [{"role": "user", "content": "a"}] * 2}, "messages")
    with pytest.raises(TinyGPTError, match="no assistant message"):
        to_messages({"messages": [{"role": "user", "content": "a"}]}, "messages")
    assert detect_shape([1, 2]) is None and detect_shape({"text": "t"}) == "text"


def test_auto_reads_the_first_record_and_names_unknown_keys(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ["", "not json", {"prompt": "a", "completion": "b"}])
    assert resolve_format(str(path), "auto") == "prompt"
    assert resolve_format(str(write_jsonl(tmp_path / "t.jsonl", [{"text": "x"}])), "auto") == "text"
    (tmp_path / "plain.txt").write_text("some text")
    assert resolve_format(str(tmp_path / "plain.txt"), "auto") == "text"
    odd = write_jsonl(tmp_path / "odd.jsonl", [{"question": "a", "answer": "b"}])
    with pytest.raises(TinyGPTError) as exc:
        resolve_format(str(odd), "auto")
    message = str(exc.value)
    assert "odd.jsonl:1: data shape not recognised: keys found: question, answer" in message
    assert 'accepted: alpaca {"instruction", "input"?, "output"}; prompt' in message
    with pytest.raises(TinyGPTError, match="did you mean 'alpaca'"):
        resolve_format(str(odd), "alpacca")


def test_malformed_lines_are_skipped_reported_by_line_and_counted(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [qa(1)[0], "{broken", [1, 2], {"prompt": "x", "response": "y"}, qa(2)[1]],
    )
    notes = []
    conv = read_conversations(str(path), "alpaca", report=notes.append)
    assert len(conv.messages) == 2 and conv.records == 5
    assert [w.rsplit(":", 1)[1] for w, _ in conv.skipped] == ["2", "3", "4"]
    assert notes[0].startswith(f"skipped {path}:2: not valid JSON")
    assert notes[1] == f"skipped {path}:3: a list, not a JSON object"
    assert "keys found: prompt, response" in notes[2]


def test_a_file_without_a_usable_example_is_one_clear_error(tmp_path):
    bad_roles = {
        "messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}]
    }
    path = write_jsonl(tmp_path / "d.jsonl", [bad_roles, bad_roles])
    with pytest.raises(TinyGPTError) as exc:
        read_conversations(str(path), "messages", report=None)
    assert "holds no usable example: all 2 records were skipped; the first, " in str(exc.value)
    assert "d.jsonl:1: message 0 is from the assistant where the user was expected" in str(
        exc.value
    )
    assert "\n" not in str(exc.value)


# ------------------------------------------------------------------------ the folder


def test_prepared_ids_and_masks_are_the_templates_and_the_folder_is_reused(
    tmp_path, tokenizer_file
):
    records = [
        *qa(12),
        {"messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Farewell"},
        ]},
    ]  # fmt: skip
    src = write_jsonl(tmp_path / "d.jsonl", records[:12])
    first = prepare_examples(str(src), tmp_path / "ex", tokenizer=tokenizer_file, template="chatml")
    assert not first.reused
    ex = open_examples(first.path)
    meta = ex.meta
    assert meta["kind"] == "examples" and meta["data_format"] == "alpaca"
    assert meta["template"] == "chatml" and meta["added_tokens"] == ["<|im_start|>", "<|im_end|>"]
    assert len(ex.train) + len(ex.val) == 12 and len(ex.val) >= 1
    template = get_template("chatml")
    tok = ex.load_tokenizer()
    texts = set()
    for split in (ex.train, ex.val):
        for i in range(len(split)):
            ids, mask = split.example(i)
            text = tok.decode(ids.tolist())
            n = int(text.split("Question ")[1].split("?")[0])
            expected = template.encode(tok, to_messages(records[n], "alpaca"))
            assert ids.tolist() == expected[0] and mask.tolist() == expected[1]
            texts.add(n)
    assert texts == set(range(12))  # every example once, in one split
    assert meta["splits"]["train"]["scored"] == int(ex.train.mask.sum())
    again = prepare_examples(str(src), tmp_path / "ex", tokenizer=tokenizer_file, template="chatml")
    assert again.reused and again.meta["key"] == meta["key"]
    # a multi-turn conversation: both answers scored, nothing else
    multi = write_jsonl(tmp_path / "m.jsonl", [records[12]] * 2)
    m = open_examples(prepare_examples(str(multi), None, tokenizer=tokenizer_file).path)
    ids, mask = m.train.example(0)
    scored = m.load_tokenizer().decode([i for i, s in zip(ids.tolist(), mask.tolist()) if s])
    assert scored == "Hello<|end|>Farewell<|end|>"


def test_an_examples_folder_is_not_text_and_damage_is_detected(tmp_path, tokenizer_file):
    from tinygpt.data.prepare import open_dataset

    src = write_jsonl(tmp_path / "d.jsonl", qa(4))
    out = prepare_examples(str(src), tmp_path / "ex", tokenizer=tokenizer_file).path
    with pytest.raises(TinyGPTError, match="holds chat examples, not text; fine-tune on it with"):
        open_dataset(out)
    (out / "train.mask").write_bytes(b"\x01")
    with pytest.raises(TinyGPTError, match="train.mask is missing or has the wrong size"):
        open_examples(out)


def test_examples_need_the_bases_tokenizer_and_enough_of_them(tmp_path, tokenizer_file):
    src = write_jsonl(tmp_path / "d.jsonl", qa(1))
    with pytest.raises(TinyGPTError, match="1 usable example; fine-tuning needs at least 2"):
        prepare_examples(str(src), None, tokenizer=tokenizer_file)
    with pytest.raises(TinyGPTError, match="give the base's run folder or its tokenizer.json"):
        prepare_examples(str(src), None, tokenizer=tmp_path / "nothing")
    with pytest.raises(TinyGPTError, match="unknown chat template 'chatlm'; did you mean 'chatml'"):
        prepare_examples(str(src), None, tokenizer=tokenizer_file, template="chatlm")


def test_characters_a_char_base_never_saw_are_refused_with_counts(tmp_path, tokenizer_file):
    src = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "Ankara?", "output": "Başkent ş"}] * 2)
    with pytest.raises(TinyGPTError, match=r"4 characters \(1 distinct\).*'ş' \(U\+015F\) x4"):
        prepare_examples(str(src), None, tokenizer=tokenizer_file)


def test_a_json_list_and_hf_datasets_are_read_too(tmp_path, tokenizer_file, monkeypatch):
    listed = tmp_path / "alpaca_data.json"
    listed.write_text(json.dumps(qa(3)), encoding="utf-8")
    conv = read_conversations(str(listed), "alpaca", report=None)
    assert len(conv.messages) == 3 and conv.where[2] == f"{listed}[2]"

    pytest.importorskip("datasets")
    folder = tmp_path / "hfdata"  # a dataset `datasets.load_dataset` reads from disk
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", qa(3))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing may come from the Hub
    assert resolve_format(f"hf:{folder}", "auto") == "alpaca"
    out = prepare_examples(f"hf:{folder}", None, tokenizer=tokenizer_file)
    assert out.meta["splits"]["train"]["examples"] + out.meta["splits"]["val"]["examples"] == 3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the socket is
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    with pytest.raises(TinyGPTError) as exc:
        prepare_examples("hf:someone/instructions", None, tokenizer=tokenizer_file, fmt="alpaca")
    assert "cannot stream hf:someone/instructions" in str(exc.value)
    assert "\n" not in str(exc.value) and "--input PATH" in str(exc.value)


def test_examples_longer_than_the_context_are_dropped_and_counted():
    # three examples of 4, 9 and 6 tokens; the second has nothing scored after its first token
    mask = np.array([0, 1, 1, 1] + [1] + [0] * 8 + [0, 0, 1, 1, 1, 1], dtype=np.uint8)
    split = ExampleSplit(np.arange(19), mask, np.array([0, 4, 13, 19]))
    assert fit_to_context(split, 5)[0].tolist() == [0, 2]  # 6 tokens = 5 inputs + 1
    keep, dropped = fit_to_context(split, 4)
    assert keep.tolist() == [0] and dropped == 2


# ------------------------------------------------------------- the batch source over examples


def _split(lengths, seed=0):
    """Examples whose first token is their index (so rows can be identified), random masks
    with the first token never scored."""
    rng = np.random.default_rng(seed)
    ids, mask, offsets = [], [], [0]
    for i, n in enumerate(lengths):
        ids += [i] + rng.integers(50, 90, n - 1).tolist()
        mask += [0] + (rng.random(n - 1) < 0.6).astype(int).tolist()
        mask[-1] = 1
        offsets.append(offsets[-1] + n)
    return ExampleSplit(
        np.array(ids, np.uint16), np.array(mask, np.uint8), np.array(offsets, np.int64)
    )


def _source(split, keep, batch=4, world=Dist(), **kw):
    return ExampleBatches(
        split.ids, split.mask, split.offsets, keep, batch, 7, world, "cpu", pad_id=99, **kw
    )


def test_an_epoch_draws_every_example_once_padded_and_masked():
    lengths = [5, 9, 3, 7, 4, 6, 8, 5, 3, 10, 6]
    split = _split(lengths)
    keep = np.array([i for i in range(len(lengths)) if i != 4])  # one left out
    source = _source(split, keep)
    seen = []
    for _ in range(5):  # 20 rows = two epochs of 10
        x, y = source.next()
        assert x.shape[0] == 4 and x.shape == y.shape
        ids_in_batch = x[:, 0].tolist()
        assert x.shape[1] == max(lengths[i] for i in ids_in_batch) - 1  # padded to the longest
        for row, i in enumerate(ids_in_batch):
            ids, mask = split.example(i)
            n = len(ids) - 1
            assert x[row, :n].tolist() == ids[:-1].tolist()
            assert y[row, :n].tolist() == masked_targets(ids.tolist(), mask.tolist())
            assert (x[row, n:] == 99).all() and (y[row, n:] == -1).all()  # padding never scored
        seen += ids_in_batch
    assert sorted(seen[:10]) == sorted(keep.tolist()) == sorted(seen[10:])  # without replacement
    assert seen[:10] != seen[10:]  # reshuffled each epoch
    assert source.epochs == 2.0
    everything = _source(split, keep, train_on_prompt=True)
    x, y = everything.next()
    real = x != 99
    assert (y[real] != -1).all()


def test_the_position_survives_a_checkpoint_and_ranks_split_the_batch():
    split = _split([4, 6, 5, 7, 3, 8, 5])
    keep = np.arange(7)
    a = _source(split, keep, batch=4)
    for _ in range(3):
        a.next()
    state, tensors = a.state()
    b = _source(split, keep, batch=4)
    b.restore(json.loads(json.dumps(state)), tensors)
    for _ in range(4):
        xa, ya = a.next()
        xb, yb = b.next()
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    one = _source(split, keep, batch=4).next()[0][:, 0].tolist()
    ranks = [_source(split, keep, batch=4, world=Dist(rank=r, world_size=2)) for r in (0, 1)]
    rows = [r.next()[0][:, 0].tolist() for r in ranks]
    assert rows[0] == one[0::2] and rows[1] == one[1::2]


def test_the_evaluator_scores_only_the_held_out_answers():
    split = _split([5, 9, 3, 7, 6])
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=100, block_size=16, n_layer=1, n_head=2, n_embd=16)).eval()
    nll, count = 0.0, 0
    with torch.no_grad():
        for i in range(len(split)):
            ids, mask = split.example(i)
            logits, _ = model(torch.from_numpy(ids[None, :-1]))
            y = torch.tensor(masked_targets(ids.tolist(), mask.tolist()))
            nll += F.cross_entropy(logits[0], y, ignore_index=-1, reduction="sum").item()
            count += int((y != -1).sum())
    ev = ExampleEvaluator(split, range(len(split)), batch_size=2, examples=3, device="cpu")
    result = ev.final(model)
    assert result.tokens == count
    assert result.nll == pytest.approx(nll, rel=1e-5)
    assert len(ev.subset) == 3 and ev.estimate(model) > 0

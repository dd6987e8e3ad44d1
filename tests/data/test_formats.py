"""Every supported schema reads into the right (prompt, chosen, rejected); ties and drops are counted."""

import csv
import gzip
import json
from pathlib import Path

import pytest

from hafrm.data.formats import DataOptions, parse_mapping
from hafrm.data.inspect import convert_source
from hafrm.data.io import load_pairs, load_source
from hafrm.errors import DataError

ASSETS = Path(__file__).parents[1] / "assets"
USER = "user"


def _jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _user(text):
    return [{"role": USER, "content": text}]


def test_pku_native_safer_better_and_the_safety_filter():
    pairs, rep = load_source(str(ASSETS / "pku_native.jsonl"))
    assert rep.format == "pku" and rep.kept == 3
    assert pairs[0].chosen.startswith("I can't help") and pairs[2].chosen == "Melt plastic into a blade."
    better, _ = load_source(str(ASSETS / "pku_native.jsonl"), DataOptions(pku_label="better"))
    assert better[0].chosen == "Use a tension wrench and a pick."
    filtered, rep = load_source(str(ASSETS / "pku_native.jsonl"), DataOptions(pku_safety_filter=True))
    assert len(filtered) == 1 and rep.dropped == {"both responses safe or both unsafe (safety filter)": 2}
    assert rep.records == 3 and rep.accounted == 3


def test_arena_winner_ties_and_multi_turn_history():
    pairs, rep = load_source(str(ASSETS / "arena.jsonl"))
    assert rep.format == "arena" and rep.dropped == {"tie": 2} and rep.kept == 2
    assert pairs[0].prompt == _user("Name a prime.") and (pairs[0].chosen, pairs[0].rejected) == ("7", "9")
    # model_b won; the two sides differ from the first reply on, so later turns stay in the response
    multi = pairs[1]
    assert multi.prompt == _user("Hi")
    assert multi.chosen == "Hey there!\n\nHuman: Capital of France?\n\nAssistant: Paris."
    assert multi.rejected.startswith("Hello.") and multi.rejected.endswith("Lyon.")
    assert rep.notes == {"differ before the last turn (later turns kept in the response)": 1}


def test_alpacafarm_instruction_and_input_make_the_prompt():
    pairs, rep = load_source(str(ASSETS / "alpacafarm.jsonl"))
    assert rep.format == "alpacafarm"
    assert pairs[0].prompt == _user("Translate to French.\n\nGood morning") and pairs[0].chosen == "Bonjour"
    assert pairs[1].prompt == _user("Give a synonym of big.") and pairs[1].chosen == "large"


def test_rewardbench_keeps_the_subset_and_llmbar_labels():
    pairs, rep = load_source(str(ASSETS / "rewardbench.jsonl"))
    assert rep.format == "rewardbench"
    assert [p.meta["subset"] for p in pairs] == ["math-prm", "llmbar-natural", "refusals-dangerous"]
    pairs, rep = load_source(str(ASSETS / "llmbar.jsonl"))
    assert rep.format == "llmbar" and [p.chosen for p in pairs] == ["apple, pear", "yes"]


def test_hh_transcripts_become_multi_turn_prompts(tmp_path):
    history = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Best pet?"
    path = _jsonl(
        tmp_path / "hh.jsonl",
        [
            {"chosen": history + "\n\nAssistant: A dog.", "rejected": history + "\n\nAssistant: Rocks."},
            {  # differ before the last turn: counted, later turns kept in the responses
                "chosen": "\n\nHuman: Q\n\nAssistant: A1\n\nHuman: more\n\nAssistant: A2",
                "rejected": "\n\nHuman: Q\n\nAssistant: B1",
            },
        ],
    )
    pairs, rep = load_source(str(path))
    assert rep.format == "hh" and rep.kept == 2
    assert pairs[0].prompt == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Best pet?"},
    ]
    assert (pairs[0].chosen, pairs[0].rejected) == ("A dog.", "Rocks.")
    assert pairs[1].prompt == _user("Q") and pairs[1].chosen == "A1\n\nHuman: more\n\nAssistant: A2"
    assert sum(rep.notes.values()) == 1


def test_pandalm_majority_autoj_ties_and_pku_pairs(tmp_path):
    panda = _jsonl(
        tmp_path / "panda.jsonl",
        [
            {"instruction": "I", "input": "x", "response1": "a", "response2": "b", **_votes(2, 2, 1)},
            {"instruction": "I", "input": "", "response1": "a", "response2": "b", **_votes(1, 0, 1)},
            {"instruction": "I", "input": "", "response1": "a", "response2": "b", **_votes(0, 0, 2)},
            {"instruction": "I", "input": "", "response1": "a", "response2": "b", **_votes(0, 1, 2)},
        ],
    )
    pairs, rep = load_source(str(panda))
    assert rep.format == "pandalm" and [p.chosen for p in pairs] == ["b", "a"]
    assert rep.dropped == {"tie (annotator majority)": 2}
    autoj = _jsonl(
        tmp_path / "autoj.jsonl",
        [{"scenario": "s", "label": lab, "prompt": "p", "response 1": "r1", "response 2": "r2"} for lab in (0, 1, 2)],
    )
    pairs, rep = load_source(str(autoj))
    assert [p.chosen for p in pairs] == ["r1", "r2"] and rep.dropped == {"tie": 1} and pairs[0].meta["subset"] == "s"
    pku = _jsonl(tmp_path / "pku.jsonl", [{"prompt": "p", "response": ["safe", "unsafe"]}])
    assert load_pairs(pku)[0].chosen == "safe"


def _votes(a, b, c):
    return {"annotator1": a, "annotator2": b, "annotator3": c}


def test_field_mapping_with_nested_paths(tmp_path):
    path = _jsonl(tmp_path / "own.jsonl", [{"q": {"text": "Why?"}, "answers": ["Because.", "No."], "m": 2}])
    opts = DataOptions(mapping=parse_mapping(["prompt=q.text", "chosen=answers.0", "rejected=answers.1", "margin=m"]))
    pairs, rep = load_source(str(path), opts)
    assert rep.format == "mapped" and pairs[0].prompt == _user("Why?") and pairs[0].margin == 2.0
    with pytest.raises(DataError, match=r"own.jsonl:1: missing field 'answers.5' \(mapped to rejected\)"):
        load_source(str(path), DataOptions(mapping=parse_mapping(["chosen=answers.0", "rejected=answers.5"])))
    with pytest.raises(DataError, match="TARGET=FIELD"):
        parse_mapping(["answer"])


def test_csv_parquet_json_list_and_gzip_sources(tmp_path):
    recs = [{"prompt": f"p{i}", "chosen": f"c{i}", "rejected": f"r{i}"} for i in range(3)]
    with (tmp_path / "d.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["prompt", "chosen", "rejected"])
        w.writeheader()
        w.writerows(recs)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(recs), tmp_path / "d.parquet")
    (tmp_path / "d.json").write_text(json.dumps(recs))
    with gzip.open(tmp_path / "d.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in recs))
    for name in ("d.csv", "d.parquet", "d.json", "d.jsonl.gz"):
        pairs = load_pairs(tmp_path / name)
        assert [p.chosen for p in pairs] == ["c0", "c1", "c2"], name
        assert pairs[0].source == "d"
    with pytest.raises(DataError, match="unknown file type"):
        load_pairs(_jsonl(tmp_path / "d.txt", recs))


def test_csv_errors_name_the_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("prompt,chosen,rejected\np,c,r\np,,r\n")
    with pytest.raises(DataError, match=r"bad.csv:3: field 'chosen' is empty"):
        load_pairs(path)


def test_hub_ids_go_through_datasets_and_fail_clearly_offline(monkeypatch):
    import datasets

    def fake_load(name, split):
        assert (name, split) == ("org/prefs", "test")
        return [{"prompt": "p", "chosen": "c", "rejected": "r"}]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    pairs, rep = load_source("org/prefs:test")
    assert pairs[0].chosen == "c" and rep.source == "org/prefs:test"

    def offline(name, split):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="org/prefs: cannot load Hub dataset: ConnectionError"):
        load_source("org/prefs")
    with pytest.raises(DataError, match="data/missing.jsonl: no such file"):  # a path, not a Hub id
        load_source("data/missing.jsonl")


def test_skip_mode_counts_every_bad_record_and_raise_mode_names_it(tmp_path):
    lines = [
        json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"}),
        "{not json",
        json.dumps({"prompt": "p", "chosen": "same", "rejected": "same"}),
        json.dumps({"prompt": "p", "chosen": "", "rejected": "r"}),
        json.dumps({"prompt": "p", "chosen": ["x"], "rejected": "r"}),
        json.dumps([1, 2]),
    ]
    path = tmp_path / "mixed.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"mixed.jsonl:2: invalid JSON.*--on-error skip"):
        load_source(str(path))
    pairs, rep = load_source(str(path), DataOptions(on_error="skip"))
    assert len(pairs) == 1 and rep.records == 6
    assert rep.skipped == {
        "invalid JSON": 1,
        "identical responses": 1,
        "empty response": 1,
        "not a string": 1,
        "not an object": 1,
    }
    assert rep.first_error["identical responses"].startswith(f"{path}:3:")


def test_unknown_format_names_the_fields(tmp_path):
    path = _jsonl(tmp_path / "odd.jsonl", [{"question": "q", "answer": "a"}])
    with pytest.raises(DataError, match=r"odd.jsonl:1: unknown format \(fields: answer, question\).*--map"):
        load_source(str(path))
    with pytest.raises(DataError, match="unknown format 'nope'"):
        load_source(str(path), DataOptions(format="nope"))


def test_per_source_cap_is_a_counted_seeded_sample(tmp_path):
    path = _jsonl(tmp_path / "big.jsonl", [{"prompt": f"p{i}", "chosen": "c", "rejected": "r"} for i in range(50)])
    pairs, rep = load_source(str(path), DataOptions(max_pairs=10, seed=3))
    again, _ = load_source(str(path), DataOptions(max_pairs=10, seed=3))
    other, _ = load_source(str(path), DataOptions(max_pairs=10, seed=4))
    assert len(pairs) == 10 and rep.capped == 40 and rep.accounted == 50
    assert pairs == again and pairs != other
    order = [int(p.prompt[0]["content"][1:]) for p in pairs]
    assert order == sorted(order)  # file order kept


def test_convert_writes_what_load_reads_back(tmp_path):
    out = tmp_path / "norm.jsonl"
    report = convert_source(str(ASSETS / "arena.jsonl"), DataOptions(), out)
    assert report.kept == 2
    original = load_pairs(ASSETS / "arena.jsonl")
    back = load_pairs(out)
    assert [(p.prompt, p.chosen, p.rejected, p.source) for p in back] == [
        (p.prompt, p.chosen, p.rejected, p.source) for p in original
    ]

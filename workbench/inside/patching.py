"""Activation patching and ablation on generation runs, and patching sweeps over layers x blocks (x steps).

The patches themselves run inside :meth:`workbench.Workbench.run_with_cache` (``patches=``): a tensor
cached from run B replaces the same name in run A the moment A produces it. Here: the ablations
(zero, mean), and :func:`patching_sweep`, which patches one DiT layer point of one block (or step)
at a time from a source run into a target run and measures what changes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from cola_core.generate import Generation
from cola_core.hook_points import DIT_LAYER_POINTS

from ..errors import WorkbenchError
from .cache import ActivationCache, PatchValue
from .names import NamesFilter, RunNames

if TYPE_CHECKING:
    from ..session import Workbench

ROW_AXES = ("B", "L", "T")   # samples and positions: what a mean ablation averages over
OUTCOME_NAMES = ["block.*.z_final", "block.*.token_ids", "block.*.logits"]   # what a sweep's metrics read


# -- ablation ---------------------------------------------------------------------------------------
def ablation_patches(run: RunNames, points: str | Sequence[str], kind: str = "zero",
                     reference: Mapping[str, torch.Tensor] | None = None) -> dict[str, PatchValue]:
    """Patches that ablate every name ``points`` selects: ``zero`` sets it to 0; ``mean`` to its mean over
    samples and positions, taken from ``reference`` (a cache of other runs, e.g. many prompts) or, without
    one, from the run itself."""
    if kind not in ("zero", "mean"):
        raise WorkbenchError(f"ablation kind must be 'zero' or 'mean', got {kind!r}")
    patches: dict[str, PatchValue] = {}
    for name in sorted(run.select(points, "ablation points")):
        if kind == "zero":
            patches[name] = torch.zeros_like
            continue
        section, point = run.locate(name)
        axes = tuple(i for i, s in enumerate(section.points[point][0].split()) if s in ROW_AXES)
        if reference is None:
            patches[name] = lambda x, axes=axes: x.mean(dim=axes, keepdim=True).expand_as(x)
            continue
        if name not in reference:
            raise WorkbenchError(f"mean ablation of {name}: the reference cache has no {name}; cache it with "
                                 f"names_filter={name!r}")
        mean = reference[name].float().mean(dim=axes, keepdim=True)
        want = [1 if i in axes else n for i, n in enumerate(section.shape(point))]
        if list(mean.shape) != want:
            raise WorkbenchError(f"mean ablation of {name}: the reference is {tuple(reference[name].shape)}, "
                                 f"this run's {name} is {section.shape(point)}")
        patches[name] = lambda x, mean=mean: mean.to(x).expand_as(x)
    return patches


def ablate(wb: "Workbench", prompts: str | Sequence[str], points: str | Sequence[str], kind: str = "zero",
           reference: Mapping[str, torch.Tensor] | None = None, names_filter: NamesFilter = None,
           sample_ids: Sequence[int] | None = None, **knobs) -> tuple[list[Generation], ActivationCache]:
    """Generate with the named points ablated (``kind`` zero or mean, see :func:`ablation_patches`);
    returns what :meth:`~workbench.Workbench.run_with_cache` returns."""
    patches = ablation_patches(wb.run_names(prompts, sample_ids, **knobs), points, kind, reference)
    return wb.run_with_cache(prompts, names_filter=names_filter, sample_ids=sample_ids, patches=patches, **knobs)


# -- outcomes and metrics ---------------------------------------------------------------------------
@dataclass
class Outcome:
    """What one generation run produced, per block: final latents, chosen tokens and decoder logits."""

    generations: list[Generation]
    z_final: torch.Tensor     # (n_blocks, B, bs, C)
    token_ids: torch.Tensor   # (n_blocks, B, T)
    logits: torch.Tensor      # (n_blocks, B, T, V) fp32, the decoder's distribution given the run's own latents

    @classmethod
    def of(cls, generations: list[Generation], cache: Mapping[str, torch.Tensor]) -> "Outcome":
        blocks = range(sum(1 for n in cache if n.endswith(".z_final")))
        stack = lambda field: torch.stack([cache[f"block.{b}.{field}"] for b in blocks])   # noqa: E731
        return cls(generations, stack("z_final"), stack("token_ids"), stack("logits"))


Metric = Callable[[Outcome, Outcome], float]   # (patched run, source run) -> number


def target_logprob(run: Outcome, source: Outcome) -> float:
    """Mean decoder log-probability of the source run's tokens given the patched run's latents (nats per token)."""
    logp = run.logits.log_softmax(dim=-1).gather(-1, source.token_ids[..., None].to(run.logits.device))
    return float(logp.mean())


def final_latent_distance(run: Outcome, source: Outcome) -> float:
    """L2 distance of the last block's final latent to the source run's, mean over samples."""
    return float((run.z_final[-1] - source.z_final[-1]).flatten(1).norm(dim=1).mean())


DEFAULT_METRICS: dict[str, Metric] = {"target_logprob": target_logprob, "final_latent_distance": final_latent_distance}


# -- the sweep --------------------------------------------------------------------------------------
@dataclass
class PatchingSweep:
    """One patched run per (layer, block[, step]): tidy records, baselines, and a plotly heatmap."""

    point: str
    group: str
    records: list[dict]                      # layer, block, step (None: every step), metric values
    baseline: dict[str, dict[str, float]]    # "target" (unpatched) and "source" runs, same metrics
    metrics: list[str] = field(default_factory=list)

    def frame(self):
        """The records as a pandas DataFrame (``pip install pandas``)."""
        try:
            import pandas as pd
        except ImportError as exc:   # pragma: no cover - pandas is optional
            raise WorkbenchError("PatchingSweep.frame needs pandas: pip install pandas") from exc
        return pd.DataFrame(self.records)

    def figure(self, metric: str | None = None, height: int = 420):
        """Heatmap of ``metric`` (default: the first) over layers (rows) x blocks, or blocks·steps."""
        import plotly.graph_objects as go
        metric = metric or self.metrics[0]
        if not self.records:
            raise WorkbenchError("the sweep measured no cell (it was stopped before the first)")
        if metric not in self.metrics:
            raise WorkbenchError(f"unknown metric {metric!r}; this sweep measured {', '.join(self.metrics)}")
        columns = sorted({(r["block"], -1 if r["step"] is None else r["step"]) for r in self.records})
        layers = sorted({r["layer"] for r in self.records})
        value = {(r["layer"], r["block"], -1 if r["step"] is None else r["step"]): r[metric] for r in self.records}
        labels = [f"block {b}" if s < 0 else f"b{b} s{s}" for b, s in columns]
        fig = go.Figure(go.Heatmap(z=[[value.get((layer, b, s)) for b, s in columns] for layer in layers], x=labels,
                                   y=[f"layer {layer}" for layer in layers], colorscale="Viridis",
                                   colorbar={"title": metric}))
        base = ", ".join(f"{k}: {v[metric]:.3g}" for k, v in self.baseline.items())
        fig.update_layout(height=height, title=f"Patching {self.group} {self.point} from the source run ({base})",
                          xaxis_title="patched block" + (" and step" if columns[0][1] >= 0 else ""),
                          yaxis_title="DiT layer")
        return fig


def patching_sweep(wb: "Workbench", target: str | Sequence[str], source: str | Sequence[str],
                   point: str = "resid_post", group: str = "*", layers: Sequence[int] | None = None,
                   blocks: Sequence[int] | None = None, per_step: bool = False,
                   metrics: Mapping[str, Metric] | None = None, progress: bool = True,
                   should_stop: Callable[[], bool] | None = None, **knobs) -> PatchingSweep:
    """Patch DiT ``layer.{i}.{point}`` of block ``b`` (every step, or each step with ``per_step``) from the
    ``source`` prompts' run into the ``target`` prompts' run, one (layer, block[, step]) at a time, and
    measure ``metrics`` (default: :data:`DEFAULT_METRICS`) of each patched run against the source run.

    ``group``: ``cond``, ``uncond`` or ``*`` (both passes). Both runs use the same knobs and seed and run
    every block (``stop_at_eos=False``); their prompts must give runs of the same shape (same number of
    prompts and of context latents). ``should_stop()`` is asked before each cell (after the baseline runs);
    once it answers True the sweep returns the cells measured so far (a Stop button, a time budget).
    """
    if point not in DIT_LAYER_POINTS:
        raise WorkbenchError(f"unknown DiT layer point {point!r}; choose one of {', '.join(DIT_LAYER_POINTS)}")
    if group not in ("cond", "uncond", "*"):
        raise WorkbenchError(f"group must be 'cond', 'uncond' or '*', got {group!r}")
    knobs = {**knobs, "stop_at_eos": False}
    run, source_run = wb.run_names(target, **knobs), wb.run_names(source, **knobs)
    if (difference := run.differences(source_run)) is not None:
        raise WorkbenchError(f"source and target runs differ: {difference}; patching needs prompts with the same "
                             f"number of samples and context latents")
    layers = _indices(layers, wb.model.dit_config.num_layers, "layer")
    blocks = _indices(blocks, sum(1 for n in run.select("block.*.z_final")), "block")
    metrics = dict(metrics or DEFAULT_METRICS)
    wanted = f"block.*.step.*.**.dit.{group}.layer.*.{point}"
    source_gens, source_cache = wb.run_with_cache(source, names_filter=[wanted, *OUTCOME_NAMES], **knobs)
    source_out = Outcome.of(source_gens, source_cache)
    plain = Outcome.of(*wb.run_with_cache(target, names_filter=OUTCOME_NAMES, **knobs))
    steps = range(wb.config(**knobs).steps) if per_step else [None]
    cells = [(layer, b, s) for layer in layers for b in blocks for s in steps]
    records = []
    for layer, b, s in tqdm(cells, desc="patching", disable=not progress):
        if should_stop is not None and should_stop():
            break
        patches = source_cache.subset(f"block.{b}.step.{'*' if s is None else s}.**.dit.{group}.layer.{layer}.{point}")
        out = Outcome.of(*wb.run_with_cache(target, names_filter=OUTCOME_NAMES, patches=patches, **knobs))
        records.append({"layer": layer, "block": b, "step": s, "group": group, "point": point,
                        **{name: fn(out, source_out) for name, fn in metrics.items()}})
    baseline = {"target": {n: fn(plain, source_out) for n, fn in metrics.items()},
                "source": {n: fn(source_out, source_out) for n, fn in metrics.items()}}
    return PatchingSweep(point=point, group=group, records=records, baseline=baseline, metrics=list(metrics))


def _indices(chosen: Sequence[int] | None, count: int, what: str) -> list[int]:
    if chosen is None:
        return list(range(count))
    bad = [i for i in chosen if not isinstance(i, int) or not 0 <= i < count]
    if bad or not chosen:
        raise WorkbenchError(f"{what}s {list(chosen)} out of range: this run has {what}s 0-{count - 1}")
    return list(chosen)

"""Step states of the sampler and whole trajectories (saved as safetensors + JSON).

Tensor names are stable and dotted, the same in ``run_with_cache`` and on disk::

    block.{b}.z_init                     (B, bs, C) the block's starting noise
    block.{b}.step.{k}.{field}           field in STEP_FIELDS; stage-0 (first model call) values
    block.{b}.step.{k}.stage.{s}.{field} later solver stages (Heun, midpoint): t, z, v_cond, v_uncond, v_guided
    block.{b}.z_final                    (B, bs, C) the finished block
    block.{b}.token_ids                  (B, bs*P) the tokens chosen for it
    block.{b}.after_eos                  (B,) bool: the sample had emitted EOS / im_end in an earlier block,
                                         so this block was generated past its end (metrics leave it out)
    block.{b}.logits                     (B, bs*P, V) only in run_with_cache, when asked for by name
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from cola_core.generate import Generation

from .io import load_bundle, save_bundle
from .monitor import norm_records

FORMAT_VERSION = 1
STEP_FIELDS = ("t", "t_next", "dt", "guidance", "z", "v_cond", "v_uncond", "v_guided", "x0_pred", "z_next")
STAGE_FIELDS = ("t", "z", "v_cond", "v_uncond", "v_guided")


@dataclass
class StepState:
    """One solver step of one block, for all B samples. ``z`` is z_t (what the model saw),
    ``x0_pred = z - (t/T) v_guided``, ``z_next`` the latent after the step (at ``t_next``)."""

    block: int
    step: int
    t: torch.Tensor                 # (B, bs) time of z (pinned prompt rows: 0)
    t_next: torch.Tensor            # (B, bs)
    dt: float                       # (t - t_next) / T
    guidance: torch.Tensor          # (B,) scale used for v_guided
    z: torch.Tensor                 # (B, bs, C)
    v_cond: torch.Tensor
    v_uncond: torch.Tensor
    v_guided: torch.Tensor
    x0_pred: torch.Tensor
    z_next: torch.Tensor | None = None
    stages: list[dict[str, torch.Tensor]] = field(default_factory=list)   # solver stages >= 1
    preview: list[str] | None = None   # greedy decode of x0_pred per sample (no prefix context)
    after_eos: torch.Tensor | None = None   # (B,) bool: the sample ended in an earlier block (past its end)

    @property
    def name(self) -> str:
        return f"block.{self.block}.step.{self.step}"

    def named_tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for f in STEP_FIELDS:
            value = getattr(self, f)
            if value is not None:
                out[f"{self.name}.{f}"] = torch.tensor(value) if f == "dt" else value
        for s, stage in enumerate(self.stages, start=1):
            out.update({f"{self.name}.stage.{s}.{k}": v for k, v in stage.items()})
        return out


@dataclass
class Trajectory:
    """Every step state of every block of one sampler run, plus what was decoded."""

    prompts: list[str]
    sample_ids: list[int]
    config: dict
    fingerprint: str
    steps: list[StepState] = field(default_factory=list)
    z_init: dict[int, torch.Tensor] = field(default_factory=dict)
    z_final: dict[int, torch.Tensor] = field(default_factory=dict)
    token_ids: dict[int, torch.Tensor] = field(default_factory=dict)
    after_eos: dict[int, torch.Tensor] = field(default_factory=dict)    # block -> (B,) bool
    generations: list[Generation] = field(default_factory=list)

    @property
    def num_blocks(self) -> int:
        return len(self.z_final)

    def block(self, b: int) -> list[StepState]:
        return [s for s in self.steps if s.block == b]

    def stack(self, name: str) -> torch.Tensor:
        """A step field stacked over blocks and steps: (n_blocks, steps, ...); e.g. ``stack("x0_pred")``."""
        if name not in STEP_FIELDS:
            raise KeyError(f"unknown step field {name!r}; choose one of {', '.join(STEP_FIELDS)}")
        blocks = sorted({s.block for s in self.steps})
        return torch.stack([torch.stack([torch.as_tensor(getattr(s, name)) for s in self.block(b)])
                            for b in blocks])

    def norm_records(self, reference: float) -> list[dict]:
        """Off-manifold monitor per sample and finished block: latent norm, its ratio to the encoded data's
        ``reference`` norm (``workbench.monitor.data_norm``), the off-manifold flag and ``after_eos``."""
        blocks = sorted(self.z_final)
        return norm_records([self.z_final[b] for b in blocks], reference,
                            [self.after_eos.get(b, torch.zeros(len(self.prompts), dtype=torch.bool)) for b in blocks])

    def named_tensors(self) -> dict[str, torch.Tensor]:
        """All tensors under their stable dotted names (see the module docstring)."""
        out: dict[str, torch.Tensor] = {}
        for b in sorted(self.z_init):
            out[f"block.{b}.z_init"] = self.z_init[b]
            for s in self.block(b):
                out.update(s.named_tensors())
            if b in self.z_final:
                out[f"block.{b}.z_final"] = self.z_final[b]
            if b in self.token_ids:
                out[f"block.{b}.token_ids"] = self.token_ids[b]
            if b in self.after_eos:
                out[f"block.{b}.after_eos"] = self.after_eos[b]
        return out

    def save(self, path: str | Path) -> Path:
        """Write ``path.safetensors`` (tensors by name) + ``path.json`` (prompts, config, texts, previews)."""
        meta = {"kind": "trajectory", "version": FORMAT_VERSION, "prompts": self.prompts,
                "sample_ids": self.sample_ids, "config": self.config, "fingerprint": self.fingerprint,
                "previews": {s.name: s.preview for s in self.steps if s.preview is not None},
                "generations": [dataclasses.asdict(g) for g in self.generations]}
        return save_bundle(path, self.named_tensors(), meta)

    @classmethod
    def load(cls, path: str | Path) -> "Trajectory":
        tensors, meta = load_bundle(path, "trajectory")
        traj = cls(prompts=meta["prompts"], sample_ids=meta["sample_ids"], config=meta["config"],
                   fingerprint=meta["fingerprint"], generations=[Generation(**g) for g in meta["generations"]])
        fields: dict[tuple[int, int], dict] = {}
        for name, value in tensors.items():
            parts = name.split(".")
            b = int(parts[1])
            if parts[2] in ("z_init", "z_final", "token_ids", "after_eos"):
                getattr(traj, parts[2])[b] = value
                continue
            entry = fields.setdefault((b, int(parts[3])), {"stages": {}})
            if parts[4] == "stage":
                entry["stages"].setdefault(int(parts[5]), {})[parts[6]] = value
            else:
                entry[parts[4]] = float(value) if parts[4] == "dt" else value
        for (b, k), entry in sorted(fields.items()):
            stages = entry.pop("stages")
            traj.steps.append(StepState(block=b, step=k, **entry, stages=[stages[s] for s in sorted(stages)],
                                        preview=meta["previews"].get(f"block.{b}.step.{k}"),
                                        after_eos=traj.after_eos.get(b)))
        return traj

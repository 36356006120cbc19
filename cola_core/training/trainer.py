"""A small, exact-resume training loop shared by both stages.

AdamW with warmup + cosine decay, gradient clipping and accumulation, optional EMA, bf16 autocast
on CUDA (fp32 on CPU), periodic validation, metrics JSONL + plotly loss curves, and data-parallel
training over ``torchrun`` (gradients are summed over ranks with ``all_reduce``; losses are
normalised by global counts, so N ranks compute exactly the single-process loss).

Resumability: batch k and all random draws of step s are functions of (seed, k) and (seed, s), so a
checkpoint only needs weights, optimizer moments, EMA, the step and the torch RNG states. Trainer
state is stored as safetensors + JSON (never pickle), crash-safe (:mod:`.checkpoints`); a resume
refuses a changed config unless asked to continue with the new values.
"""
from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from ..errors import ConfigError
from ..text_codec import TokenBatch
from .checkpoints import (METRICS, PLOT, adopt, clear_previous_outputs, has_state, latest_state,
                          previous_outputs, save_state)
from .config import TrainConfig, config_changes, config_to_dict
from .data import BatchOrder
from .metrics_log import append_metrics, keep_records, read_metrics
from .objectives import Terms

TermsFn = Callable[[TokenBatch, torch.Generator, slice], Terms]


# ---------------------------------------------------------------------------------------------
# Distributed helpers
# ---------------------------------------------------------------------------------------------
@dataclass
class Dist:
    """This process's place in a (possibly single-process) data-parallel job."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def setup_distributed(device: str) -> Dist:
    """Join the torchrun job if WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU) and pick this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but CUDA is not available")
        if world > 1:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        elif dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
    return Dist(rank, world, dev)


def claim_run_dir(run_dir: Path, env: Dist, resume: bool, overwrite: bool) -> None:
    """Refuse to start a new run over a previous one's outputs unless ``overwrite`` (then delete them)."""
    if resume and overwrite:
        raise ConfigError("--resume continues the run in run_dir and --overwrite deletes it; choose one")
    if resume and not has_state(run_dir):
        raise FileNotFoundError(f"{run_dir}: no complete trainer checkpoint to resume from")
    found = [] if resume else previous_outputs(run_dir)
    if found and not overwrite:
        raise ConfigError(f"{run_dir} holds a previous run ({', '.join(found)}); pass --resume to continue it "
                          "or --overwrite to delete it and start again")
    env.barrier()                  # every rank has looked before rank 0 deletes anything
    if found and env.main:
        clear_previous_outputs(run_dir)
    env.barrier()


def claim_out_dir(out_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to start a new run whose export would write into a non-empty folder unless ``overwrite``.

    The export replaces the files it writes and keeps the others (a model card stays). A resume continues
    a run whose out_dir was claimed when it started, so it is not checked again.
    """
    if resume or overwrite or not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ConfigError(f"out_dir {out_dir} is a file, not a folder; point out_dir at a new or empty folder")
    held = sorted(p.name for p in out_dir.iterdir())
    if held:
        shown = ", ".join(held[:6]) + (", ..." if len(held) > 6 else "")
        raise ConfigError(f"out_dir {out_dir} is not empty ({shown}); the export would replace its model files: "
                          "pass --overwrite to write into it anyway, or point out_dir at a new folder")


# ---------------------------------------------------------------------------------------------
# Schedule, EMA
# ---------------------------------------------------------------------------------------------
def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warmup to 1, then cosine decay to ``min_ratio`` at ``total`` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class EMA:
    """Exponential moving average of a module's floating-point parameters."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.module, self.decay = module, decay
        self.shadow = {n: p.detach().clone() for n, p in module.named_parameters()}

    @torch.no_grad()
    def update(self) -> None:
        for name, param in self.module.named_parameters():
            self.shadow[name].lerp_(param.detach(), 1 - self.decay)

    @contextlib.contextmanager
    def swapped(self):
        """Temporarily load the EMA weights into the module (validation, export)."""
        backup = {n: p.detach().clone() for n, p in self.module.named_parameters()}
        with torch.no_grad():
            for name, param in self.module.named_parameters():
                param.copy_(self.shadow[name])
        try:
            yield self.module
        finally:
            with torch.no_grad():
                for name, param in self.module.named_parameters():
                    param.copy_(backup[name])


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------
class Trainer:
    """Optimise ``modules`` on ``terms_fn``; total loss = sum of weights[name] * mean(term)."""

    def __init__(self, config: TrainConfig, env: Dist, modules: dict[str, torch.nn.Module],
                 param_groups: list[dict], terms_fn: TermsFn, weights: dict[str, float], order: BatchOrder,
                 val_batches: list[TokenBatch], export: Callable[[int], None], ema_module: str | None = None):
        self.cfg, self.env, self.modules = config, env, modules
        self.terms_fn, self.weights, self.order, self.val_batches = terms_fn, weights, order, val_batches
        self.export = export
        self.params = [p for group in param_groups for p in group["params"]]
        self.optimizer = torch.optim.AdamW(param_groups, lr=config.lr, betas=(config.beta1, config.beta2),
                                           weight_decay=config.weight_decay)
        for group in self.optimizer.param_groups:
            group["base_lr"] = group["lr"]
        self.ema = EMA(modules[ema_module], config.ema_decay) if ema_module and config.ema_decay > 0 else None
        self.step = 0
        self.elapsed = 0.0
        self.records = 0          # metrics records logged so far (a state remembers how many preceded it)
        self.run_dir = Path(config.run_dir)
        self.micro = config.batch_size // config.grad_accum
        if self.micro % env.world:
            raise ConfigError(f"batch_size / grad_accum ({self.micro}) must be a multiple of the "
                              f"number of processes ({env.world})")
        per = self.micro // env.world
        self.rows = slice(env.rank * per, (env.rank + 1) * per)

    # -- randomness ---------------------------------------------------------------------------
    def generator(self, step: int, micro: int, salt: int = 0) -> torch.Generator:
        """The generator of one micro-batch: a pure function of (seed, step, micro), identical on all ranks."""
        seed = (self.cfg.seed * 1_000_003 + step * 1009 + micro * 7 + salt) % (2**63 - 1)
        return torch.Generator(self.env.device).manual_seed(seed)

    @property
    def autocast(self) -> contextlib.AbstractContextManager:
        if self.env.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # -- one step -----------------------------------------------------------------------------
    def _reduce(self, terms: Terms) -> tuple[torch.Tensor, dict[str, float]]:
        """Global-count normalised loss for backward and the logged global means."""
        names = sorted(terms)
        sums = torch.stack([terms[n][0].detach().float() for n in names])
        counts = torch.stack([terms[n][1].float() for n in names]).to(sums.device)
        stats = self.env.all_sum(torch.cat([sums, counts]))
        global_sum, global_count = stats[:len(names)], stats[len(names):].clamp(min=1)
        loss = sum(self.weights[n] * terms[n][0].float() / global_count[i]
                   for i, n in enumerate(names) if self.weights.get(n, 0.0))
        logged = {n: float(global_sum[i] / global_count[i]) for i, n in enumerate(names)}
        logged["loss"] = sum(self.weights.get(n, 0.0) * logged[n] for n in names)
        return loss, logged

    def train_step(self) -> dict[str, float]:
        """One optimizer step over grad_accum micro-batches; returns the logged means."""
        cfg = self.cfg
        for module in self.modules.values():
            module.train()
        factor = lr_factor(self.step, cfg.warmup_steps, cfg.steps, cfg.min_lr_ratio)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        for micro in range(cfg.grad_accum):
            batch = self.order.batch(self.step * cfg.grad_accum + micro).to(self.env.device)
            with self.autocast:
                terms = self.terms_fn(batch, self.generator(self.step, micro), self.rows)
            loss, logged = self._reduce(terms)
            (loss / cfg.grad_accum).backward()
            for name, value in logged.items():
                totals[name] = totals.get(name, 0.0) + value / cfg.grad_accum
        self._sync_grads()
        norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        self.optimizer.step()
        if self.ema is not None:
            self.ema.update()
        self.step += 1
        totals.update(lr=cfg.lr * factor, grad_norm=float(norm))
        return totals

    def _sync_grads(self) -> None:
        """Sum gradients over ranks (the loss is already normalised by global counts)."""
        if self.env.world == 1:
            return
        grads = [p.grad for p in self.params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean terms over the fixed validation batches with fixed randomness (comparable across steps)."""
        for module in self.modules.values():
            module.eval()
        swap = self.ema.swapped() if self.ema is not None else contextlib.nullcontext()
        sums: dict[str, float] = {}
        counts: dict[str, float] = {}
        with swap:
            for i, batch in enumerate(self.val_batches):
                with self.autocast:
                    terms = self.terms_fn(batch.to(self.env.device), self.generator(0, i, salt=12345),
                                          slice(None))
                for name, (s, c) in terms.items():
                    sums[name] = sums.get(name, 0.0) + float(s)
                    counts[name] = counts.get(name, 0.0) + float(c)
        out = {n: sums[n] / max(counts[n], 1.0) for n in sums}
        out["loss"] = sum(self.weights.get(n, 0.0) * out[n] for n in out)
        return out

    # -- the run ------------------------------------------------------------------------------
    def fit(self, resume: bool = False, allow_config_change: bool = False) -> dict[str, float]:
        """Train to ``config.steps`` (or ``max_minutes``), checkpointing and exporting; returns last val.

        ``resume`` continues from the latest state in run_dir; ``allow_config_change`` lets it continue
        with a config that differs from the one the run started with. Runs with deterministic
        algorithms (e.g. the DiT's per-row embedding gather has a nondeterministic backward
        otherwise), so a resumed run reproduces the uninterrupted one.
        """
        previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
        if self.env.device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            return self._fit(resume, allow_config_change)
        finally:
            torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])

    def _fit(self, resume: bool, allow_config_change: bool) -> dict[str, float]:
        cfg, env = self.cfg, self.env
        if resume:
            self.load_checkpoint(allow_config_change)
        elif env.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / METRICS).write_text("")
        env.barrier()
        bar = _progress(cfg.steps, self.step, env.main)
        window: dict[str, float] = {}
        window_steps = 0
        start, last_val = time.time() - self.elapsed, {}
        stopped_early = False
        while self.step < cfg.steps:
            logged = self.train_step()
            self.elapsed = time.time() - start
            for name, value in logged.items():
                window[name] = window.get(name, 0.0) + value
            window_steps += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix({k: f"{v:.3g}" for k, v in logged.items() if k in self.weights or k == "loss"},
                                refresh=False)
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                self._log({"split": "train", **{k: v / window_steps for k, v in window.items()}})
                window, window_steps = {}, 0
            if cfg.val_every and self.step % cfg.val_every == 0:
                last_val = self.validate()
                self._log({"split": "val", **last_val})
            out_of_time = False
            if cfg.max_minutes:   # every rank votes, so all stop at the same step
                late = torch.tensor([float(self.elapsed > cfg.max_minutes * 60)], device=env.device)
                out_of_time = stopped_early = bool(env.all_sum(late).item() > 0)
            if (cfg.save_every and self.step % cfg.save_every == 0) or self.step == cfg.steps or out_of_time:
                self.save_checkpoint()
            if out_of_time:
                break
        if bar is not None:
            bar.close()
        if not cfg.val_every or self.step % cfg.val_every:
            last_val = self.validate()
            self._log({"split": "val", **last_val})
        if env.main:
            if stopped_early:
                print(f"stopped after {self.step}/{cfg.steps} steps: max_minutes={cfg.max_minutes} reached",
                      file=sys.stderr)
            swap = self.ema.swapped() if self.ema is not None else contextlib.nullcontext()
            with swap:
                self.export(self.step)
            write_loss_plot(self.run_dir / METRICS, self.run_dir / PLOT)
        env.barrier()
        return last_val

    def _log(self, record: dict) -> None:
        if not self.env.main:
            return
        append_metrics(self.run_dir / METRICS, {"step": self.step, "elapsed_s": round(self.elapsed, 2), **record})
        self.records += 1

    # -- checkpoints --------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Save the trainer state crash-safely (rank 0; see :mod:`.checkpoints`)."""
        if not self.env.main:
            self.env.barrier()
            return
        tensors: dict[str, torch.Tensor] = {}
        for name, module in self.modules.items():
            for key, value in module.state_dict().items():
                tensors[f"model.{name}.{key}"] = value
        for idx, state in self.optimizer.state_dict()["state"].items():
            for key, value in state.items():
                tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value)
        if self.ema is not None:
            tensors.update({f"ema.{k}": v for k, v in self.ema.shadow.items()})
        tensors["rng.cpu"] = torch.get_rng_state()
        if torch.cuda.is_available() and self.env.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.env.device)
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        meta = {"step": self.step, "elapsed_s": self.elapsed, "stage": self.cfg.stage,
                "config": config_to_dict(self.cfg), "metrics_records": self.records}
        save_state(self.run_dir, self.step, tensors, meta)
        write_loss_plot(self.run_dir / METRICS, self.run_dir / PLOT)
        self.env.barrier()

    def load_checkpoint(self, allow_config_change: bool = False) -> None:
        """Restore weights, optimizer, EMA, RNG and step from the latest state; trims later metrics."""
        state = latest_state(self.run_dir, self.env.device)
        meta, tensors = state.meta, state.tensors
        if meta.get("stage") != self.cfg.stage:
            raise ConfigError(f"{state.folder}: checkpoint is of stage {meta.get('stage')!r}, not {self.cfg.stage!r}")
        changed = config_changes(meta.get("config", {}), config_to_dict(self.cfg))
        if changed and not allow_config_change:
            raise ConfigError(f"{state.folder}: the run was started with another config (changed: "
                              f"{'; '.join(changed)}); resume with the original values, or pass "
                              "--allow-config-change to continue with the new ones")
        if changed and self.env.main:
            print(f"resuming with a changed config: {'; '.join(changed)}", file=sys.stderr)
        try:
            self._restore(tensors)
        except (RuntimeError, ValueError, KeyError) as exc:
            detail = " ".join(str(exc).split())[:300]
            raise ConfigError(f"{state.folder}: the saved state does not fit this config ({detail})") from None
        self.step, self.elapsed = int(meta["step"]), float(meta["elapsed_s"])
        self.env.barrier()          # every rank has read the state before rank 0 moves it
        if self.env.main:
            adopt(self.run_dir, state)
            keep_records(self.run_dir / METRICS, meta.get("metrics_records"), self.step)
            self.records = len(read_metrics(self.run_dir / METRICS))

    def _restore(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load modules, optimizer moments (under this config's hyperparameters), EMA and RNG states."""
        for name, module in self.modules.items():
            prefix = f"model.{name}."
            module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, idx, field = key.split(".", 2)
                state.setdefault(int(idx), {})[field] = value.clone()   # own, aligned memory
        for st in state.values():
            if "step" in st:
                st["step"] = st["step"].cpu()
        self.optimizer.load_state_dict({"state": state, "param_groups": self.optimizer.state_dict()["param_groups"]})
        if self.ema is not None:
            shadow = {k[4:]: v.clone() for k, v in tensors.items() if k.startswith("ema.")}
            if shadow.keys() != self.ema.shadow.keys():
                raise ValueError("the saved EMA weights do not match the model (was ema_decay 0?)")
            self.ema.shadow = shadow
        torch.set_rng_state(tensors["rng.cpu"].cpu())
        if "rng.cuda" in tensors and self.env.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"].cpu(), self.env.device)


def _progress(total: int, initial: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    tty = sys.stderr.isatty()
    return tqdm(total=total, initial=initial, dynamic_ncols=True, mininterval=0.5 if tty else 30.0)


def write_loss_plot(metrics_path: Path, html_path: Path) -> None:
    """Plotly HTML with one panel per logged loss term (train and val curves)."""
    try:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots
    except ImportError:  # plotting is a convenience; training must not fail on it
        print("plotly is not installed; skipping loss_curves.html (pip install plotly)", file=sys.stderr)
        return
    records = read_metrics(metrics_path)
    skip = {"step", "elapsed_s", "split"}
    keys = sorted({k for r in records for k in r if k not in skip})
    if not keys:
        return
    cols = 3
    rows = -(-len(keys) // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=keys)
    for i, key in enumerate(keys):
        for split, color in (("train", "#1f77b4"), ("val", "#d62728")):
            pts = [(r["step"], r[key]) for r in records if r.get("split") == split and key in r]
            if pts:
                fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[1] for p in pts], name=f"{split} {key}",
                                         mode="lines+markers" if split == "val" else "lines",
                                         line={"color": color}, showlegend=False),
                              row=i // cols + 1, col=i % cols + 1)
    fig.update_layout(height=280 * rows, title=f"loss curves ({metrics_path})")
    tmp = html_path.with_suffix(".tmp")
    fig.write_html(str(tmp), include_plotlyjs=True)
    os.replace(tmp, html_path)

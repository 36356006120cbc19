"""Training configs for the three stages, read from TOML: every field has a default, unknown fields are errors.

A file holds top-level trainer/objective fields and an optional ``[model]`` table whose keys are
fields of :class:`cola_core.config.VAEConfig` (stage 1) or :class:`cola_core.config.DiTConfig` (stage 2).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from ..config import DiTConfig, VAEConfig
from ..errors import ConfigError
from ..files import require_regular_file
from ..seeds import is_valid_seed, seed_error


@dataclass
class TrainConfig:
    """Fields shared by both stages: data, optimisation, bookkeeping."""

    corpus: str = "artifacts/wordnet"      # folder with train/val/test.jsonl (`cola-workbench corpus`)
    run_dir: str = "runs/train"            # trainer checkpoints, metrics.jsonl, loss_curves.html
    out_dir: str = "runs/train/model"      # the trained model (release layout)
    max_tokens: int = 32                   # tokens per text incl. eos (longer texts are cut)
    seed: int = 0
    steps: int = 1000                      # optimizer steps
    batch_size: int = 64                   # global batch (all ranks, all accumulation micro-batches)
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1              # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0                 # 0 disables
    ema_decay: float = 0.0                 # 0 disables; else the saved model holds the EMA weights
    length_bucketing: bool = True          # batch texts of similar length together (less padding)
    val_every: int = 200                   # 0 disables periodic validation
    val_batches: int = 8
    save_every: int = 500                  # trainer checkpoint interval in steps (0: only at the end)
    log_every: int = 10
    device: str = "auto"                   # auto, cpu, cuda, cuda:N
    num_threads: int = 0                   # torch CPU threads; 0 leaves torch's default
    max_minutes: float = 0.0               # wall-clock cap: stop, checkpoint and export early (0: none)
    save_dtype: str = "float32"            # dtype of the exported weights: float32 or bfloat16
    model: dict[str, Any] = field(default_factory=dict)

    stage = ""

    def validate(self, source: str) -> None:
        positive = ("max_tokens", "steps", "batch_size", "grad_accum", "val_batches", "log_every")
        for key in positive:
            if getattr(self, key) < 1:
                raise ConfigError(f"{source}: field {key!r} must be >= 1, got {getattr(self, key)!r}")
        for key in ("warmup_steps", "val_every", "save_every", "num_threads", "max_minutes", "grad_clip",
                    "weight_decay"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{source}: field {key!r} must be >= 0, got {getattr(self, key)!r}")
        if not is_valid_seed(self.seed):
            raise ConfigError(f"{source}: field 'seed': {seed_error(self.seed)}")
        if self.lr <= 0:
            raise ConfigError(f"{source}: field 'lr' must be > 0, got {self.lr!r}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"{source}: field 'min_lr_ratio' must be in [0, 1], got {self.min_lr_ratio!r}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"{source}: field 'ema_decay' must be in [0, 1), got {self.ema_decay!r}")
        if self.batch_size % self.grad_accum:
            raise ConfigError(f"{source}: field 'batch_size' ({self.batch_size}) must be a multiple of "
                              f"grad_accum ({self.grad_accum})")
        if self.save_dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"{source}: field 'save_dtype' must be float32 or bfloat16, got {self.save_dtype!r}")


@dataclass
class VAETrainConfig(TrainConfig):
    """Stage 1: recon CE (posterior sample) + beta*KL + mask_weight * masked-token CE."""

    tokenizer: str = ""                    # tokenizer.json; trained on the train split if missing
    init_from: str = ""                    # start from this stage-1 folder (its weights, config and tokenizer)
    train_encoder: bool = True             # false (with init_from): tune the decoder on a frozen latent space
    decoder_blocks: int = 0                # with init_from: grow the decoder to this many blocks (0: keep its depth)
    vocab_size: int = 4096                 # BPE size when the tokenizer is trained here
    beta: float = 0.05                     # weight of KL(q||N(0,I)) per latent channel (mean over channels)
    mask_weight: float = 1.0               # lambda of the BERT-style mask loss
    mask_prob: float = 0.15                # share of tokens masked in a masked sequence
    mask_seq_prob: float = 0.5             # share of sequences that get masked
    prefix_prob: float = 0.15              # share of texts cut to a prefix without eos (prompt-like)
    decoder_noise: float = 0.0             # extra N(0, s^2) on the decoder input, s ~ U(0, decoder_noise)
    decoder_noise_prob: float = 1.0        # share of rows that get that noise (the rest stay clean)
    decoder_swap: float = 0.0              # share of decoder input latents swapped for random other latents
    decoder_swap_prob: float = 1.0         # ... in this share of the rows (the rest keep their own latents)
    decoder_swap_noised: bool = False      # ... only in the rows decoder_noise reaches, before their noise
    decoder_prior: str = ""                # a checkpoint whose DiT (on this encoder's latents) gives decoder inputs
    decoder_prior_prob: float = 0.5        # share of rows that decode that DiT's one-step estimate instead
    decoder_prior_t_max: float = 0.5       # ... from noise levels t ~ U(0, decoder_prior_t_max)
    stats_batches: int = 50                # batches of posterior samples for scaling/shifting factors
    dialogues: str = ""                    # a `corpus dialogues` folder: its first train conversations join the texts
    dialogue_rows: int = 0                 # ... this many of them
    dialogue_template: str = ""            # ... rendered by this checkpoint's chat template (its DiT's sft_* fields)

    stage = "vae"

    def validate(self, source: str) -> None:
        super().validate(source)
        for key in ("beta", "mask_weight", "decoder_noise"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{source}: field {key!r} must be >= 0, got {getattr(self, key)!r}")
        for key in ("mask_prob", "mask_seq_prob", "prefix_prob", "decoder_noise_prob", "decoder_swap",
                    "decoder_swap_prob", "decoder_prior_prob", "decoder_prior_t_max"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"{source}: field {key!r} must be in [0, 1], got {getattr(self, key)!r}")
        if self.stats_batches < 1:
            raise ConfigError(f"{source}: field 'stats_batches' must be >= 1")
        if bool(self.dialogues) != bool(self.dialogue_template) or bool(self.dialogues) != (self.dialogue_rows > 0):
            raise ConfigError(f"{source}: 'dialogues', 'dialogue_rows' (> 0) and 'dialogue_template' go together")
        if self.init_from and (self.model or self.tokenizer):
            raise ConfigError(f"{source}: with 'init_from' the model shape and tokenizer come from {self.init_from!r}; "
                              "remove [model] and 'tokenizer'")
        if self.decoder_prior and self.train_encoder:
            raise ConfigError(f"{source}: 'decoder_prior' needs 'train_encoder = false' (the prior models the frozen "
                              "encoder's latents)")
        if self.decoder_swap_noised and not (self.decoder_swap and self.decoder_noise):
            raise ConfigError(f"{source}: 'decoder_swap_noised' needs 'decoder_swap' and 'decoder_noise' > 0")
        if self.decoder_blocks < 0 or (self.decoder_blocks and not self.init_from):
            raise ConfigError(f"{source}: field 'decoder_blocks' must be >= 0 and needs 'init_from' (the decoder to "
                              f"grow), got {self.decoder_blocks!r}")
        if not self.train_encoder and not self.init_from:
            raise ConfigError(f"{source}: 'train_encoder = false' needs 'init_from' (a trained VAE to keep the encoder of)")
        _check_model_keys(self.model, VAEConfig, source)


@dataclass
class DiTTrainConfig(TrainConfig):
    """Stage 2: the official 2L flow-matching recipe on latents of a (frozen) VAE."""

    vae: str = ""                          # stage-1 output folder (cola_vae/ + tokenizer.json); required unless init_from
    init_from: str = ""                    # continue a checkpoint's DiT (release layout or a name): its shape,
                                           # weights, VAE and tokenizer; the optimizer and schedule start afresh
    t_sampling: str = "logit_normal"       # logit_normal or uniform
    t_loc: float = 0.0                     # logit-normal location (1.0 pretraining, 0.0 CPT/SFT)
    t_scale: float = 1.0
    prompt_block_prob: float = 0.05        # per block: first k latents clean (t=0, weight 0)
    first_block_weight: float = 1.0        # loss weight of each row's first block (1: the official uniform weight)
    crop_start_prob: float = 0.0           # per row: start at a random later word-initial block, as packed rows start
                                           # mid-text (0: every row starts at its text's beginning)
    document_start: str = ""               # text a share of the rows start after (whole blocks of tokens, e.g. "\n\n");
    document_start_share: float = 0.0      # ... that share; recorded in the DiT config, generation puts it before
                                           # every text prompt, so an unprompted sample's first text block is guided
    prompt_as_generated: bool = False      # clean prompt latents encoded with pad after them, as generation does
    posterior_mean: bool = False           # z0 from the posterior mean instead of a sample
    joint_vae: bool = False                # also train the VAE: recon CE + KL to a frozen copy of its encoder
    vae_lr: float = 1e-4                   # VAE learning rate in joint training
    lambda_vae: float = 1.0                # weight of the VAE's recon CE in joint training
    lambda_ref: float = 1.0                # weight of KL(q || q_frozen) in joint training

    stage = "dit"

    def validate(self, source: str) -> None:
        super().validate(source)
        _check_t_sampling(self, source)
        if self.first_block_weight <= 0:
            raise ConfigError(f"{source}: field 'first_block_weight' must be > 0, got {self.first_block_weight!r}")
        if bool(self.document_start) != (self.document_start_share > 0) or self.document_start_share > 1:
            raise ConfigError(f"{source}: 'document_start' and 'document_start_share' (in (0, 1]) go together, got "
                              f"{self.document_start!r} and {self.document_start_share!r}")
        if self.document_start and self.init_from:
            raise ConfigError(f"{source}: 'document_start' trains a new DiT; a continued one ('init_from') keeps "
                              "its checkpoint's conventions")
        for key in ("prompt_block_prob", "crop_start_prob"):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f"{source}: field {key!r} must be in [0, 1], got {getattr(self, key)!r}")
        for key in ("vae_lr", "lambda_vae", "lambda_ref"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{source}: field {key!r} must be >= 0, got {getattr(self, key)!r}")
        if self.init_from and (self.model or self.vae):
            raise ConfigError(f"{source}: with 'init_from' the DiT shape and the VAE come from {self.init_from!r}; "
                              "remove [model] and 'vae'")
        if not self.init_from and not self.vae:
            raise ConfigError(f"{source}: field 'vae' (the stage-1 folder to train on) or 'init_from' (a checkpoint "
                              "whose DiT to continue) is required")
        _check_model_keys(self.model, DiTConfig, source)


@dataclass
class SFTTrainConfig(TrainConfig):
    """Stage 3: supervised fine-tuning of a checkpoint's DiT on chat data (the official ``cola_sft.py`` recipe).

    ``corpus`` holds train.jsonl / val.jsonl conversations (``{"messages": [{"role", "content"}]}``).
    """

    init_from: str = ""                    # the checkpoint to fine-tune (release layout); its VAE stays frozen
    chat_format: str = "text"              # text (User:/Assistant: + stop token) or chatml (<|im_start|> ...)
    stop_token: str = ""                   # text format: the token ending an answer ("" = eos; the release uses "■")
    pad_with_stop: bool = True             # chatml: pad with <|im_end|> (true) or <|pad|> (false)
    loss_mode: str = "sft"                 # sft: answer latents only; all_token: also prompt latents before an answer
    boundary_mode: str = "token"           # token or block: which prompt latents sharing a block with an answer are masked
    block_size_probs: list = field(default_factory=list)   # weights of block sizes 1, 2, 4, ..., DiT block (empty: fixed)
    t_sampling: str = "logit_normal"
    t_loc: float = 0.0
    t_scale: float = 1.0
    posterior_mean: bool = False           # z0 from the posterior mean (official vae-mode "mode") instead of a sample

    stage = "sft"

    def validate(self, source: str) -> None:
        super().validate(source)
        _check_t_sampling(self, source)
        if not self.init_from:
            raise ConfigError(f"{source}: field 'init_from' (the checkpoint to fine-tune) is required")
        choices = {"chat_format": ("text", "chatml"), "loss_mode": ("sft", "all_token"),
                   "boundary_mode": ("token", "block")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{source}: field {key!r} must be one of {', '.join(allowed)}, "
                                  f"got {getattr(self, key)!r}")
        probs = self.block_size_probs
        if probs and (not all(isinstance(p, (int, float)) and p >= 0 for p in probs) or abs(sum(probs) - 1) > 1e-6):
            raise ConfigError(f"{source}: field 'block_size_probs' must be non-negative numbers summing to 1, "
                              f"got {probs!r}")
        if self.model:
            raise ConfigError(f"{source}: SFT keeps the shape of {self.init_from!r}; remove [model]")


def _check_t_sampling(cfg: "DiTTrainConfig | SFTTrainConfig", source: str) -> None:
    if cfg.t_sampling not in ("logit_normal", "uniform"):
        raise ConfigError(f"{source}: field 't_sampling' must be logit_normal or uniform, got {cfg.t_sampling!r}")
    if cfg.t_scale <= 0:
        raise ConfigError(f"{source}: field 't_scale' must be > 0")


def _check_model_keys(model: dict[str, Any], cls: type, source: str) -> None:
    known = {f.name for f in dataclasses.fields(cls) if f.name != "extra"}
    for key in model:
        if key not in known:
            raise ConfigError(f"{source}: unknown field {key!r} in [model]; known: {', '.join(sorted(known))}")


STAGES: dict[str, type[TrainConfig]] = {"vae": VAETrainConfig, "dit": DiTTrainConfig, "sft": SFTTrainConfig}


def config_from_dict(stage: str, raw: dict[str, Any], source: str = "<dict>") -> TrainConfig:
    """Build and validate a stage config; unknown or mistyped fields raise ConfigError naming them."""
    if stage not in STAGES:
        raise ConfigError(f"unknown training stage {stage!r}; choose {', '.join(STAGES)}")
    cls = STAGES[stage]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in fields:
            raise ConfigError(f"{source}: unknown field {key!r} for stage {stage!r}; "
                              f"known: {', '.join(sorted(fields))}")
        values[key] = _typed(value, fields[key], cls, source)
    config = cls(**values)
    config.validate(source)
    return config


def _typed(value: Any, f: dataclasses.Field, cls: type, source: str) -> Any:
    default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
    kind = type(default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not kind:
        raise ConfigError(f"{source}: field {f.name!r} must be {kind.__name__}, got {value!r}")
    if kind is float and not math.isfinite(value):
        raise ConfigError(f"{source}: field {f.name!r} must be a finite number, got {value!r}")
    return value


def load_config(stage: str, path: str | Path) -> TrainConfig:
    """Read a TOML training config for ``stage`` (vae, dit or sft)."""
    path = Path(path)
    require_regular_file(path, ConfigError, "training config")
    try:
        raw = tomllib.loads(path.read_bytes().decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc})") from None
    return config_from_dict(stage, raw, source=str(path))


def config_to_dict(config: TrainConfig) -> dict[str, Any]:
    """Plain dict of a config (for metrics and checkpoints)."""
    return dataclasses.asdict(config)


# Fields that say where outputs go or when to stop, save and log: changing them never changes the
# weights a resumed run computes, so a resume may change them freely (num_threads may: CPU kernels
# can sum in another order).
RESUME_FREE_FIELDS = ("run_dir", "out_dir", "max_minutes", "save_every", "log_every")


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``field old -> new`` for every field (except RESUME_FREE_FIELDS) that differs."""
    keys = sorted((set(saved) | set(current)) - set(RESUME_FREE_FIELDS))
    return [f"{k} {saved.get(k)!r} -> {current.get(k)!r}" for k in keys if saved.get(k) != current.get(k)]

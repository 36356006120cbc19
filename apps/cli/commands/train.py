"""``cola-workbench train vae|dit|sft --config FILE.toml``: the training stages (torchrun-ready)."""
from __future__ import annotations

import argparse

from .common import UsageError, add_command

STAGES = ("vae", "dit", "sft")


def register(subparsers) -> None:
    p = add_command(subparsers, "train",
                    help="train the Text VAE (vae), the DiT prior (dit), or chat-tune a DiT (sft)",
                    description="Every config field has a default; unknown fields are errors. "
                                "Multi-GPU: torchrun --nproc_per_node N -m apps.cli train ...")
    p.add_argument("stage", choices=STAGES, help="which stage to train")
    p.add_argument("--config", required=True, help="TOML training config (see cola_core/training/configs/)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in run_dir from its latest checkpoint, exactly")
    p.add_argument("--allow-config-change", action="store_true",
                   help="with --resume: continue even though the config differs from the run's (uses the new values)")
    p.add_argument("--overwrite", action="store_true", help="delete a previous run in run_dir and start again")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cola_core.training.config import load_config
    from cola_core.training.stages import train_dit, train_sft, train_vae

    config = load_config(args.stage, args.config)
    if args.allow_config_change and not args.resume:
        raise UsageError("--allow-config-change only applies with --resume")
    train = {"vae": train_vae, "dit": train_dit, "sft": train_sft}[args.stage]
    final = train(config, resume=args.resume, overwrite=args.overwrite, allow_config_change=args.allow_config_change)
    print("final validation: " + ", ".join(f"{k} {v:.4g}" for k, v in final.items()))
    return 0

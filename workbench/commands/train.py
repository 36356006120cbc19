"""``cola-workbench train vae|dit|sft --config FILE.toml``: the training stages (torchrun-ready)."""
from __future__ import annotations

import argparse

from cola_core.training.config import load_config
from cola_core.training.stages import train_dit, train_sft, train_vae

STAGES = {"vae": train_vae, "dit": train_dit, "sft": train_sft}


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train the Text VAE (vae), the DiT prior (dit), or chat-tune a DiT (sft)",
                              description="Every config field has a default; unknown fields are errors. "
                                          "Multi-GPU: torchrun --nproc_per_node N -m workbench.cli train ...")
    p.add_argument("stage", choices=list(STAGES))
    p.add_argument("--config", required=True, help="TOML training config (see cola_core/training/configs/)")
    p.add_argument("--resume", action="store_true", help="continue from run_dir/checkpoint exactly")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.stage, args.config)
    final = STAGES[args.stage](config, resume=args.resume)
    print("final validation: " + ", ".join(f"{k} {v:.4g}" for k, v in final.items()))
    return 0

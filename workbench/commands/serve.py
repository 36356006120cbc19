"""``cola-workbench serve``: the Gradio workbench app (trajectories, diagnostics, guidance lab, latent lab)."""
from __future__ import annotations

import argparse
import os

from cola_core.checkpoint import parse_device, parse_dtype
from cola_core.pocket import resolve_checkpoint

from .common import PORT, UsageError, add_model_args, int_in_range


def _auth(text: str) -> tuple[str, str]:
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise argparse.ArgumentTypeError("expected USER:PASS with a non-empty user and password")
    return user, password


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve the Gradio workbench app in the browser",
                              description="Gradio app: trajectories (streamed), diagnostics, guidance lab and "
                                          "latent lab over one checkpoint. Runs fully offline.")
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=PORT, default=7860, help="port (default 7860)")
    p.add_argument("--share", action="store_true",
                   help="ask Gradio for a temporary public link (needs internet; says so clearly when it fails)")
    p.add_argument("--auth", type=_auth, default=None, metavar="USER:PASS", help="require this login")
    p.add_argument("--corpus", default=None, help="backdrop corpus for projections (.txt or .jsonl; "
                                                  "default: a bundled sample)")
    p.add_argument("--concurrency", type=int_in_range(1), default=2, help="heavy jobs running at once (default 2)")
    p.add_argument("--max-upload-kib", type=int_in_range(1), default=1024, help="largest uploaded file (KiB, default 1024)")
    p.add_argument("--no-umap", action="store_true", help="do not fit UMAP in the background (PCA only)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    parse_device(args.device), parse_dtype(args.dtype)   # bad values fail before gradio or weights load
    checkpoint = resolve_checkpoint(args.checkpoint)  # a missing pocket checkpoint fails here too
    if args.corpus is not None and not os.path.isfile(args.corpus):
        raise UsageError(f"--corpus: file not found: {args.corpus}")
    try:
        from apps.gradio_app import AppContext, Limits, create_app, launch
    except ImportError as exc:
        raise UsageError(f"the app needs Gradio ({exc}); pip install 'gradio>=5'") from None
    ctx = AppContext.create(checkpoint, device=args.device, dtype=args.dtype, corpus=args.corpus,
                            limits=Limits(max_upload_bytes=args.max_upload_kib * 1024), umap=not args.no_umap,
                            concurrency=args.concurrency)
    launch(create_app(ctx), ctx, host=args.host, port=args.port, share=args.share, auth=args.auth)
    return 0

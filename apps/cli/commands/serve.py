"""``cola-workbench serve``: the Gradio workbench app (trajectories, diagnostics, guidance lab, latent lab, bench).

Prints its URL, one line per bad input a user sends, and on Ctrl-C (or SIGTERM) removes every file it wrote.
"""
from __future__ import annotations

import argparse
import os

from .common import PORT, UsageError, add_command, add_model_args, apply_threads, int_in_range


def _auth(text: str) -> tuple[str, str]:
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        raise argparse.ArgumentTypeError("expected USER:PASS with a non-empty user and password")
    return user, password


def register(subparsers) -> None:
    p = add_command(subparsers, "serve", help="serve the Gradio workbench app in the browser",
                              description="Gradio app: trajectories (streamed), diagnostics, guidance lab, "
                                          "latent lab and bench results over one checkpoint. Runs fully offline.")
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="bind address")
    p.add_argument("--port", type=PORT, default=7860, help="port (0: the first free one from 7860)")
    p.add_argument("--share", action="store_true",
                   help="ask Gradio for a temporary public link (needs internet; says so clearly when it fails)")
    p.add_argument("--auth", type=_auth, default=None, metavar="USER:PASS", help="require this login")
    p.add_argument("--corpus", default=None, help="backdrop corpus for projections (.txt or .jsonl); "
                                                  "none: a bundled sample")
    p.add_argument("--concurrency", type=int_in_range(1), default=2, help="heavy jobs running at once")
    p.add_argument("--max-upload-kib", type=int_in_range(1), default=1024, help="largest uploaded file in KiB")
    p.add_argument("--max-store-mib", type=int_in_range(1), default=1024,
                   help="disk for the runs' download files; the oldest runs are dropped beyond it")
    p.add_argument("--no-umap", action="store_true", help="do not fit UMAP in the background (PCA only)")
    p.add_argument("--bench-root", action="append", default=[], metavar="DIR",
                   help="a folder whose bench outputs the Bench tab may read, besides ./runs and ./artifacts "
                        "(repeatable)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cola_core.checkpoint import parse_device, parse_dtype
    from cola_core.pocket import resolve_checkpoint

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    parse_device(args.device), parse_dtype(args.dtype)   # bad values fail before gradio or weights load
    apply_threads(args)
    checkpoint = resolve_checkpoint(args.checkpoint)   # a missing or unknown checkpoint fails here, before Gradio
    if args.corpus is not None and not os.path.isfile(args.corpus):
        raise UsageError(f"--corpus: file not found: {args.corpus}")
    for root in args.bench_root:
        if not os.path.isdir(root):
            raise UsageError(f"--bench-root: not a folder: {root}")
    try:
        from apps.gradio_app import AppContext, Limits, create_app, launch
    except ImportError as exc:
        raise UsageError(f"the app needs Gradio ({exc}); pip install 'gradio>=5'") from None
    limits = Limits(max_upload_bytes=args.max_upload_kib << 10, max_store_bytes=args.max_store_mib << 20)
    ctx = AppContext.create(checkpoint, device=args.device, dtype=args.dtype, corpus=args.corpus, limits=limits,
                            umap=not args.no_umap, concurrency=args.concurrency, bench_root=args.bench_root)
    try:
        app = create_app(ctx)
    except BaseException:
        ctx.close()
        raise
    try:
        launch(app, ctx, host=args.host, port=args.port or None, share=args.share, auth=args.auth)  # until Ctrl-C
    except OSError as exc:      # the port is taken, the address cannot be bound
        raise UsageError(f"cannot serve on {args.host}:{args.port}: {exc}") from None
    return 0

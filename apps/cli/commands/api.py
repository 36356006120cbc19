"""``cola-workbench api``: serve a checkpoint behind OpenAI-compatible Chat Completions / Completions."""
from __future__ import annotations

import argparse
import os

from .common import PORT, UsageError, add_command, add_model_args, int_in_range, load_model


def register(subparsers) -> None:
    p = add_command(subparsers, "api", help="serve an OpenAI-compatible HTTP API (FastAPI + uvicorn)",
                              description="OpenAI-compatible /v1/chat/completions and /v1/completions with "
                                          "streaming. An API key is required unless the host is loopback. "
                                          "Without --checkpoint it serves pocket-chat (chat requests get answers; "
                                          "--checkpoint pocket serves the base model).")
    add_model_args(p, default="pocket-chat (a chat front-end)")
    p.add_argument("--host", default="127.0.0.1", help="bind address")
    p.add_argument("--port", type=PORT, default=8000, help="port")
    p.add_argument("--api-key", default=os.environ.get("COLA_API_KEY"),
                   help="bearer key clients must send (from $COLA_API_KEY when set; required off loopback)")
    p.add_argument("--model-name", default="cola-dlm", help="model id clients ask for")
    p.add_argument("--concurrency", type=int_in_range(1), default=16, help="requests served at once")
    p.add_argument("--max-batch", type=int_in_range(1), default=16,
                   help="rows (prompts x n) of those requests sampled together in one batch; 1: a sampler per request")
    p.add_argument("--queue-size", type=int_in_range(0), default=16, help="requests waiting beyond those; more get 429")
    p.add_argument("--max-tokens-cap", type=int_in_range(1), default=1024, help="largest max_tokens accepted")
    p.add_argument("--max-body-bytes", type=int_in_range(1), default=1 << 20, help="largest request body in bytes")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn log level")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        from apps.api import check_bind, serve
    except ImportError as exc:
        raise UsageError(f"the API server needs FastAPI and uvicorn ({exc}); pip install fastapi uvicorn") from None
    check_bind(args.host, args.api_key)          # before loading any weights
    serve(load_model(args, chat=True), host=args.host, port=args.port, api_key=args.api_key, log_level=args.log_level,
          model_id=args.model_name, concurrency=args.concurrency, max_batch=args.max_batch,
          queue_size=args.queue_size, max_tokens_cap=args.max_tokens_cap, max_body_bytes=args.max_body_bytes)
    return 0

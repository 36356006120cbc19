"""The Gradio Blocks app: a status bar and four tabs, queued with a concurrency limit, fully offline.

``create_app(ctx)`` builds the Blocks; ``launch(demo, ctx, ...)`` starts it and reports honestly
whether ``--share`` produced a public link.
"""
from __future__ import annotations

import ipaddress
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")   # before gradio is imported anywhere

import gradio as gr  # noqa: E402

from . import diagnostics, guidance, latent_lab, trajectories  # noqa: E402
from .context import AppContext  # noqa: E402

TITLE = "Cola Workbench"
STATUS_EVERY_S = 5.0
CSS = """
.cola-grid table{border-collapse:collapse;width:100%;font-size:13px}
.cola-grid th,.cola-grid td{border:1px solid var(--border-color-primary);padding:6px;vertical-align:top;text-align:left}
.cola-grid .out{margin-bottom:6px}
.cola-grid .prompt{color:var(--body-text-color-subdued);margin-right:4px}
.cola-grid .gen{font-weight:600}
.cola-grid td.pending{color:var(--body-text-color-subdued)}
#cola-status{font-size:13px}
"""


def status_markdown(ctx: AppContext) -> str:
    """The checkpoint/device status bar."""
    s = ctx.status()
    return (f"**Checkpoint** `{s['checkpoint']}` · fingerprint `{s['fingerprint'][:12]}` · "
            f"**{s['device']}** / {s['dtype']} · {s['parameters'] / 1e6:.2f} M parameters · "
            f"block {s['block_size']} × patch {s['patch_size']}, latent dim {s['latent_dim']}  \n"
            f"**Projection** {s['projection']} · backdrop: {s['backdrop']} · "
            f"{s['concurrency']} heavy job(s) at once · {s['runs_stored']} stored run(s)")


def create_app(ctx: AppContext) -> gr.Blocks:
    """Build the app (call ``.queue()``-free: :func:`launch` and the tests configure the queue)."""
    with gr.Blocks(title=TITLE, delete_cache=(3600, int(ctx.store.ttl_s))) as demo:
        with gr.Row():
            gr.Markdown(f"## {TITLE}")
        status = gr.Markdown(status_markdown(ctx), elem_id="cola-status")
        status_json = gr.JSON(visible=False)
        with gr.Tabs():
            with gr.Tab("Trajectories", id="trajectories"):
                traj = trajectories.build(ctx)
            with gr.Tab("Diagnostics", id="diagnostics"):
                diagnostics.build(ctx)
            with gr.Tab("Guidance lab", id="guidance"):
                guidance.build(ctx)
            with gr.Tab("Latent lab", id="latent"):
                latent_lab.build(ctx)
        timer = gr.Timer(STATUS_EVERY_S, active=ctx.projections.umap_state == "fitting")

        def refresh():
            fitting = ctx.projections.umap_state == "fitting"
            return (status_markdown(ctx), ctx.status(),
                    gr.Radio(choices=ctx.projections.choices, info=ctx.projections.describe()),
                    gr.Timer(active=fitting))

        demo.load(refresh, None, [status, status_json, traj["method"], timer], api_name="status",
                  concurrency_id="light", concurrency_limit=8, show_progress="hidden")
        timer.tick(refresh, None, [status, status_json, traj["method"], timer], api_name="status_tick",
                   concurrency_id="light", concurrency_limit=8, show_progress="hidden")
    demo.queue(default_concurrency_limit=ctx.concurrency, max_size=64)
    return demo


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def share_report(share: bool, share_url: str | None, auth: tuple[str, str] | None, local_url: str) -> str:
    """What to tell the person who asked for --share, given what Gradio actually did."""
    if not share:
        return ""
    if share_url is None:
        return (f"--share: NO PUBLIC LINK was created (Gradio could not reach its share server; this machine is "
                f"probably offline). The app is only available locally at {local_url}")
    text = f"--share: public link {share_url} (expires within a week)"
    if auth is None:
        text += ("\nWARNING: anyone with this link can use the app and your machine's compute; "
                 "restart with --auth USER:PASS to require a login")
    return text


def launch(demo: gr.Blocks, ctx: AppContext, host: str = "127.0.0.1", port: int | None = 7860, share: bool = False,
           auth: tuple[str, str] | None = None, prevent_thread_lock: bool = False, quiet: bool = False):
    """Start the server; returns (fastapi app, local url, share url or None)."""
    app, local_url, share_url = demo.launch(
        server_name=host, server_port=port, share=share, auth=auth, prevent_thread_lock=True, quiet=quiet,
        show_error=True, ssr_mode=False, max_file_size=4 * ctx.limits.max_upload_bytes,
        allowed_paths=[str(ctx.store.root)], css=CSS, footer_links=["api", "settings"])
    message = share_report(share, demo.share_url, auth, local_url)
    if message:
        print(message, flush=True)
    if not is_loopback(host) and auth is None and not quiet:
        print(f"note: serving on {host} without --auth; anyone who can reach this port can use the app", flush=True)
    if not prevent_thread_lock:
        demo.block_thread()
    return app, local_url, share_url

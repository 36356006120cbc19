"""The Gradio Blocks app: a status bar and the tabs of :data:`TABS`, queued with a concurrency limit, offline.

``create_app(ctx)`` builds the Blocks; ``launch(demo, ctx, ...)`` starts it (reporting honestly
whether ``--share`` produced a public link) and returns a :class:`Server` whose ``close()`` removes
everything the app wrote; ``serve`` blocks until Ctrl-C (or SIGTERM) and then closes it.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")   # before gradio is imported anywhere

import gradio as gr  # noqa: E402

from . import bench, chat, diagnostics, guidance, inside, latent_lab, trajectories  # noqa: E402
from .context import AppContext  # noqa: E402
from .disk import Sweeper  # noqa: E402
from .events import Tab, TabComponents, Update, log, on  # noqa: E402

TITLE = "Cola Workbench"
TABS: tuple[Tab, ...] = (trajectories, diagnostics, guidance, latent_lab, inside, bench,
                         chat)   # a new tab: a module, named here
STATUS_EVERY_S = 5.0
CACHE_SWEEP_S = 60       # Gradio removes its files for this app older than the run TTL this often
CSS = """
.cola-grid table{border-collapse:collapse;width:100%;font-size:13px}
.cola-grid th,.cola-grid td{border:1px solid var(--border-color-primary);padding:6px;vertical-align:top;text-align:left}
.cola-grid .out{margin-bottom:6px}
.cola-grid .prompt{color:var(--body-text-color-subdued);margin-right:4px}
.cola-grid .gen{font-weight:600}
.cola-grid td.pending{color:var(--body-text-color-subdued)}
.cola-grid .flag{color:#d62728;font-weight:600;margin-left:4px;white-space:nowrap}
#cola-status{font-size:13px}
"""


def status_markdown(ctx: AppContext) -> str:
    """The checkpoint/device status bar."""
    s = ctx.status()
    return (f"**Checkpoint** `{s['checkpoint']}` · fingerprint `{s['fingerprint'][:12]}` · "
            f"**{s['device']}** / {s['dtype']} · {s['parameters'] / 1e6:.2f} M parameters · "
            f"block {s['block_size']} × patch {s['patch_size']}, latent dim {s['latent_dim']}  \n"
            f"**Projection** {s['projection']} · backdrop: {s['backdrop']} · "
            f"{s['concurrency']} heavy job(s) at once · {s['runs_stored']} stored run(s), {s['store_mib']} MiB")


def refresh(ctx: AppContext) -> Update:
    """The status bar, its facts, the projection choices and whether to keep polling (while UMAP fits)."""
    return {"status": status_markdown(ctx), "facts": ctx.status(),
            "projection": gr.Radio(choices=ctx.projections.choices, info=ctx.projections.describe()),
            "timer": gr.Timer(active=ctx.projections.umap_state == "fitting")}


def create_app(ctx: AppContext) -> gr.Blocks:
    """Build the app: the status bar, then one ``gr.Tab`` per module in :data:`TABS` (its layout, then its events),
    then the events that reach across tabs (a tab's optional ``link``)."""
    with gr.Blocks(title=TITLE, delete_cache=(CACHE_SWEEP_S, int(ctx.limits.run_ttl_s))) as demo:
        with gr.Row():
            gr.Markdown(f"## {TITLE}")
        shell = TabComponents(status=gr.Markdown(status_markdown(ctx), elem_id="cola-status"),
                              facts=gr.JSON(visible=False))
        tabs = {}
        with gr.Tabs() as selector:
            for tab in TABS:
                with gr.Tab(tab.TITLE, id=tab.TAB_ID):
                    tabs[tab.TAB_ID] = tab.build(ctx)
                    tab.wire(ctx, tabs[tab.TAB_ID])
        for tab in TABS:
            if hasattr(tab, "link"):
                tab.link(ctx, tabs, selector)
        shell.timer = gr.Timer(STATUS_EVERY_S, active=ctx.projections.umap_state == "fitting")
        shell.projection = tabs[trajectories.TAB_ID].method
        outputs = ("status", "facts", "projection", "timer")
        on(ctx, shell, demo.load, refresh, (), outputs, api_name="status", show_progress="hidden")
        on(ctx, shell, shell.timer.tick, refresh, (), outputs, api_name="status_tick", show_progress="hidden")
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


@dataclass
class Server:
    """A running app: its URLs, and :meth:`close`, which stops it and removes everything it wrote."""

    demo: gr.Blocks
    ctx: AppContext
    sweeper: Sweeper
    local_url: str
    share_url: str | None

    def close(self) -> None:
        """Stop serving, stop sweeping, delete the run store (Gradio deletes its own files for the app)."""
        self.demo.close(verbose=False)
        self.sweeper.stop()
        self.ctx.close()

    def serve_forever(self) -> None:
        """Block until Ctrl-C or SIGTERM, then :meth:`close`."""
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            while self.demo.is_running:
                time.sleep(0.2)
        except KeyboardInterrupt:
            print("shutting down: removing the app's files", flush=True)
        finally:
            self.close()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def log_to_stderr() -> None:
    """Print the app's log lines (one per bad input) with a timestamp, once per process."""
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def launch(demo: gr.Blocks, ctx: AppContext, host: str = "127.0.0.1", port: int | None = 7860, share: bool = False,
           auth: tuple[str, str] | None = None, prevent_thread_lock: bool = False, quiet: bool = False) -> Server:
    """Start the server and its disk sweeper; with ``prevent_thread_lock`` return at once (call ``close()``),
    else serve until interrupted. Prints the URL and the --share report itself (Gradio's own banner is off)."""
    try:
        _, local_url, _ = demo.launch(
            server_name=host, server_port=port, share=share, auth=auth, prevent_thread_lock=True, quiet=True,
            show_error=True, ssr_mode=False, max_file_size=4 * ctx.limits.max_upload_bytes, css=CSS,
            footer_links=["api", "settings"])
    except BaseException:
        ctx.close()
        raise
    server = Server(demo, ctx, Sweeper(demo, ctx).start(), local_url, demo.share_url)
    if not quiet:
        log_to_stderr()
        print(f"{TITLE} at {local_url} (files under {ctx.store.root}, removed on exit; Ctrl-C stops)", flush=True)
        if not is_loopback(host) and auth is None:
            print(f"note: serving on {host} without --auth; anyone who can reach this port can use the app",
                  flush=True)
    message = share_report(share, server.share_url, auth, local_url)
    if message:
        print(message, flush=True)
    if not prevent_thread_lock:
        server.serve_forever()
    return server

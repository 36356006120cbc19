"""Gradio app benchmark: latent-lab interpolation step latency, and time from `serve` to first page render.

    python benchmarks/app_bench.py                              # tiny fixture (+ pocket checkpoint if present)
    python benchmarks/app_bench.py --checkpoint PATH --preset small --json out.json

Interpolation step = what one slider move costs with both texts' latents already encoded and
cached: (a) in process, ``interpolate`` + ``Workbench.decode`` of one point; (b) end to end, the
``/latent_interpolate`` endpoint through gradio_client on a live app (queue, HTTP, JSON).
Target: < 300 ms on the pocket checkpoint on CPU. ``--preset small`` adds a random checkpoint of
the ``small`` size from generate_bench.py as a stand-in until the pocket checkpoint is trained.

Disk per call = bytes one call of each heavy endpoint adds to the run store and to Gradio's cache
(issue #14 measured ~4.7 MB each before the store moved into Gradio's cache), and what is left on
disk once the server has closed.

Serve to first render = a fresh ``cola-workbench serve`` process until headless Chromium shows the
status bar (falls back to the first HTTP 200 when Playwright or /usr/bin/chromium is missing).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402

FIXTURE = ROOT / "tests" / "fixtures" / "visible_a"
TEXT_A = "a small domesticated animal kept as a pet"
TEXT_B = "a large body of salt water that covers most of the earth and holds many kinds of fish"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def percentiles(samples: list[float]) -> dict:
    ordered = sorted(samples)
    return {"median_ms": 1000 * statistics.median(ordered), "p90_ms": 1000 * ordered[int(0.9 * (len(ordered) - 1))],
            "min_ms": 1000 * ordered[0], "n": len(ordered)}


def interpolation_latency(checkpoint: Path, repeats: int) -> dict:
    """In-process and end-to-end latency of one interpolation step on ``checkpoint``."""
    from gradio_client import Client

    from apps.gradio_app import AppContext, create_app, launch
    from workbench import interpolate

    ctx = AppContext.create(checkpoint, umap=False, cache_dir=tempfile.mkdtemp())
    wb = ctx.workbench
    latents = wb.encode([TEXT_A, TEXT_B], pad_to="longest")
    alphas = [(i % 21) / 20 for i in range(repeats)]
    default_threads = torch.get_num_threads()
    in_process = {}
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        wb.decode(interpolate(latents[0], latents[1], 0.5, "slerp"))      # warm-up
        core = []
        for alpha in alphas:
            start = time.perf_counter()
            wb.decode(interpolate(latents[0], latents[1], alpha, "slerp"))
            core.append(time.perf_counter() - start)
        in_process[f"{threads}_threads"] = percentiles(core)
    torch.set_num_threads(default_threads)
    server = launch(create_app(ctx), ctx, port=None, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(server.local_url, verbose=False)
        client.predict(TEXT_A, TEXT_B, 0.5, "slerp", api_name="/latent_encode")
        client.predict(0.5, "slerp", [], api_name="/latent_interpolate")   # warm-up
        end_to_end = []
        for alpha in alphas:
            start = time.perf_counter()
            client.predict(alpha, "slerp", [], api_name="/latent_interpolate")
            end_to_end.append(time.perf_counter() - start)
    finally:
        server.close()
    model = ctx.model
    return {"checkpoint": str(checkpoint), "fingerprint": model.fingerprint, "device": str(model.device),
            "params": sum(p.numel() for m in (model.vae, model.dit) for p in m.parameters()),
            "latent_blocks": latents.n_blocks[0], "torch_threads": default_threads,
            "in_process": in_process, "end_to_end": percentiles(end_to_end)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_to_render(checkpoint: Path) -> dict:
    """Seconds from spawning `cola-workbench serve` to the first HTTP 200 and to the rendered status bar."""
    import urllib.request

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "apps.cli", "serve", "--checkpoint", str(checkpoint),
                             "--port", str(port), "--no-umap"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    result = {"checkpoint": str(checkpoint)}
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"serve exited with code {proc.returncode}")
            if time.perf_counter() - start > 120:
                raise RuntimeError("serve did not answer within 120 s")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.05)
        result["http_ready_s"] = time.perf_counter() - start
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            return result
        if not CHROMIUM.is_file():
            return result
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page()
            page_start = time.perf_counter()
            page.goto(url)
            page.get_by_text("fingerprint").first.wait_for(timeout=60_000)
            page.get_by_role("tab", name="Latent lab").wait_for(timeout=60_000)
            now = time.perf_counter()
            result["first_render_s"] = now - start
            result["page_render_s"] = now - page_start
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return result


def tree_bytes(folder: Path, skip: Path | None = None) -> tuple[int, int]:
    """(bytes, files) of the regular files under ``folder``, leaving out ``skip``."""
    files = [p for p in folder.rglob("*") if p.is_file() and (skip is None or not p.is_relative_to(skip))]
    return sum(p.stat().st_size for p in files), len(files)


def disk_per_call(checkpoint: Path) -> dict:
    """Bytes one call of each heavy endpoint leaves in the run store and in Gradio's cache, and what is
    left on disk after the server closes (Gradio's cache pointed at a fresh folder for the measurement)."""
    from gradio_client import Client

    gradio_dir = Path(tempfile.mkdtemp(prefix="cola-app-bench-gradio-"))
    previous = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(gradio_dir)     # read when the app and its components are built
    try:
        from apps.gradio_app import AppContext, create_app, launch

        ctx = AppContext.create(checkpoint, umap=False, cache_dir=tempfile.mkdtemp())
        server = launch(create_app(ctx), ctx, port=None, prevent_thread_lock=True, quiet=True)
        calls = {"trajectory_generate": ("a small animal that", 16, 7.0, 32, 0, "euler", "linear", True, "auto", "2-D"),
                 "diagnose": ("a cat\nthe sea\na tool for driving nails", None, 1, 1, 11, 0, False, 8),
                 "guidance_grid": ("a small animal that", "1, 7", "steps", "4", 16, 0, 8, "euler", "off"),
                 "latent_encode": (TEXT_A, TEXT_B, 0.5, "slerp")}
        per_call = {}
        try:
            client = Client(server.local_url, verbose=False, download_files=False)
            for api_name, args in calls.items():
                store_before, (cache_before, _) = ctx.store.nbytes(), tree_bytes(gradio_dir, ctx.store.root)
                client.predict(*args, api_name=f"/{api_name}")
                per_call[api_name] = {"store_bytes": ctx.store.nbytes() - store_before,
                                      "gradio_cache_bytes": tree_bytes(gradio_dir, ctx.store.root)[0] - cache_before}
        finally:
            server.close()
        left_bytes, left_files = tree_bytes(gradio_dir)
    finally:
        if previous is None:
            os.environ.pop("GRADIO_TEMP_DIR")
        else:
            os.environ["GRADIO_TEMP_DIR"] = previous
    return {"checkpoint": str(checkpoint), "per_call": per_call, "left_after_close": {"bytes": left_bytes,
                                                                                      "files": left_files}}


def random_checkpoint(preset: str) -> Path:
    """A freshly initialised checkpoint of a generate_bench.py preset size (a size stand-in, not a trained model)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from cola_core.checkpoint import ColaModel, save_pretrained
    from cola_core.config import DiTConfig, VAEConfig
    from cola_core.dit import ColaDiT
    from cola_core.tokenizer import ColaTokenizer
    from cola_core.vae import ColaTextVAE
    from generate_bench import PRESETS

    vae_cfg, dit_cfg = VAEConfig(**PRESETS[preset][0]), DiTConfig(**PRESETS[preset][1])
    torch.manual_seed(0)
    vocab = {f"<t{i}>": i for i in range(vae_cfg.vocab_size - 1)}
    vocab["<|pad|>"] = vae_cfg.vocab_size - 1
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<t0>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()                # one token per word
    tokenizer = ColaTokenizer(backend, pad_id=vae_cfg.vocab_size - 1)
    model = ColaModel(vae=ColaTextVAE(vae_cfg).eval(), dit=ColaDiT(dit_cfg).eval(), tokenizer=tokenizer,
                      vae_config=vae_cfg, dit_config=dit_cfg, device=torch.device("cpu"), dtype=torch.float32)
    root = Path(tempfile.mkdtemp(prefix=f"cola-app-bench-{preset}-"))
    save_pretrained(model, root)
    return root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", action="append", default=None,
                        help="checkpoint to measure, repeatable (default: the tiny fixture, plus the pocket "
                             "checkpoint when present)")
    parser.add_argument("--preset", action="append", default=[], choices=["tiny", "small"],
                        help="also measure a random checkpoint of this generate_bench.py size")
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    checkpoints = [Path(c) for c in args.checkpoint] if args.checkpoint else [FIXTURE]
    if not args.checkpoint:
        from cola_core.pocket import POCKET_DIR
        if (POCKET_DIR / "cola_dlm").is_dir():
            checkpoints.append(POCKET_DIR)
    labelled = [(str(c), c) for c in checkpoints] + [(f"random-{p}", random_checkpoint(p)) for p in args.preset]
    results = {"cpu_count": os.cpu_count(), "load_average_before": os.getloadavg(), "interpolation": {},
               "serve": None}
    for label, path in labelled:
        r = interpolation_latency(path, args.repeats)
        results["interpolation"][label] = r
        core = ", ".join(f"{k.replace('_', ' ')} median {v['median_ms']:.1f} ms (p90 {v['p90_ms']:.1f})"
                         for k, v in r["in_process"].items())
        print(f"interpolation step [{label}] ({r['params'] / 1e6:.2f} M params, {r['latent_blocks']} blocks): "
              f"in process: {core}; end to end: median {r['end_to_end']['median_ms']:.1f} ms "
              f"(p90 {r['end_to_end']['p90_ms']:.1f}); target < 300 ms", flush=True)
    results["disk"] = disk = disk_per_call(checkpoints[-1])
    for api_name, d in disk["per_call"].items():
        print(f"disk per call [{api_name}]: run store {d['store_bytes'] / 2**20:.2f} MiB, Gradio cache "
              f"{d['gradio_cache_bytes'] / 2**20:.2f} MiB", flush=True)
    print(f"left on disk after close: {disk['left_after_close']['files']} files, "
          f"{disk['left_after_close']['bytes']} bytes", flush=True)
    results["serve"] = serve = serve_to_render(checkpoints[-1])
    print(f"serve -> HTTP 200: {serve['http_ready_s']:.2f} s; serve -> first render: "
          f"{serve.get('first_render_s', float('nan')):.2f} s [{serve['checkpoint']}]", flush=True)
    results["load_average_after"] = os.getloadavg()
    print(f"load average before/after: {results['load_average_before'][0]:.1f} / "
          f"{results['load_average_after'][0]:.1f} on {os.cpu_count()} cores (timings on a shared machine)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

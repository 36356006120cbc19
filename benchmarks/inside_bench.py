"""Hook points inside the models: what they cost when nobody listens, and what a filtered cache holds.

    python benchmarks/inside_bench.py overhead                 # pocket checkpoint, CPU
    python benchmarks/inside_bench.py memory --preset small    # random 'small' model with a 32k vocabulary

``overhead``: this tree's code against the code before hook points existed (``--baseline-rev``,
default: the parent of the commit that added ``cola_core/hook_points.py``), nobody listening;
outputs must be bit-identical (target: <= 2 % slower). The sharp measure: the DiT forward of one
sampler step and the decoder forward of one block, both versions' modules with the same weights,
interleaved in one process; plus the no-op tap calls counted and timed. End to end: plain generation
in fresh subprocesses, alternated for ``--rounds`` rounds, and in-process a run that listens but
wants no point inside the models and one that caches a single DiT point. Times are CPU seconds of
single-threaded work, which a busy shared machine disturbs far less than wall-clock time.

``memory``: peak resident memory added by one ``run_with_cache`` call (sampled every 0.5 ms in a
fresh subprocess, after a warm-up generation) and the bytes the returned cache holds, for a narrow
filter with this code and the baseline code (which recorded the whole trajectory and filtered
afterwards), the default trajectory, and everything (``"**"``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
NARROW = ["block.*.step.*.v_uncond", "block.0.logits"]
MEMORY_VOCAB = 32768


# -- workers (run in a fresh process, with cola_core/workbench from --src) ----------------------------
def load(args: argparse.Namespace):
    import torch
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    if args.preset:
        from generate_bench import PRESETS
        from trajectory_bench import random_model
        if args.mode == "memory":
            PRESETS[args.preset][0]["vocab_size"] = MEMORY_VOCAB
        return random_model(args.preset, "cpu")
    from cola_core import load_pretrained
    from cola_core.pocket import POCKET_DIR
    return load_pretrained(args.checkpoint or POCKET_DIR)


def knobs(args: argparse.Namespace) -> dict:
    return dict(seed=0, steps=args.steps, max_new_tokens=args.blocks, stop_at_eos=False)


def prompts(model, batch: int) -> list[str]:
    words = "a kind of tree that grows near water someone who migrates the act of".split()
    if model.source.startswith("random"):
        words = [f"<t{i}>" for i in range(1, 40)]
    return [" ".join(words[(i + k) % len(words)] for k in range(5)) for i in range(batch)]


def overhead_worker(args: argparse.Namespace) -> dict:
    """Median seconds of plain generation, and a hash of its latents (bit-identity across code versions)."""
    from cola_core.generate import BlockwiseSampler, GenerationConfig
    model = load(args)
    texts = prompts(model, args.batch)
    config = GenerationConfig().with_knobs(**knobs(args))

    def run() -> bytes:
        sampler = BlockwiseSampler(model, texts, config)
        digest = hashlib.sha256()
        for event, state in sampler.events():
            if event == "block_end":
                digest.update(state.z.contiguous().numpy().tobytes())
        return digest.digest()

    run()
    times = []
    for _ in range(args.repeats):
        start = time.process_time()
        digest = run()
        times.append(time.process_time() - start)
    out = {"median_s": statistics.median(times), "latents_sha256": digest.hex()}
    if args.inprocess:
        from workbench import Workbench
        wb = Workbench(model)
        point = "block.0.step.0.dit.cond.layer.0.resid_post"
        cases = {"generate": lambda: wb.generate(texts, **knobs(args)),
                 "listening, no model point": lambda: wb.run_with_cache(texts, "block.0.z_final", **knobs(args)),
                 "caching one DiT point": lambda: wb.run_with_cache(texts, point, **knobs(args))}
        for fn in cases.values():
            fn()
        samples = {name: [] for name in cases}
        for _ in range(args.repeats):
            for name, fn in cases.items():
                start = time.process_time()
                fn()
                samples[name].append(time.process_time() - start)
        out["inprocess_s"] = {name: statistics.median(ts) for name, ts in samples.items()}
    return out


class PeakRSS:
    """Highest resident set size seen while the ``with`` body runs (sampled by a thread every 0.5 ms)."""

    def __enter__(self) -> "PeakRSS":
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.start = self.peak = self.rss()
        self.running = True
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def rss(self) -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * self.page

    def _watch(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.rss())
            time.sleep(0.0005)

    def __exit__(self, *exc) -> None:
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, self.rss())


def memory_worker(args: argparse.Namespace) -> dict:
    """Peak memory one run_with_cache call adds, and what its cache holds."""
    from workbench import Workbench
    wb = Workbench(load(args))
    texts = prompts(wb.model, args.batch)
    names = {"narrow": NARROW, "trajectory": None, "everything": "**"}[args.case]
    wb.generate(texts, **knobs(args))   # warm-up: the generation's own working set
    with PeakRSS() as rss:
        _, cache = wb.run_with_cache(texts, names_filter=names, **knobs(args))
        held = sum(t.numel() * t.element_size() for t in cache.values())
    return {"peak_added_bytes": rss.peak - rss.start, "cache_bytes": held, "tensors": len(cache),
            "vocab": wb.model.vae_config.vocab_size}


# -- the driver ---------------------------------------------------------------------------------------
def baseline_tree(rev: str | None) -> tuple[str, Path]:
    """Export the baseline revision's cola_core and workbench into a temporary folder."""
    if rev is None:
        added = subprocess.run(["git", "log", "--diff-filter=A", "--format=%H", "--", "cola_core/hook_points.py"],
                               cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
        rev = f"{added[-1]}^"
    rev = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    folder = Path(tempfile.mkdtemp(prefix="inside_bench_"))
    archive = subprocess.run(["git", "archive", rev, "cola_core", "workbench"], cwd=ROOT, capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return rev, folder


def worker(args: argparse.Namespace, src: Path, *extra: str) -> dict:
    """Run this script as a worker with ``src`` first on the path; its last stdout line is JSON."""
    cmd = [sys.executable, __file__, args.mode, "--worker", "--threads", str(args.threads),
           "--steps", str(args.steps), "--blocks", str(args.blocks), "--batch", str(args.batch),
           "--repeats", str(args.repeats), *extra]
    cmd += ["--preset", args.preset] if args.preset else (["--checkpoint", args.checkpoint] if args.checkpoint else [])
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=src)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def forward_ab(args: argparse.Namespace, base: Path) -> dict:
    """The DiT forward of one sampler step and the decoder forward of one block, baseline modules vs this
    tree's, same weights, interleaved in one process (chunks of forwards, alternating order): CPU seconds."""
    import shutil

    import torch
    alias = base / "alias"
    shutil.copytree(base / "cola_core", alias / "cola_core_base", dirs_exist_ok=True)
    sys.path.insert(0, str(alias))
    from cola_core_base.dit import ColaDiT as BaseDiT
    from cola_core_base.vae import ColaTextVAE as BaseVAE

    from cola_core.dit import ColaDiT
    from cola_core.vae import ColaTextVAE
    torch.set_num_threads(args.threads)
    model = load(args)
    modules = {}   # both versions built the same way (fresh modules, then the same weights), so memory layouts match
    for name, classes, weights in (("dit", (BaseDiT, ColaDiT), model.dit), ("vae", (BaseVAE, ColaTextVAE), model.vae)):
        modules[name] = [cls(weights.config).eval() for cls in classes]
        for module in modules[name]:
            module.load_state_dict(weights.state_dict())
    old_dit, new_dit = modules["dit"]
    old_vae, new_vae = modules["vae"]
    rows, bs, channels = 2 * args.batch, model.block_size, model.dit_config.txt_in_channels
    gen = torch.Generator().manual_seed(0)
    x, t = torch.randn(rows, bs, channels, generator=gen), torch.full((rows, bs), 500.0)
    lengths = torch.full((rows,), bs, dtype=torch.long)
    z = torch.randn(args.batch, 8 * bs, model.vae_config.latent_dim, generator=gen)
    z_lengths = torch.full((args.batch,), 8 * bs, dtype=torch.long)
    calls = {"dit": (lambda dit: dit(x, t, lengths), old_dit, new_dit),
             "decoder": (lambda vae: vae.decode_latents(z, z_lengths), old_vae, new_vae)}
    out = {}
    with torch.no_grad():
        for name, (call, old, new) in calls.items():
            identical = torch.equal(call(old), call(new))
            samples = {"baseline": [], "hook points": []}
            for chunk in range(args.chunks):
                for which in (("baseline", "hook points") if chunk % 2 == 0 else ("hook points", "baseline")):
                    module = old if which == "baseline" else new
                    start = time.process_time()
                    for _ in range(args.per_chunk):
                        call(module)
                    samples[which].append((time.process_time() - start) / args.per_chunk)
            med = {k: statistics.median(v) for k, v in samples.items()}
            ratios = sorted(h / b for h, b in zip(samples["hook points"], samples["baseline"]))
            calls_per_forward = count_tap_calls(lambda: call(new))
            accounted = calls_per_forward * noop_tap_seconds()
            out[name] = {"median_s": med, "overhead": statistics.median(ratios) - 1,
                         "paired_ratio_quartiles": [ratios[len(ratios) // 4], ratios[len(ratios) // 2],
                                                    ratios[3 * len(ratios) // 4]],
                         "tap_calls_per_forward": calls_per_forward,
                         "accounted_overhead": accounted / med["baseline"], "bit_identical": identical}
    return out


def count_tap_calls(fn) -> int:
    """How many no-op tap calls (``tap(...)`` and ``tap.wants(...)``) one call of ``fn`` makes."""
    from cola_core.hook_points import Tap
    calls, original = [0], (Tap.__call__, Tap.wants)

    def counted(method):
        def wrapper(self, *a):
            calls[0] += 1
            return method(self, *a)
        return wrapper

    Tap.__call__, Tap.wants = counted(Tap.__call__), counted(Tap.wants)
    try:
        fn()
    finally:
        Tap.__call__, Tap.wants = original
    return calls[0]


def noop_tap_seconds(n: int = 200_000) -> float:
    """CPU seconds of one no-op tap call (the median of 5 loops)."""
    import torch

    from cola_core.hook_points import NO_TAP
    x, times = torch.zeros(1), []
    for _ in range(5):
        start = time.process_time()
        for _ in range(n):
            NO_TAP("resid_post", x)
        times.append((time.process_time() - start) / n)
    return statistics.median(times)


def overhead(args: argparse.Namespace, rev: str, base: Path) -> dict:
    runs = {"baseline": [], "hook points": []}
    for r in range(args.rounds):
        order = [("baseline", base), ("hook points", ROOT)]
        order = order if r % 2 == 0 else order[::-1]
        for name, src in order:
            runs[name].append(worker(args, src, *(["--inprocess"] if name == "hook points" and r == 0 else [])))
    medians = {name: statistics.median(x["median_s"] for x in rs) for name, rs in runs.items()}
    ratios = [h["median_s"] / b["median_s"] for h, b in zip(runs["hook points"], runs["baseline"])]
    identical = len({x["latents_sha256"] for rs in runs.values() for x in rs}) == 1
    inproc = runs["hook points"][0]["inprocess_s"]
    return {"baseline_rev": rev, "forward_ab": forward_ab(args, base),
            "rounds": args.rounds, "repeats_per_process": args.repeats, "median_generation_s": medians,
            "overhead": medians["hook points"] / medians["baseline"] - 1,
            "per_round_ratio": ratios, "bit_identical_latents": identical,
            "inprocess_s": inproc, "inprocess_overhead": {k: v / inproc["generate"] - 1 for k, v in inproc.items()}}


def memory(args: argparse.Namespace, rev: str, base: Path) -> dict:
    cases = {f"narrow filter, baseline {rev}": (base, "narrow"), "narrow filter": (ROOT, "narrow"),
             "default (trajectory)": (ROOT, "trajectory"), "everything (**)": (ROOT, "everything")}
    out = {name: worker(args, src, "--case", case) for name, (src, case) in cases.items()}
    return {"narrow_filter": NARROW, "cases": out}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["overhead", "memory"])
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="checkpoint folder (default: the pocket checkpoint)")
    src.add_argument("--preset", choices=["tiny", "small"], help="random-init size preset")
    parser.add_argument("--baseline-rev", default=None)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=7, help="timed generations per process")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--blocks", type=int, default=8, help="max_new_tokens")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--chunks", type=int, default=200, help="interleaved chunks per module (forward A/B)")
    parser.add_argument("--per-chunk", type=int, default=10, help="forwards per chunk (forward A/B)")
    parser.add_argument("--case", default="narrow")
    parser.add_argument("--inprocess", action="store_true")
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))   # this tree's cola_core / workbench, whatever is installed
    if args.worker:
        print(json.dumps(overhead_worker(args) if args.mode == "overhead" else memory_worker(args)))
        return 0
    rev, base = baseline_tree(args.baseline_rev)
    label = f"random-{args.preset}" if args.preset else Path(args.checkpoint).name if args.checkpoint else "pocket"
    result = {"label": label, "device": "cpu", "threads": args.threads, "steps": args.steps,
              "max_new_tokens": args.blocks, "batch": args.batch,
              **(overhead(args, rev, base) if args.mode == "overhead" else memory(args, rev, base))}
    path = Path(args.json) if args.json else RESULTS / f"inside_{args.mode}_{label}_cpu.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print("written to", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Whole-process generation speed at the released size: ours (eager, fast) against the official code, side by side.

    python benchmarks/release_speed.py --official /path/to/Cola-DLM --official-python /path/to/venv/bin/python \\
        --rounds 5 --threads 1 --json benchmarks/results/release_speed_cpu.json

Each run is a fresh process (import, load, generate, exit) timed from outside; the variants run in
turn, round after round (A/B/C, A/B/C, ...), so other load on the machine hits them alike; the table
reports the median and the spread of each. The workload is the issue's: batch 1, 8 new tokens, 16
steps, guidance 7, seeded noise. Random bf16 weights in the release layout are written once to
``--workdir`` (the official loader reads the same files). The official code runs in its only working
CPU mode (DiT bf16, VAE fp32; ``--official`` is a checkout of github.com/ByteDance-Seed/Cola-DLM, whose
extra dependencies, einops and rotary-embedding-torch, ``--official-python`` must have). Ours loads
both models in bf16.

Variants: ``official``, ``eager`` (``fast=False``), ``fast`` (the default path), and ``fast+fuse``
(prefill/commit fused into the next pass, the CUDA default; on a CPU it moves bf16 results by a last
bit). Every variant's texts are kept and compared with the first one's (the official's differ from
ours by its VAE running in fp32, ours in bf16).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("official", "eager", "fast", "fast+fuse")


def child(variant: str, checkpoint: Path, official: str | None, prompt: str, batch: int, new_tokens: int,
          steps: int, guidance: float, seed: int, threads: int, profile: bool = False) -> dict:
    """One whole run in this process; phases timed from the process start. ``profile`` (ours only) adds the
    load's top functions (cProfile) and generation's top operators (torch.profiler), by own time."""
    started = time.perf_counter()
    import torch
    torch.set_num_threads(threads)
    prompts = [prompt] * batch
    if variant == "official":
        sys.path.insert(0, official)
        os.environ["COLA_INFER_PER_SAMPLE_NOISE_SEED"] = str(seed)
        from tokenizers import Tokenizer
        from cola_dlm import ColaDiTModel, ColaTextVAEModel, generate_task_repaint_inference
        imported = time.perf_counter()
        dit = ColaDiTModel.from_pretrained(str(checkpoint / "cola_dlm" / "cola_dit"), dtype=torch.bfloat16).eval()
        vae = ColaTextVAEModel.from_pretrained(str(checkpoint / "cola_dlm" / "cola_vae"), dtype=torch.float32).eval()
        tokenizer = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
        loaded = time.perf_counter()
        out = generate_task_repaint_inference(
            dit=dit, vae=vae, tokenizer=tokenizer, prompts=[{"question": p, "id": i} for i, p in enumerate(prompts)],
            device=torch.device("cpu"), max_new_tokens=new_tokens, timestep_num=steps, guidance_scale=guidance,
            pad_token_id=tokenizer.get_vocab_size() - 1)
        texts = [r["generate"] for r in out]
    else:
        sys.path.insert(0, str(ROOT))
        from cola_core import load_pretrained
        from cola_core.generate import BlockwiseSampler, GenerationConfig
        imported = time.perf_counter()
        with profiled(profile, "load") as load_profile:
            model = load_pretrained(checkpoint, dtype="bfloat16")
        loaded = time.perf_counter()
        config = GenerationConfig(steps=steps, guidance=guidance, max_new_tokens=new_tokens, seed=seed,
                                  stop_at_eos=False)
        sampler = BlockwiseSampler(model, prompts, config, fast=variant != "eager")
        sampler.prior_options = {"fuse": True} if variant == "fast+fuse" else {}
        with profiled(profile, "generate") as generate_profile:
            for _ in sampler.events():
                pass
        texts = [g.text for g in sampler.result()]
    done = time.perf_counter()
    out = {"import_s": imported - started, "load_s": loaded - imported, "generate_s": done - loaded, "texts": texts}
    if profile:
        out["profile"] = {"load": load_profile, "generate": generate_profile}
    return out


@contextlib.contextmanager
def profiled(on: bool, phase: str):
    """Yield a list that gets (name, seconds of own time) of the phase's top 10 functions or operators."""
    top: list = []
    if not on:
        yield top
        return
    if phase == "load":
        import cProfile
        import pstats
        profiler = cProfile.Profile()
        profiler.enable()
        yield top
        profiler.disable()
        stats = pstats.Stats(profiler).stats
        rows = sorted(((f"{Path(k[0]).name}:{k[2]}", v[2]) for k, v in stats.items()), key=lambda r: -r[1])
    else:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            yield top
        rows = sorted(((e.key, e.self_cpu_time_total / 1e6) for e in prof.key_averages()), key=lambda r: -r[1])
    top.extend([name, round(seconds, 3)] for name, seconds in rows[:10])


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def paired_speedups(result: dict) -> None:
    """Per variant, the official's whole-process time over its own in the same round: median and spread
    (rounds pair runs made under the same load, which the medians of each variant alone do not)."""
    official = result["variants"]["official"]["wall_s"]["runs"]
    for record in result["variants"].values():
        ratios = [o / w for o, w in zip(official, record["wall_s"]["runs"])]
        record["speedup_vs_official"] = statistics.median(official) / record["wall_s"]["median"]
        record["paired_speedup_vs_official"] = spread(ratios)


def print_table(result: dict) -> None:
    """The markdown table of the README: medians, spreads, and the paired speed-ups."""
    print("| variant | whole process: median (min-max) | load | generate | x official: medians / paired (min-max) |")
    print("|---|---|---|---|---|")
    for v, r in result["variants"].items():
        wall, x = r["wall_s"], "-"
        if "paired_speedup_vs_official" in r:
            paired = r["paired_speedup_vs_official"]
            x = f"{r['speedup_vs_official']:.2f}x / {paired['median']:.2f}x ({paired['min']:.2f}-{paired['max']:.2f})"
        print(f"| {v} | {wall['median']:.1f} s ({wall['min']:.1f}-{wall['max']:.1f}) | {r['load_s']['median']:.1f} s "
              f"| {r['generate_s']['median']:.1f} s | {x} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="a release-layout checkpoint (default: random bf16 weights)")
    parser.add_argument("--workdir", type=Path, default=Path("artifacts/release-random-bf16"),
                        help="where the random checkpoint is written once (and reused)")
    parser.add_argument("--official", help="checkout of the official Cola-DLM repository (leave out to skip it)")
    parser.add_argument("--official-python", default=sys.executable, help="a Python with the official code's deps")
    parser.add_argument("--variants", default=None, help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--guidance", type=float, default=7.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt", default="The quick brown fox jumps over the lazy dog")
    parser.add_argument("--profile", action="store_true", help="add one profiled run of the fast variant")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    parser.add_argument("--_profile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    checkpoint = args.checkpoint or args.workdir
    knobs = dict(prompt=args.prompt, batch=args.batch, new_tokens=args.new_tokens, steps=args.steps,
                 guidance=args.guidance, seed=args.seed, threads=args.threads)
    if args._child:
        print(json.dumps(child(args._child, checkpoint, args.official, profile=args._profile, **knobs)))
        return 0
    variants = args.variants.split(",") if args.variants else [v for v in VARIANTS if v != "official" or args.official]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or ("official" in variants and not args.official):
        print(f"unknown variant(s) {unknown}" if unknown else "--official PATH is needed for the official variant",
              file=sys.stderr)
        return 2
    if args.checkpoint is None and not (checkpoint / "tokenizer.json").exists():
        sys.path.insert(0, str(ROOT))
        import torch
        from generate_bench import write_random_checkpoint
        print(f"writing random release weights (bf16) to {checkpoint} ...", file=sys.stderr)
        write_random_checkpoint("release", checkpoint, torch.bfloat16)
    def one(variant: str, profile: bool = False) -> dict:
        python = args.official_python if variant == "official" else sys.executable
        cmd = [python, __file__, "--_child", variant, "--checkpoint", str(checkpoint), "--threads",
               str(args.threads), "--batch", str(args.batch), "--new-tokens", str(args.new_tokens), "--steps",
               str(args.steps), "--guidance", str(args.guidance), "--seed", str(args.seed), "--prompt", args.prompt]
        cmd += ["--official", args.official] if args.official else []
        cmd += ["--_profile"] if profile else []
        start = time.perf_counter()
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT,
                             env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        return {"wall_s": time.perf_counter() - start, **json.loads(out.stdout.strip().splitlines()[-1])}

    load_before = os.getloadavg()[0]
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for round_ in range(args.rounds):
        for variant in variants:
            record = one(variant)
            runs[variant].append(record)
            print(f"round {round_ + 1} {variant:<10} {record['wall_s']:6.1f} s (load {record['load_s']:.1f} s, "
                  f"generate {record['generate_s']:.1f} s)", file=sys.stderr)
    reference = runs[variants[0]][0]["texts"]
    result = {"workload": {**knobs, "checkpoint": "random bf16 release weights" if args.checkpoint is None
                           else str(args.checkpoint)},
              "torch_threads": args.threads, "rounds": args.rounds, "order": "variants alternate within each round",
              "variants": {v: {key: spread([r[key] for r in rs])
                               for key in ("wall_s", "import_s", "load_s", "generate_s")}
                           | {"same_text_as_" + variants[0]: all(r["texts"] == reference for r in rs),
                              "texts": rs[0]["texts"]}
                           for v, rs in runs.items()}}
    if args.profile:
        result["profile_fast"] = one("fast", profile=True)["profile"]
    result["load_average_before_after"] = [load_before, os.getloadavg()[0]]
    if "official" in runs:
        paired_speedups(result)
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

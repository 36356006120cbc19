"""Workbench benchmark: trajectory-capture overhead vs plain generation; encode/decode throughput.

    python benchmarks/trajectory_bench.py                       # pocket checkpoint, else random 'small'
    python benchmarks/trajectory_bench.py --preset tiny
    python benchmarks/trajectory_bench.py --checkpoint PATH --device cuda --json out.json

Target: capturing a full trajectory (preview decoding off) costs <= 10 % over plain
``cola_core.generate.generate``. Timings are medians of interleaved repeats.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from tokenizers import Tokenizer, models, pre_tokenizers

from cola_core import ColaModel, DiTConfig, VAEConfig
from cola_core.dit import ColaDiT
from cola_core.generate import generate
from cola_core.pocket import POCKET_DIR
from cola_core.tokenizer import ColaTokenizer
from cola_core.vae import ColaTextVAE
from generate_bench import PRESETS
from workbench import Workbench

WORDS = ("a kind of tree that grows near water someone who migrates the act of running quickly across a field "
         "small bird sings large vehicle carries goods on roads piece of furniture people sit at table").split()


def random_model(preset: str, device: str) -> ColaModel:
    """Random-init model of a size preset, in memory, with a whitespace word-level tokenizer."""
    vae_kw, dit_kw = PRESETS[preset]
    vae_cfg, dit_cfg = VAEConfig(**vae_kw), DiTConfig(**dit_kw)
    torch.manual_seed(0)
    vocab = {f"<t{i}>": i for i in range(vae_cfg.vocab_size - 1)}
    vocab["<|pad|>"] = vae_cfg.vocab_size - 1
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<t0>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return ColaModel(vae=ColaTextVAE(vae_cfg).eval().to(device), dit=ColaDiT(dit_cfg).eval().to(device),
                     tokenizer=ColaTokenizer(backend), vae_config=vae_cfg, dit_config=dit_cfg,
                     device=torch.device(device), dtype=torch.float32, source=f"random-{preset}",
                     fingerprint=f"random-{preset}")


def timed(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def median_times(cases: dict[str, Callable[[], object]], repeats: int, sync: Callable[[], None]) -> dict[str, float]:
    """Run every case once to warm up, then ``repeats`` interleaved rounds; median seconds per case."""
    for fn in cases.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            times[name].append(timed(fn, sync))
    return {name: statistics.median(ts) for name, ts in times.items()}


def texts_for(wb: Workbench, count: int, words: int, synthetic: bool) -> list[str]:
    rng = random.Random(0)
    vocab = [f"<t{i}>" for i in range(1, 200)] if synthetic else WORDS
    return [" ".join(rng.choice(vocab) for _ in range(words)) for _ in range(count)]


def measure(wb: Workbench, args: argparse.Namespace, synthetic: bool) -> dict:
    device = wb.model.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    chunk = wb.block_size * wb.patch_size
    prompts = texts_for(wb, args.batch, 6, synthetic)
    knobs = dict(steps=args.steps, max_new_tokens=args.blocks * chunk, seed=0, stop_at_eos=False)
    gen = median_times({
        "plain generate (cola_core)": lambda: generate(wb.model, prompts, **knobs),
        "wb.generate (session, no capture)": lambda: wb.generate(prompts, **knobs),
        "wb.trajectory (capture, no preview)": lambda: wb.trajectory(prompts, **knobs),
        "wb.trajectory (capture + preview)": lambda: wb.trajectory(prompts, preview=True, **knobs),
    }, args.repeats, sync)
    plain = gen["plain generate (cola_core)"]
    texts = texts_for(wb, args.texts, args.words, synthetic)
    tokens = sum(len(ids) for ids in wb.tokenizer.encode_batch(texts))
    latents = wb.encode(texts)
    slots = sum(z.shape[0] * z.shape[1] * wb.patch_size for z in latents.z)
    codec = median_times({"encode": lambda: wb.encode(texts), "decode": lambda: wb.decode(latents)},
                         args.repeats, sync)
    return {
        "device": str(device), "dtype": str(wb.model.dtype).replace("torch.", ""), "threads": torch.get_num_threads(),
        "batch": args.batch, "blocks": args.blocks, "steps": args.steps, "repeats": args.repeats,
        "generation_s": gen, "overhead_vs_plain": {k: v / plain - 1 for k, v in gen.items()},
        "encode": {"texts": len(texts), "tokens": tokens, "seconds": codec["encode"],
                   "texts_per_s": len(texts) / codec["encode"], "tokens_per_s": tokens / codec["encode"]},
        "decode": {"texts": len(texts), "token_slots": slots, "seconds": codec["decode"],
                   "texts_per_s": len(texts) / codec["decode"], "tokens_per_s": slots / codec["decode"]},
    }


def print_table(r: dict) -> None:
    print(f"{r['label']}: {r['device']} / {r['dtype']}, {r['threads']} threads; generation of {r['batch']} prompts x "
          f"{r['blocks']} blocks x {r['steps']} steps (median of {r['repeats']})")
    width = max(len(k) for k in r["generation_s"])
    for name, seconds in r["generation_s"].items():
        print(f"  {name:<{width}}  {seconds * 1000:9.1f} ms  {r['overhead_vs_plain'][name]:+7.1%}")
    target = r["overhead_vs_plain"]["wb.trajectory (capture, no preview)"]
    print(f"  capture overhead {target:+.1%} (target <= +10%): {'ok' if target <= 0.10 else 'over target'}")
    for kind in ("encode", "decode"):
        m = r[kind]
        print(f"  {kind}: {m['texts_per_s']:8.1f} texts/s  {m['tokens_per_s']:10.0f} tokens/s  ({m['texts']} texts)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="checkpoint folder (default: the pocket checkpoint when installed)")
    src.add_argument("--preset", choices=[p for p in PRESETS if p != "release"], help="random-init size preset")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"])
    parser.add_argument("--batch", type=int, default=4, help="prompts per generation call")
    parser.add_argument("--blocks", type=int, default=8, help="blocks generated per prompt")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--texts", type=int, default=64, help="texts for encode/decode throughput")
    parser.add_argument("--words", type=int, default=24, help="words per throughput text")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", default=None, help="output JSON (default benchmarks/results/trajectory_<label>.json)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.checkpoint is None and args.preset is None and (POCKET_DIR / "cola_dlm").is_dir():
        args.checkpoint = str(POCKET_DIR)
    if args.checkpoint is None:
        label = f"random-{args.preset or 'small'}"
        wb = Workbench(random_model(args.preset or "small", args.device))
    else:
        label = Path(args.checkpoint).name
        wb = Workbench.load(args.checkpoint, device=args.device, dtype=args.dtype)
    result = {"label": label, **measure(wb, args, synthetic=args.checkpoint is None)}
    print_table(result)
    out = Path(args.json) if args.json else Path(__file__).parent / "results" / f"trajectory_{label}_{args.device}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Generation benchmark: load time, peak RSS, tokens/s and per-block latency (blocks 1, 8, 32, 64).

    python benchmarks/generate_bench.py --preset small
    python benchmarks/generate_bench.py --preset release --dtype bfloat16 --blocks 0   # load only
    python benchmarks/generate_bench.py --checkpoint PATH --device cuda --json out.json

Targets: latency at block 64 within 1.3x of block 8 (the KV cache appends in place); the
``release`` preset loads in bf16 with peak RSS <= 1.3x the weight bytes. Random-init presets are
written to a temporary safetensors checkpoint first, then loaded in a fresh process so the RSS
measurement sees the load alone.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from cola_core.config import DiTConfig, VAEConfig
from cola_core.dit import ColaDiT, rope_frequencies
from cola_core.vae import ColaTextVAE

PRESETS: dict[str, tuple[dict, dict]] = {
    "tiny": (dict(vocab_size=512, encoder_num_blocks=2, decoder_num_blocks=2, dim=64, ffn_dim=128, latent_dim=8,
                  num_heads=4),
             dict(txt_in_channels=8, txt_out_channels=8, txt_dim=64, emb_dim=64, heads=4, head_dim=16, num_layers=2,
                  rope_dim=12)),
    "small": (dict(vocab_size=4096, encoder_num_blocks=2, decoder_num_blocks=2, dim=256, ffn_dim=1024, latent_dim=16,
                   num_heads=4),
              dict(txt_in_channels=16, txt_out_channels=16, txt_dim=256, emb_dim=256, heads=4, head_dim=64,
                   num_layers=4, rope_dim=32)),
    "release": ({}, {}),
}
REPORT_BLOCKS = (1, 8, 32, 64)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def write_random_checkpoint(preset: str, root: Path, dtype: torch.dtype, shard_bytes: int = 1 << 30) -> None:
    """Random weights in the release layout, written shard by shard (never the whole model in memory)."""
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models, pre_tokenizers

    vae_kw, dit_kw = PRESETS[preset]
    vae_cfg, dit_cfg = VAEConfig(**vae_kw), DiTConfig(**dit_kw)
    for cfg, cls, name in ((dit_cfg, ColaDiT, "cola_dit"), (vae_cfg, ColaTextVAE, "cola_vae")):
        folder = root / "cola_dlm" / name
        folder.mkdir(parents=True, exist_ok=True)
        cfg.save(folder / "config.json")
        with torch.device("meta"):
            shapes = {k: v.shape for k, v in cls(cfg).state_dict().items()}
        shards, current, size = [], {}, 0
        gen = torch.Generator().manual_seed(0)
        for key, shape in shapes.items():
            if key.endswith("rope.rope.freqs"):   # a fixed table, not a weight
                tensor = rope_frequencies(dit_cfg.rope_dim).to(dtype)
            else:
                tensor = (torch.randn(shape, generator=gen) * 0.02).to(dtype)
            if current and size + tensor.numel() * tensor.element_size() > shard_bytes:
                shards.append(current)
                current, size = {}, 0
            current[key] = tensor
            size += tensor.numel() * tensor.element_size()
            if size > shard_bytes:
                shards.append(current)
                current, size = {}, 0
        if current:
            shards.append(current)
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(folder / fname), metadata={"format": "pt"})
            weight_map.update({k: fname for k in shard})
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        del shards, current
    vocab = {f"<t{i}>": i for i in range(vae_cfg.vocab_size - 1)}
    vocab["<|pad|>"] = vae_cfg.vocab_size - 1
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<t0>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()   # "<t5> <t17>" is two tokens
    tokenizer.save(str(root / "tokenizer.json"))


def measure(checkpoint: str, device: str, dtype: str | None, blocks: int, steps: int, threads: int) -> dict:
    """Load + generate in this process; returns the measurements."""
    from cola_core import load_pretrained
    from cola_core.generate import BlockwiseSampler, GenerationConfig

    torch.set_num_threads(threads)
    baseline = peak_rss_bytes()
    start = time.perf_counter()
    model = load_pretrained(checkpoint, device=device, dtype=dtype)
    load_s = time.perf_counter() - start
    weight_bytes = sum(t.numel() * t.element_size() for m in (model.vae, model.dit) for t in m.state_dict().values())
    result = {"checkpoint": checkpoint, "device": str(model.device), "dtype": str(model.dtype).replace("torch.", ""),
              "load_s": load_s, "weight_bytes": weight_bytes, "peak_rss_after_load": peak_rss_bytes(),
              "rss_before_load": baseline, "params": sum(p.numel() for m in (model.vae, model.dit)
                                                           for p in m.parameters())}
    result["rss_ratio"] = result["peak_rss_after_load"] / weight_bytes
    if blocks > 0:
        tokens_per_block = model.block_size * model.patch_size
        config = GenerationConfig(steps=steps, guidance=7.0, max_new_tokens=blocks * tokens_per_block, seed=0,
                                  stop_at_eos=False)
        sampler = BlockwiseSampler(model, ["The quick brown fox jumps over the lazy"], config)
        latencies, block_start = [], None
        sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
        total_start = time.perf_counter()
        for event, _state in sampler.events():
            if event == "block_start":
                sync()
                block_start = time.perf_counter()
            elif event == "decoded":
                sync()
                latencies.append(time.perf_counter() - block_start)
        total = time.perf_counter() - total_start
        result.update(steps=steps, blocks=len(latencies), tokens_per_s=len(latencies) * tokens_per_block / total,
                      block_latency_s={str(b): _window_mean(latencies, b) for b in REPORT_BLOCKS if b <= len(latencies)})
        if "8" in result["block_latency_s"] and "64" in result["block_latency_s"]:
            result["latency_ratio_64_vs_8"] = result["block_latency_s"]["64"] / result["block_latency_s"]["8"]
    return result


def _window_mean(latencies: list[float], block: int, window: int = 3) -> float:
    """Mean latency around 1-based block index (a small window smooths scheduler noise)."""
    lo = max(0, block - 1 - window // 2)
    values = latencies[lo:lo + window] if block > 1 else latencies[:1]
    return sum(values) / len(values)


def print_table(r: dict) -> None:
    gib = 1 << 30
    rows = [("device / dtype", f"{r['device']} / {r['dtype']}"), ("parameters", f"{r['params'] / 1e6:.1f} M"),
            ("weight bytes", f"{r['weight_bytes'] / gib:.3f} GiB"), ("load time", f"{r['load_s']:.2f} s"),
            ("peak RSS after load", f"{r['peak_rss_after_load'] / gib:.3f} GiB ({r['rss_ratio']:.2f}x weights)")]
    if "tokens_per_s" in r:
        rows.append(("tokens/s", f"{r['tokens_per_s']:.1f} ({r['blocks']} blocks x {r['steps']} steps, CFG)"))
        rows += [(f"block {b} latency", f"{v * 1000:.1f} ms") for b, v in r["block_latency_s"].items()]
        if "latency_ratio_64_vs_8" in r:
            rows.append(("block 64 / block 8", f"{r['latency_ratio_64_vs_8']:.2f}x (target <= 1.3x)"))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="checkpoint folder to benchmark")
    src.add_argument("--preset", choices=sorted(PRESETS), default="small", help="random-init size preset")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"])
    parser.add_argument("--blocks", type=int, default=64, help="blocks to generate (0 = load only)")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", default=None, help="write the measurements here")
    parser.add_argument("--_child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        print(json.dumps(measure(args.checkpoint, args.device, args.dtype, args.blocks, args.steps, args.threads)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint
        if checkpoint is None:
            checkpoint = tmp
            store = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
            print(f"writing random '{args.preset}' checkpoint ({store}) ...", file=sys.stderr)
            write_random_checkpoint(args.preset, Path(tmp), store)
        cmd = [sys.executable, __file__, "--_child", "--checkpoint", checkpoint, "--device", args.device,
               "--blocks", str(args.blocks), "--steps", str(args.steps), "--threads", str(args.threads)]
        if args.dtype:
            cmd += ["--dtype", args.dtype]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ})
        result = json.loads(out.stdout.strip().splitlines()[-1])
    result["preset"] = None if args.checkpoint else args.preset
    print_table(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

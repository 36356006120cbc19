"""Peak RSS of loading a checkpoint: cola_core's reader vs the ``safetensors`` library's ``safe_open``.

    python benchmarks/loader_memory_bench.py --preset release --dtype bfloat16 --json out.json
    python benchmarks/loader_memory_bench.py --preset release --dtype bfloat16 --single-file --json out.json

Each reader runs in a fresh process and reports its peak RSS over the loaded weight bytes (target
<= 1.3). ``safe_open-copy`` copies every tensor out of the library's memory map (weights the process
owns); ``safe_open-mmap`` keeps the library's tensors, which stay backed by the file, and touches
every weight once so their pages count. ``--single-file`` writes each model as one file (the
default shards at 1 GiB, as ``generate_bench.py`` does).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from generate_bench import PRESETS, peak_rss_bytes, write_random_checkpoint

READERS = ("cola_core", "safe_open-copy", "safe_open-mmap")


def load_with_safe_open(checkpoint: str, dtype: torch.dtype, copy: bool) -> list[torch.nn.Module]:
    """Both models read with ``safe_open``/``get_tensor``, one file at a time."""
    from safetensors import safe_open

    from cola_core.checkpoint import CheckpointPaths, weight_files
    from cola_core.config import DiTConfig, VAEConfig
    from cola_core.dit import ColaDiT
    from cola_core.vae import ColaTextVAE

    paths = CheckpointPaths.resolve(checkpoint)
    modules = []
    for folder, cls, config_cls in ((paths.dit, ColaDiT, DiTConfig), (paths.vae, ColaTextVAE, VAEConfig)):
        with torch.device("meta"):
            module = cls(config_cls.from_json(folder / "config.json"))
        state = {}
        for path in weight_files(folder):
            with safe_open(str(path), "pt") as handle:
                for name in handle.keys():
                    tensor = handle.get_tensor(name)
                    state[name] = tensor.to(dtype) if tensor.dtype != dtype else (tensor.clone() if copy else tensor)
        module.load_state_dict(state, strict=False, assign=True)
        modules.append(module)
    return modules


def measure(checkpoint: str, reader: str, dtype: str) -> dict:
    """Load with one reader in this process; peak RSS over weight bytes (after touching every weight)."""
    torch.set_num_threads(1)
    if reader == "cola_core":
        from cola_core import load_pretrained
        model = load_pretrained(checkpoint, dtype=dtype)
        modules = [model.dit, model.vae]
    else:
        modules = load_with_safe_open(checkpoint, getattr(torch, dtype), copy=reader == "safe_open-copy")
    tensors = [t for m in modules for t in m.state_dict().values()]
    weight_bytes = sum(t.numel() * t.element_size() for t in tensors)
    for tensor in tensors:   # fault in every page, so memory-mapped weights count as they would in use
        tensor.view(-1)[:: max(1, 4096 // tensor.element_size())].float().sum()
    return {"reader": reader, "weight_bytes": weight_bytes, "peak_rss": peak_rss_bytes(),
            "rss_ratio": peak_rss_bytes() / weight_bytes}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="checkpoint folder to load")
    src.add_argument("--preset", choices=sorted(PRESETS), default="release", help="random-init size preset")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--single-file", action="store_true", help="write each model as one safetensors file")
    parser.add_argument("--readers", nargs="+", choices=READERS, default=list(READERS))
    parser.add_argument("--json", default=None, help="write the measurements here")
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        print(json.dumps(measure(args.checkpoint, args._child, args.dtype)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint
        if checkpoint is None:
            checkpoint = tmp
            print(f"writing random '{args.preset}' checkpoint ({args.dtype}) ...", file=sys.stderr)
            write_random_checkpoint(args.preset, Path(tmp), getattr(torch, args.dtype),
                                    shard_bytes=1 << 50 if args.single_file else 1 << 30)
        results = []
        for reader in args.readers:
            cmd = [sys.executable, __file__, "--_child", reader, "--checkpoint", checkpoint, "--dtype", args.dtype]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"{reader:<16} peak RSS {results[-1]['peak_rss'] / (1 << 30):.3f} GiB = "
                  f"{results[-1]['rss_ratio']:.3f} x weight bytes (target <= 1.3)")
    summary = {"preset": None if args.checkpoint else args.preset, "dtype": args.dtype,
               "layout": "one file per model" if args.single_file else "1 GiB shards", "results": results}
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The app's Inside tab on a checkpoint, in process: what one Run costs, what it keeps, what a selector move costs.

    python benchmarks/inside_tab_bench.py                                   # the pocket checkpoint
    python benchmarks/inside_tab_bench.py --checkpoint PATH --json out.json

Run = ``inside.cache_run`` at GenerationConfig() defaults (16 steps, guidance 7, 32 new tokens): one
generation caching every layer's attention pattern and what the x0-lens reads, then the lens of every
finished block. Reported: its wall time, the upper bound the tab checks before running, what the
stored run holds (patterns and lens x0), and the peak of the cache during the run (every cached
tensor). Selector move = ``inside.view`` (attention + lens figures from the stored run, no model
call), median over positions. Sweep = ``inside.patch`` over every layer of the first ``--blocks``
blocks: seconds per patched run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the pocket checkpoint)")
    parser.add_argument("--prompt", default="a small animal that")
    parser.add_argument("--views", type=int, default=20, help="selector moves timed")
    parser.add_argument("--blocks", type=int, default=2, help="blocks patched by the timed sweep")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from apps.gradio_app import AppContext, inside
    from apps.gradio_app.inputs import DEFAULTS

    ctx = AppContext.create(args.checkpoint, umap=False, cache_dir=tempfile.mkdtemp())
    cfg = ctx.model.dit_config
    knobs = (DEFAULTS.steps, DEFAULTS.guidance, DEFAULTS.max_new_tokens, 0)
    checked, planned = inside.cached_bytes(ctx, args.prompt, dict(zip(("steps", "guidance", "max_new_tokens", "seed"),
                                                                      knobs)))
    started = time.perf_counter()
    out = inside.cache_run(ctx, args.prompt, *knobs, 0, 0, 0, 0, "cond", "all blocks", "p_final")
    run_s = time.perf_counter() - started
    stored = ctx.store.get(out["run"], "model-internals").payload
    pattern_bytes = sum(t.numel() * t.element_size() for t in stored.patterns.values())
    lens_bytes = sum(t.numel() * t.element_size() for t in stored.lens.x0.values())
    moves = []
    for i in range(args.views):
        picks = (i % stored.blocks, i % stored.steps, i % cfg.num_layers, i % cfg.heads, ("cond", "uncond")[i % 2],
                 inside.SCOPES[i % 2], inside.LENS_METRICS[i % 3])
        started = time.perf_counter()
        inside.view(ctx, out["run"], *picks)
        moves.append(time.perf_counter() - started)
    blocks = ", ".join(str(b) for b in range(min(args.blocks, planned)))
    started = time.perf_counter()
    swept = inside.patch(ctx, "the cat sat on", "the dog sat on", *knobs, "resid_post", "both", "", blocks, False,
                         "target_logprob")
    sweep_s = time.perf_counter() - started
    cells = len(swept["patch_records"])
    result = {
        "checkpoint": str(ctx.model.source), "fingerprint": ctx.model.fingerprint, "prompt": args.prompt,
        "knobs": dict(zip(("steps", "guidance", "max_new_tokens", "seed"), knobs)), "threads": args.threads,
        "machine": {"cpu": platform.processor() or platform.machine(), "load_avg_1m": os.getloadavg()[0]},
        "run": {"seconds": round(run_s, 3), "blocks_planned": planned, "blocks_generated": stored.blocks,
                "checked_bound_mib": round(checked / 2**20, 2), "patterns_mib": round(pattern_bytes / 2**20, 2),
                "lens_x0_mib": round(lens_bytes / 2**20, 3), "patterns": len(stored.patterns),
                "lens_cells": len(stored.lens.records)},
        "selector_move_ms": {"median": round(1000 * statistics.median(moves), 1),
                             "max": round(1000 * max(moves), 1), "n": len(moves)},
        "sweep": {"cells": cells, "seconds": round(sweep_s, 2),
                  "seconds_per_cell_incl_baselines": round(sweep_s / (cells + 2), 3)},
    }
    ctx.close()
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""How far guidance pushes generated latents off the data, with and without CFG-rescale: the README's table.

    python benchmarks/guidance_norms.py                      # pocket checkpoint
    python benchmarks/guidance_norms.py --checkpoint PATH --label NAME

Runs ``guidance_sweep`` experiments (the workbench's own kind, so the numbers are the ones a run folder
records) over the prompts below, guidance 1-9 and seeds 0-3, once per CFG-rescale phi, and reports per
guidance the mean ratio of the completions' latent norm to the encoded data's norm (the off-manifold
monitor; flagged above 1.5), the share of completions with an off-manifold block, and the population
metrics of each prompt's completions across seeds. Writes ``benchmarks/results/guidance_norms_<label>.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from statistics import mean

import torch

from cola_core import load_pretrained
from cola_core.pocket import POCKET_DIR
from workbench.experiments import run

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a small bird that", "the act of", "a person who", "a tool used for", "a large body of", ""]
SPEC = {"kind": "guidance_sweep", "prompts": PROMPTS, "guidance": "1-9 (+2)", "steps": [16], "seed": "0-3",
        "max_new_tokens": 16, "semantic": "off"}
RESCALE = (0.0, 0.7)


def summary_rows(records: list[dict], population: list[dict], rescale: float) -> list[dict]:
    """One row per guidance: mean norm ratio, off-manifold share, pooled distinct-2 and self-BLEU."""
    rows = []
    for g in sorted({r["guidance"] for r in records}):
        recs = [r for r in records if r["guidance"] == g]
        pops = [p for p in population if p["guidance"] == g]
        rows.append({"rescale": rescale, "guidance": g, "norm_ratio": mean(r["norm_ratio"] for r in recs),
                     "off_manifold": mean(float(r["off_manifold"]) for r in recs),
                     "distinct_2_pooled": mean(p["distinct_2_pooled"] for p in pops),
                     "self_bleu": mean(p["self_bleu"] for p in pops)})
    return rows


def markdown_table(result: dict) -> str:
    """The README's table: one row per guidance, columns per rescale."""
    rows = result["rows"]
    lines = ["| guidance | " + " | ".join(f"norm ratio, off-manifold share, self-BLEU (φ = {phi:g})"
                                         for phi in RESCALE) + " |", "|---|" + "---|" * len(RESCALE)]
    for g in sorted({r["guidance"] for r in rows}):
        cells = {r["rescale"]: r for r in rows if r["guidance"] == g}
        lines.append(f"| {g:g} | " + " | ".join(f"{cells[phi]['norm_ratio']:.2f}, {cells[phi]['off_manifold']:.0%}, "
                                                f"{cells[phi]['self_bleu']:.2f}" for phi in RESCALE) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=str(POCKET_DIR))
    parser.add_argument("--label", default="pocket")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_pretrained(args.checkpoint)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for phi in RESCALE:
            result = run({**SPEC, "guidance_rescale": phi}, Path(tmp) / f"phi{phi}", model=model)
            rows += summary_rows(result.records, result.summary, phi)
    result = {"label": args.label, "checkpoint": model.fingerprint, "spec": SPEC, "rescale": list(RESCALE),
              "torch": torch.__version__, "rows": rows}
    print(markdown_table(result))
    out = ROOT / "benchmarks" / "results" / f"guidance_norms_{args.label}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Sampler solvers measured by the ODE inversion round trip (data -> noise -> data): the README's solver table.

    python benchmarks/solver_error.py                                   # tiny fixture and pocket checkpoint
    python benchmarks/solver_error.py --checkpoint PATH --label NAME --steps 6 12 24

For each solver and step count, ``workbench.invert`` integrates the encoded texts to noise and back;
``free`` is the relative error ||z' - z|| / ||z|| when each block is regenerated after the regenerated
blocks before it (errors carry from block to block through the conditioning), ``held`` the same with
the input's true prefix held (each block's own ODE error). Euler feeds the DiT the reference's
bf16-rounded inputs (its official numerics); Heun and midpoint feed fp32. Deterministic: a rerun gives
the same numbers on the same machine (tests/test_solver_numerics.py reruns one row of each table).
Writes ``benchmarks/results/solver_error_<label>.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from cola_core import load_pretrained
from cola_core.pocket import POCKET_DIR
from workbench import Workbench, invert

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["the cat sat on the mat and looked around", "a dog ran off into the woods at night"]
SOLVERS = ("euler", "heun", "midpoint")
STEPS = (6, 12, 24, 48)
GUIDANCE = (1.0, 3.0)   # invert's default (no guidance), and a guided flow whose errors carry across blocks
CHECKPOINTS = {"visible_a": ROOT / "tests" / "fixtures" / "visible_a", "pocket": POCKET_DIR}


def solver_rows(wb: Workbench, texts: list[str], steps: tuple[int, ...], solvers: tuple[str, ...] = SOLVERS,
                guidance: float = 1.0) -> list[dict]:
    """One row per (solver, steps): worst relative round-trip error over the texts, free-running and held."""
    lat = wb.encode(texts, pad_to="longest")
    rows = []
    for solver in solvers:
        for n in steps:
            inv = invert(wb, lat, steps=n, solver=solver, guidance=guidance)
            rows.append({"guidance": guidance, "solver": solver, "steps": n, "free": max(inv.relative_error),
                         "held": max(inv.relative_error_held)})
    return rows


def markdown_table(result: dict, guidance: float) -> str:
    """The README's table for one results file and guidance: free-running / true-prefix-held error per cell."""
    rows = [r for r in result["rows"] if r["guidance"] == guidance]
    steps = sorted({r["steps"] for r in rows})
    lines = ["| solver | " + " | ".join(f"{n} steps" for n in steps) + " |", "|---|" + "---|" * len(steps)]
    for solver in SOLVERS:
        cells = {r["steps"]: r for r in rows if r["solver"] == solver}
        lines.append(f"| {solver} | " + " | ".join(f"{cells[n]['free']:.1e} / {cells[n]['held']:.1e}" for n in steps)
                     + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="one checkpoint (default: the tiny fixture and the pocket)")
    parser.add_argument("--label", default=None, help="results label for --checkpoint")
    parser.add_argument("--steps", nargs="+", type=int, default=list(STEPS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    targets = {args.label or Path(args.checkpoint).name: Path(args.checkpoint)} if args.checkpoint else CHECKPOINTS
    for label, path in targets.items():
        wb = Workbench(load_pretrained(path))
        rows = [row for g in GUIDANCE for row in solver_rows(wb, TEXTS, tuple(args.steps), guidance=g)]
        result = {"label": label, "checkpoint": wb.fingerprint, "texts": TEXTS,
                  "blocks": wb.encode(TEXTS, pad_to="longest").n_blocks[0], "torch": torch.__version__, "rows": rows}
        for g in GUIDANCE:
            print(f"\n{label}, guidance {g:g}: relative round-trip error of invert, free-running / true prefix held "
                  f"(worst of {len(TEXTS)} texts, {result['blocks']} blocks)\n")
            print(markdown_table(result, g))
        out = ROOT / "benchmarks" / "results" / f"solver_error_{label}.json"
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

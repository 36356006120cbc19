"""Run the guidance-sweep spec (examples/specs/guidance_sweep.toml) and summarise it per guidance scale."""
import argparse
import tempfile
from collections import defaultdict
from pathlib import Path

from workbench.experiments import load_spec, run

HERE = Path(__file__).parent
parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the pocket checkpoint)")
parser.add_argument("--spec", default=str(HERE / "specs" / "guidance_sweep.toml"))
parser.add_argument("--out", default=None, help="run folder (default: a temporary folder); rerun to resume")
args = parser.parse_args()

spec = load_spec(args.spec)   # every problem in the spec is reported here, before any model loads
result = run(spec, args.out or tempfile.mkdtemp(prefix="cola-sweep-"), checkpoint=args.checkpoint)
by_guidance = defaultdict(list)
for rec in result.records:
    by_guidance[rec["guidance"]].append(rec)
for guidance, recs in sorted(by_guidance.items()):
    mean = lambda key: sum(r[key] for r in recs) / len(recs)   # noqa: E731
    print(f"guidance={guidance}: distinct-2 {mean('distinct_2'):.3f}, in-vocab {mean('in_vocab_rate'):.3f}, "
          f"latent norm {mean('latent_norm'):.3f}, |v_cond - v_uncond| {mean('velocity_gap_mean'):.4f}")
print(f"run folder: {result.path} ({len(result.records)} records; report.html inside)")

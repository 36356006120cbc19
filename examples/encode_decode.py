"""Encode texts to latents, decode them back, and show per-token confidence (``wb.roundtrip``)."""
import argparse
import tempfile
from pathlib import Path

from workbench import Latents, Workbench

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the pocket checkpoint)")
args = parser.parse_args()

wb = Workbench.load(args.checkpoint)
texts = ["a domestic animal that barks", "the act of running quickly across a field"]
rt = wb.roundtrip(texts)
for text, decoded, acc, z in zip(texts, rt.decoded.items, rt.token_accuracy, rt.latents.z):
    print(f"{text!r} -> latents {tuple(z.shape)} (blocks, block_size, C)")
    print(f"  decoded: {decoded.text!r}")
    print(f"  mean p(chosen) {decoded.mean_prob:.3f}, mean entropy {float(decoded.entropy_bits.mean()):.2f} bits")
print("roundtrip token accuracy:", ", ".join(f"{a:.1%}" for a in rt.token_accuracy))

with tempfile.TemporaryDirectory() as tmp:   # Latents round-trip through safetensors + JSON
    rt.latents.save(Path(tmp) / "latents")
    back = Latents.load(Path(tmp) / "latents")
    same = back.texts == texts and all((a == b).all() for a, b in zip(back.z, rt.latents.z))
    print("saved and reloaded latents:", same)

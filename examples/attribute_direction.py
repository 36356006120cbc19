"""An attribute direction (mean latent difference between two text sets) applied with a strength."""
import argparse

from workbench import Workbench, apply_direction, attribute_direction

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--checkpoint", default=None, help="checkpoint folder (default: the pocket checkpoint)")
args = parser.parse_args()

wb = Workbench.load(args.checkpoint)
plural = ["dogs bark at strangers", "the birds fly south", "children play games", "cars need fuel"]
singular = ["a dog barks at a stranger", "the bird flies south", "a child plays a game", "a car needs fuel"]
direction = attribute_direction(wb, plural, singular)
print(f"direction norm {float(direction.norm()):.3f} over {wb.channels} channels")
source = wb.encode("the cat sleeps on the mat")
for strength in (-2.0, 0.0, 1.0, 2.0):
    print(f"strength={strength:+.1f}: {wb.decode(apply_direction(source, direction, strength)).texts[0]!r}")

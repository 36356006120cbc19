"""Interop: nnsight wraps the DiT as the plain nn.Module it is, and reads and edits a layer during a sampler step.

Heavy: importing nnsight (and the transformers it pulls in) takes seconds. ``pip install nnsight``
(the ``test`` extra); skipped when it is missing.
"""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.heavy

PROMPT = ["the cat sat on"]
KNOBS = dict(seed=0, steps=3, max_new_tokens=8, stop_at_eos=False)
STEP = "block.1.step.2"


def dit_call_index(run, scope: str) -> int:
    """Which DiT forward of the run (prefill, steps, commits in order) has this scope: cond and uncond share one."""
    calls = [p.rsplit(".dit", 1)[0] for p in run.sections if p.endswith((".dit", ".dit.cond"))]
    return calls.index(scope)


def test_nnsight_reads_and_edits_what_our_hook_point_sees(fixture_dir):
    nnsight = pytest.importorskip("nnsight")
    from cola_core import load_pretrained
    from workbench import Workbench
    wb = Workbench(load_pretrained(fixture_dir))        # its own model: nnsight instruments the modules it wraps
    ours_read = [f"{STEP}.dit.{g}.layer.0.resid_post" for g in ("cond", "uncond")]
    _, ours = wb.run_with_cache(PROMPT, names_filter=[*ours_read, "block.1.z_final"], **KNOBS)
    _, ours_edited = wb.run_with_cache(PROMPT, names_filter="block.1.z_final",
                                       patches={f"{STEP}.dit.*.layer.0.resid_post": lambda x: 0.5 * x}, **KNOBS)
    index = dit_call_index(wb.run_names(PROMPT, **KNOBS), STEP)
    dit = nnsight.NNsight(wb.model.dit)
    outcome = {}

    def generate(_):
        outcome["cache"] = wb.run_with_cache(PROMPT, names_filter="block.1.z_final", **KNOBS)[1]

    with dit.trace(0, fn=generate) as tracer:
        for _ in tracer.iter[index]:
            seen = dit.blocks[0].output.save()
    assert torch.equal(seen[:1], ours[ours_read[0]]) and torch.equal(seen[1:], ours[ours_read[1]])

    with dit.trace(0, fn=generate) as tracer:
        for _ in tracer.iter[index]:
            dit.blocks[0].output = 0.5 * dit.blocks[0].output
    assert torch.equal(outcome["cache"]["block.1.z_final"], ours_edited["block.1.z_final"])
    assert not torch.equal(ours_edited["block.1.z_final"], ours["block.1.z_final"])

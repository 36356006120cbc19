"""Experiments: TOML specs (interpolation, guidance_sweep, recon_vs_prior, trajectory) run into run folders.

``run(spec_or_path, out=None)`` writes spec.toml, environment.json, results.jsonl,
tensors.safetensors and report.html; reruns resume; ``torchrun`` shards items over processes.
"""
from .runner import RunResult, merge, run
from .spec import KINDS, SCHEMAS, Spec, load_spec, parse_spec
from .values import SpecError, parse_range, parse_values

__all__ = ["run", "RunResult", "merge", "Spec", "load_spec", "parse_spec", "KINDS", "SCHEMAS", "SpecError",
           "parse_range", "parse_values"]

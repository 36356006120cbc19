"""workbench: the research layer over cola_core — encode/decode, latent algebra, hooks, diagnostics."""
from cola_core.tokenizer import display_text, display_tokens

from .errors import WorkbenchError
from .flow import BlockFlow, Inversion, Regeneration, invert, regenerate_from
from .hooks import (HOOK_POINTS, Callback, HookHandle, clamp_latents, guidance_cutoff, guidance_ramp,
                    guidance_schedule, steer)
from .latents import (Latents, analogy, apply_direction, attribute_direction, block_noise, combine, interpolate,
                      mean_latent, noise_to, replace_blocks, slerp, splice)
from .monitor import OFF_MANIFOLD_RATIO, data_norm, norm_records
from .sampler_session import SamplerSession
from .inside.names import names_predicate
from .session import Decoded, DecodedText, Roundtrip, Workbench
from .trajectory import StepState, Trajectory

__all__ = [
    "Workbench", "Latents", "Decoded", "DecodedText", "Roundtrip", "WorkbenchError",
    "interpolate", "slerp", "combine", "analogy", "attribute_direction", "apply_direction", "mean_latent",
    "splice", "replace_blocks", "noise_to", "block_noise",
    "regenerate_from", "invert", "Regeneration", "Inversion", "BlockFlow",
    "SamplerSession", "StepState", "Trajectory", "HOOK_POINTS", "Callback", "HookHandle",
    "guidance_schedule", "guidance_ramp", "guidance_cutoff", "clamp_latents", "steer", "names_predicate",
    "display_text", "display_tokens", "data_norm", "norm_records", "OFF_MANIFOLD_RATIO",
]

# Diagnostics and experiments are functions over a ColaModel (wb.model); see their modules.
from .diagnostics import Diagnosis, diagnose  # noqa: E402
from .experiments import run  # noqa: E402

__all__ += ["diagnose", "Diagnosis", "run"]

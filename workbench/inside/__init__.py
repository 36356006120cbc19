"""Look inside the model: hook points of the DiT and the VAE, caches, activation patching, lenses, influence.

The points and their names: :mod:`cola_core.hook_points` and :mod:`workbench.inside.names`; caching and
patching run through ``Workbench.run_with_cache``, ``run_with_patches``, ``sampler(names_filter=...)`` and
``encode_with_cache`` / ``decode_with_cache`` / ``roundtrip_with_cache``.
"""
from .cache import ActivationCache
from .figures import attention_figure
from .influence import Influence, cross_block_influence
from .lens import LogitLens, X0Lens, logit_lens, x0_lens, x0_lens_names
from .names import RunNames, glob_match, names_predicate, point_table
from .patching import (DEFAULT_METRICS, Outcome, PatchingSweep, ablate, ablation_patches, final_latent_distance,
                       patching_sweep, target_logprob)

__all__ = ["ActivationCache", "RunNames", "glob_match", "names_predicate", "point_table",
           "patching_sweep", "PatchingSweep", "Outcome", "DEFAULT_METRICS", "target_logprob", "final_latent_distance",
           "ablate", "ablation_patches", "x0_lens", "x0_lens_names", "X0Lens", "logit_lens", "LogitLens",
           "cross_block_influence", "Influence", "attention_figure"]

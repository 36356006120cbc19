"""Look inside the model: hook points of the DiT and the VAE, caches, activation patching, lenses, influence."""
from .cache import ActivationCache
from .names import RunNames, glob_match, names_predicate, point_table

__all__ = ["ActivationCache", "RunNames", "glob_match", "names_predicate", "point_table"]

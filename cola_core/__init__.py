"""cola_core: a faithful, hookable PyTorch implementation of Cola DLM (Text VAE + block-causal DiT)."""
from .checkpoint import ColaModel, load_pretrained, save_pretrained
from .config import DiTConfig, VAEConfig
from .errors import CheckpointError, ColaError, ConfigError, GenerationError
from . import pocket   # so that `cola_core.pocket.default_checkpoint()` works after `import cola_core`

__all__ = ["ColaModel", "load_pretrained", "save_pretrained", "DiTConfig", "VAEConfig", "CheckpointError",
           "ColaError", "ConfigError", "GenerationError", "pocket"]

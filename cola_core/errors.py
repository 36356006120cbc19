"""Exception types with messages meant for users, not tracebacks."""


class ColaError(Exception):
    """Base class for every error cola_core raises on bad input."""


class ConfigError(ColaError, ValueError):
    """A config.json is missing a key or holds an invalid value."""


class CheckpointError(ColaError, ValueError):
    """A checkpoint folder or weight file is missing, corrupt or does not match the model."""


class GenerationError(ColaError, ValueError):
    """Bad input to the text path: prompts or texts the model cannot take, generation knobs, device."""


class ConversationError(ColaError, ValueError):
    """A chat conversation the model cannot take: an unknown role, content that is not text, an empty message,
    or a last message longer than the context."""


class TensorFileError(CheckpointError):
    """A safetensors file is unreadable, malformed or truncated."""


class NonFiniteWeightsWarning(UserWarning):
    """Weights holding NaN/inf were loaded because the caller asked for ``nonfinite="warn"``."""

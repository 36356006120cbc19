"""The workbench's user-facing error type (a ColaError, so the CLI prints it as one line)."""
from cola_core.errors import ColaError


class WorkbenchError(ColaError, ValueError):
    """Bad input to a workbench call: texts, latents, hook names, edit arguments."""

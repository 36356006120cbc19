"""The workbench's user-facing error type (a ColaError, so the CLI prints it as one line)."""
import contextlib
from typing import Iterator

from cola_core.errors import ColaError, GenerationError


class WorkbenchError(ColaError, ValueError):
    """Bad input to a workbench call: texts, latents, hook names, edit arguments."""


class WorkbenchGenerationError(WorkbenchError, GenerationError):
    """A cola_core text-path rule (knobs, prompt and context length) broken through a workbench verb."""


@contextlib.contextmanager
def as_workbench_error() -> Iterator[None]:
    """Re-raise cola_core's GenerationError as one that is also a WorkbenchError (same message)."""
    try:
        yield
    except WorkbenchError:
        raise
    except GenerationError as exc:
        raise WorkbenchGenerationError(str(exc)) from None

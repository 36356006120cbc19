"""The app's user-facing error: bad input from a person or a script, answered as one message."""
from workbench import WorkbenchError


class InputError(WorkbenchError):
    """A value the app cannot use (empty text, a number out of range, a run that expired); the
    event wiring shows its message to the user and logs it as one line."""

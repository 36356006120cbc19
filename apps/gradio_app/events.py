"""Tabs and their events: layout, plain handler functions, and the wiring between them and Gradio.

A tab is a module with ``TITLE``, ``TAB_ID``, ``build(ctx) -> TabComponents`` (the layout only) and
``wire(ctx, ui)`` (its events, one :func:`on` call each); a tab whose events reach into another tab adds
``link(ctx, tabs, selector)``, called once every tab is built (``tabs``: TAB_ID -> components,
``selector``: the ``gr.Tabs``, whose ``selected`` switches tabs). A handler is a module-level function
``handler(ctx, *input values) -> Update`` (or a generator of updates): an :data:`Update` maps the
names of the tab's components to new values, and names it leaves out are left as they are. So a
handler is called and checked in a test like any function, without Gradio running.

:func:`on` registers a handler: Gradio passes the raw input values (its own preprocessing is off, so
every check, and every error message, is the handler's; file inputs arrive as paths), the updates
go back in Gradio's dict-return style, and a bad input (any ``ValueError``: the app's InputError,
the workbench's errors) reaches the user as one message and the server log as one line, never as
a traceback. A handler that declares ``session`` gets the browser/client session id (for Stop),
one that declares ``progress`` gets Gradio's progress bar.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
from types import SimpleNamespace
from typing import Any, Callable, Iterator, Protocol, Sequence

import gradio as gr

from .context import AppContext

log = logging.getLogger("apps.gradio_app")

Update = dict[str, Any]        # component name -> new value (or a component carrying new properties)
LOCAL_SESSION = "local"        # the session of a handler called outside Gradio
LIGHT_CONCURRENCY = 8          # light events (sliders, scrubbing, stop, status) run in their own group


class Progress(Protocol):
    def __call__(self, progress: float | tuple[int, int] | None, desc: str | None = None) -> Any: ...


def no_progress(progress: float | tuple[int, int] | None = None, desc: str | None = None) -> None:
    """The progress bar of a handler called outside Gradio: nothing to draw."""


class TabComponents(SimpleNamespace):
    """A tab's components by name (``ui.prompt``); handlers' updates are keyed by these names."""


def run_state(ctx: AppContext) -> gr.State:
    """A session's run id (the results stay in the run store, which forgets the run when the state expires)."""
    return gr.State(None, time_to_live=ctx.store.ttl_s, delete_callback=ctx.store.delete)


class Tab(Protocol):
    """What app.py needs from a tab module (plus, optionally, ``link(ctx, tabs, selector)``: see the module doc)."""

    TITLE: str
    TAB_ID: str

    def build(self, ctx: AppContext) -> TabComponents: ...

    def wire(self, ctx: AppContext, ui: TabComponents) -> None: ...


def on(ctx: AppContext, ui: TabComponents, triggers: Any, handler: Callable, inputs: Sequence[str],
       outputs: Sequence[str], *, api_name: str, heavy: bool = False, **options: Any) -> Any:
    """Run ``handler(ctx, *values of inputs)`` when a trigger fires; its updates set ``outputs`` by name.

    ``heavy`` events share ``ctx.concurrency`` slots; light ones have their own group, so scrubbing
    never waits behind a long job. ``options`` go to ``gr.on`` (``cancels``, ``show_progress``, ...).
    """
    group = (dict(concurrency_id="heavy", concurrency_limit=ctx.concurrency) if heavy else
             dict(concurrency_id="light", concurrency_limit=LIGHT_CONCURRENCY))
    return gr.on(triggers, gradio_function(ctx, ui, handler, inputs, outputs, api_name),
                 [getattr(ui, name) for name in inputs], [getattr(ui, name) for name in outputs],
                 api_name=api_name, preprocess=False, **group, **options)


def gradio_function(ctx: AppContext, ui: TabComponents, handler: Callable, inputs: Sequence[str],
                    outputs: Sequence[str], event: str) -> Callable:
    """``handler`` as Gradio calls it: input values by position, then the request and the progress bar;
    returns (or yields) ``{component: value}``."""
    targets = {name: getattr(ui, name) for name in outputs}
    files = {i for i, name in enumerate(inputs) if isinstance(getattr(ui, name), gr.File)}
    wants = inspect.signature(handler).parameters

    def run(args: tuple) -> Any:
        *values, request, progress = args
        values = [file_path(v) if i in files else v for i, v in enumerate(values)]
        extras = {}
        if "session" in wants:
            extras["session"] = getattr(request, "session_hash", None) or LOCAL_SESSION
        if "progress" in wants:
            extras["progress"] = progress
        return handler(ctx, *values, **extras)

    def components(update: Update) -> dict:
        unknown = update.keys() - targets.keys()
        if unknown:
            raise RuntimeError(f"{handler.__name__} updated {sorted(unknown)}, not outputs of {event}: {list(outputs)}")
        if not update:      # nothing to change: an empty dict would read as the value of a single output
            return {target: gr.skip() for target in targets.values()}
        return {targets[name]: value for name, value in update.items()}

    if inspect.isgeneratorfunction(handler):
        def fn(*args):
            with user_errors(event):
                for update in run(args):
                    yield components(update)
    else:
        def fn(*args):
            with user_errors(event):
                return components(run(args))

    params = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD) for name in inputs]
    params += [inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=gr.Request),
               inspect.Parameter("progress", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=gr.Progress())]
    fn.__signature__ = inspect.Signature(params)     # Gradio reads the inputs and special arguments from it
    fn.__annotations__ = {"request": gr.Request}
    fn.__name__, fn.__qualname__, fn.__doc__ = handler.__name__, handler.__qualname__, handler.__doc__
    return fn


def file_path(payload: Any) -> Any:
    """A file input's path: Gradio sends ``{"path": ...}`` (already checked to be an upload it holds)."""
    return payload.get("path") if isinstance(payload, dict) else payload


@contextlib.contextmanager
def user_errors(event: str) -> Iterator[None]:
    """Bad input (a ValueError) becomes a message for the user and one log line, without a traceback."""
    try:
        yield
    except ValueError as exc:
        message = str(exc.args[0]) if exc.args else type(exc).__name__
        log.warning("%s: bad input: %s", event, " ".join(message.split()))
        raise gr.Error(message, print_exception=False) from None

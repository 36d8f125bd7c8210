"""A failed command ends with one line saying what failed and what to run."""

from __future__ import annotations

import logging
import sys

from kedro.framework.hooks import hook_impl

logger = logging.getLogger(__name__)


class ErrorSummaryHooks:
    """After a failed ``kedro`` command's traceback, one line that says what failed and why.

    Kedro re-raises the error and Python prints the (long) traceback at exit through ``sys.excepthook``;
    this wraps that hook once per process, so the summary is the last thing on the screen.
    """

    _installed = False

    @hook_impl
    def after_context_created(self, context) -> None:
        if ErrorSummaryHooks._installed:
            return
        ErrorSummaryHooks._installed = True
        previous = sys.excepthook
        command = "kedro " + " ".join(sys.argv[1:]) if sys.argv and "kedro" in sys.argv[0] else "the run"

        def excepthook(exc_type, exc, tb):
            previous(exc_type, exc, tb)
            sys.stderr.write("\n" + error_summary(command, exc_type, exc) + "\n")

        sys.excepthook = excepthook


def error_summary(command: str, exc_type, exc) -> str:
    """``<command> failed: <Type>: <message>``; our own errors keep their whole (short, actionable) message."""
    if issubclass(exc_type, KeyboardInterrupt):
        return f"{command} was interrupted. Run the same command again: LoRA training resumes from its last checkpoint."
    cause = exc.__cause__ or exc.__context__
    # kedro wraps load/save errors (DatasetError); when the cause is ours, it is the one that says what to do
    if cause is not None and _ours(cause) and not _ours(exc):
        return error_summary(command, type(cause), cause)
    text = str(exc).strip()
    if not _ours(exc):
        text = text.splitlines()[0] if text else ""
    return f"{command} failed: {exc_type.__name__}: {text}"


def _ours(exc: BaseException) -> bool:
    return type(exc).__module__.split(".")[0] == "ziplora_pipeline"

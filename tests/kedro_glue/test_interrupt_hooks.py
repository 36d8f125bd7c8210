"""Ctrl-C ends the run as interrupted (exit 130, one line) even when the library it lands in wraps the exception:
mlflow's SQL session re-raises anything as MlflowException (seen when SIGINT arrives while a metric is logged)."""

from __future__ import annotations

import signal

import pytest

from ziplora_pipeline.kedro_glue.hooks.interrupt import InterruptHooks, RunInterrupted


def test_an_interrupt_wrapped_by_a_library_still_exits_130(capsys):
    from mlflow.exceptions import MlflowException

    hooks = InterruptHooks()
    hooks.before_pipeline_run({}, None, None)
    try:
        hooks.before_node_run(type("N", (), {"name": "subject_lora.train_subject_lora"})())
        with pytest.raises(RunInterrupted) as interrupt:
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)  # what Ctrl-C calls
        wrapped = MlflowException(message=interrupt.value)  # as mlflow/store/db/utils.py re-raises it
        with pytest.raises(SystemExit) as exit_:
            hooks.on_pipeline_error(wrapped)
    finally:
        hooks._restore()
    assert exit_.value.code == 130
    assert capsys.readouterr().err.strip() == str(interrupt.value)  # the one line, not the wrapper's traceback
    assert "(node subject_lora.train_subject_lora)" in str(interrupt.value)


def test_another_error_is_left_to_kedro_and_the_previous_handler_is_back():
    previous = signal.getsignal(signal.SIGINT)
    hooks = InterruptHooks()
    hooks.before_pipeline_run({}, None, None)
    assert signal.getsignal(signal.SIGINT) is not previous
    hooks.on_pipeline_error(ValueError("boom"))  # returns: Kedro reports it as usual
    assert signal.getsignal(signal.SIGINT) is previous


def test_an_interrupt_inside_a_database_call_waits_until_it_is_over(monkeypatch):
    """Ctrl-C landing in SQLAlchemy / MLflow store code is not raised there (it could leave the write transaction
    open, and MLflow's closing of the run then failed with "database is locked"): the same signal is sent again
    shortly after, and raised once the handler finds itself outside that code."""
    import sys

    from ziplora_pipeline.kedro_glue.hooks import interrupt as module

    timers = []

    class Timer:
        def __init__(self, delay, fn, args):
            timers.append((delay, fn, args))

        def start(self):
            pass

    monkeypatch.setattr(module.threading, "Timer", Timer)
    in_store = {"__name__": "sqlalchemy.engine.base", "sys": sys}
    exec("def current():\n    return sys._getframe()\n", in_store)
    frame = in_store["current"]()
    assert module.in_database_call(frame) and not module.in_database_call(sys._getframe())
    hooks = InterruptHooks()
    hooks.before_pipeline_run({}, None, None)
    try:
        handler = signal.getsignal(signal.SIGINT)
        assert handler(signal.SIGINT, frame) is None  # deferred, not raised
        assert timers == [(module.DEFER_S, module.os.kill, (module.os.getpid(), signal.SIGINT))]
        with pytest.raises(RunInterrupted):
            handler(signal.SIGINT, sys._getframe())  # the resent signal, outside the database code
    finally:
        hooks._restore()

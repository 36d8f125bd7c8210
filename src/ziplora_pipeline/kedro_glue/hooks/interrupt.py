"""An interrupted run says so: Ctrl-C ends it with one line, exit code 130 and its MLflow run KILLED; a run
killed hard (its MLflow run left RUNNING) is marked KILLED by the next run of the project.

Without this, Ctrl-C reached Kedro as ``KeyboardInterrupt`` (not an ``Exception``: no ``on_pipeline_error``
hook ran), click printed "Aborted!" and MLflow's exit handler closed the run as FINISHED.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading

from kedro.framework.hooks import hook_impl

logger = logging.getLogger(__name__)
PID_TAG, HOST_TAG = "ziplora.pid", "ziplora.host"
# a Ctrl-C that lands in these modules' code waits until the call is over (``in_database_call``)
DATABASE_MODULES = ("sqlalchemy", "sqlite3", "mlflow.store")
DEFER_S = 0.05


def in_database_call(frame) -> bool:
    """Whether ``frame`` (a signal handler's interrupted frame) or a caller of it runs SQLAlchemy, sqlite3 or MLflow's
    store code. An exception raised there can leave a connection's write transaction open: MLflow's own closing of
    the run then waited out sqlite's 20 s busy timeout and crashed with "database is locked" (seen once in a full test
    run under load, tests/e2e/test_interrupt.py)."""
    while frame is not None:
        if str(frame.f_globals.get("__name__", "")).startswith(DATABASE_MODULES):
            return True
        frame = frame.f_back
    return False


def process_tags() -> dict[str, str]:
    """The tags that say which process owns a run (``mark_stale_runs`` checks them)."""
    return {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


class RunInterrupted(Exception):  # noqa: N818 - it is not an error of the run, the user stopped it
    """SIGINT during a run, raised as an ``Exception`` so that Kedro's ``on_pipeline_error`` hooks run."""


def interrupt_message(node: str | None) -> str:
    """'Interrupted at <metric prefix> step N (node X); ...' with the checkpoint a rerun resumes from."""
    from ...core.lora.checkpoints import LAST_SAVED
    from ..tracking import LAST_STEP

    where = f" at {LAST_STEP['prefix']} step {LAST_STEP['step']}" if LAST_STEP else ""
    node_part = f" (node {node})" if node else ""
    if LAST_SAVED:
        resume = f"run the same command again to resume from the checkpoint of step {LAST_SAVED['step']}"
    else:
        resume = "run the same command again (no checkpoint was written in this run: the node starts over)"
    return f"Interrupted{where}{node_part}; {resume}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def mark_stale_runs(client, experiment_ids: list[str], current: str | None) -> list[str]:
    """Runs left RUNNING by a process of this host that no longer exists (killed hard): set to KILLED.
    Runs of another host, or without the pid tag, are left alone (their process cannot be checked)."""
    host = socket.gethostname()
    stale = []
    for run in client.search_runs(experiment_ids, "attributes.status = 'RUNNING'", max_results=1000):
        tags = run.data.tags
        if run.info.run_id == current or tags.get(HOST_TAG) != host or not tags.get(PID_TAG, "").isdigit():
            continue
        if not _alive(int(tags[PID_TAG])):
            client.set_terminated(run.info.run_id, status="KILLED")
            stale.append(run.info.run_id)
    return stale


class InterruptHooks:
    def __init__(self):
        self._previous = None
        self._node: str | None = None
        self._run_id: str | None = None
        self._interrupt: RunInterrupted | None = None  # raised by our handler in this run

    @hook_impl(trylast=True)  # after kedro-mlflow opened the run
    def before_pipeline_run(self, run_params, pipeline, catalog) -> None:
        self._node, self._run_id, self._interrupt = None, None, None
        try:
            import mlflow

            run = mlflow.active_run()
            if run is not None:
                self._run_id = run.info.run_id
                mlflow.set_tags(process_tags())
                stale = mark_stale_runs(mlflow.MlflowClient(), [run.info.experiment_id], run.info.run_id)
                if stale:
                    logger.warning("Marked %d MLflow run(s) KILLED that a hard kill left RUNNING: %s", len(stale),
                                   ", ".join(stale))
        except Exception as err:  # noqa: BLE001 - tracking must never stop a run
            logger.debug("interrupt hooks: MLflow not usable (%s)", err)

        def handler(signum, frame):
            if in_database_call(frame):  # not inside a transaction: the same signal again once the call is over
                threading.Timer(DEFER_S, os.kill, (os.getpid(), signum)).start()
                return
            # remembered: a library the signal lands in may wrap it (mlflow's SQL session re-raises any exception
            # as MlflowException), and the run must still end as interrupted
            self._interrupt = RunInterrupted(interrupt_message(self._node))
            raise self._interrupt

        if threading.current_thread() is threading.main_thread():  # signal handlers can only be set there
            self._previous = signal.signal(signal.SIGINT, handler)

    @hook_impl
    def before_node_run(self, node) -> None:
        self._node = node.name

    def _restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    @hook_impl
    def after_pipeline_run(self) -> None:
        self._restore()

    @hook_impl(trylast=True)  # after kedro-mlflow closed the run (as FAILED)
    def on_pipeline_error(self, error) -> None:
        self._restore()
        error = error if isinstance(error, RunInterrupted) else self._interrupt
        if error is None:
            return
        if self._run_id is not None:
            try:
                import mlflow

                mlflow.MlflowClient().set_terminated(self._run_id, status="KILLED")
            except Exception as err:  # noqa: BLE001
                logger.warning("Could not mark MLflow run %s KILLED: %s", self._run_id, err)
        sys.stderr.write(f"\n{error}\n")
        sys.stderr.flush()
        raise SystemExit(130)  # the shell's code for SIGINT; one line above instead of a traceback

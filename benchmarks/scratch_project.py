"""``kedro`` in a scratch copy of the project for the benchmarks that run whole jobs (run_memory.py, job_time.py):
``ziplora_pipeline.kedro_glue.scratch_project`` (the tests' helper too), exiting with the log's tail on failure."""

from __future__ import annotations

from pathlib import Path

from ziplora_pipeline.kedro_glue.scratch_project import copy_project, run_kedro

__all__ = ["copy_project", "kedro"]


def kedro(project: Path, *args: str, env: dict[str, str] | None = None) -> tuple[str, float]:
    """``kedro <args>`` in ``project``: (stdout and stderr, wall seconds)."""
    proc, seconds = run_kedro(project, *args, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"kedro {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-5000:]}")
    return proc.stdout, seconds

"""Project pipelines: every folder under ``pipelines/`` is a runnable stage."""

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = find_pipelines(raise_errors=True)
    # pretrain builds the committed toy-world base model: run it on purpose, never as part of the job.
    pipelines["__default__"] = sum((p for name, p in pipelines.items() if name != "pretrain"), Pipeline([]))
    return pipelines

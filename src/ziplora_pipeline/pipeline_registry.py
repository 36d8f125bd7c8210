"""Project pipelines: every folder under ``pipelines/`` is a runnable stage."""

import importlib
import pkgutil

from kedro.framework.project import find_pipelines
from kedro.pipeline import Pipeline

# The grid names its namespaces itself: one per concept and per pair (`kedro run --namespaces robot_x_sketch`).
OWN_NAMESPACES = ("grid",)
NOT_IN_JOB = ("pretrain", "grid")  # pretrain builds the committed base model; the grid is its own job


def _namespaced(name: str, stage: Pipeline) -> Pipeline:
    """The stage in a namespace named after it (Kedro-Viz draws one collapsible box per stage, nodes are
    ``merge.zip_merge``); dataset and parameter names stay as the catalog and conf/ spell them."""
    if name in OWN_NAMESPACES:
        return stage
    return Pipeline(stage, namespace=name, prefix_datasets_with_namespace=False)


def register_pipelines() -> dict[str, Pipeline]:
    pipelines = {name: _namespaced(name, p) for name, p in find_pipelines(raise_errors=True).items()
                 if name != "__default__"}
    job = sum((p for name, p in pipelines.items() if name not in NOT_IN_JOB), Pipeline([]))
    if "grid" in pipelines:  # `kedro run` runs the grid where conf says so (conf/grid: grid.replace_default_job)
        from .kedro_glue.grid_config import current_grid_config

        if current_grid_config().replace_default_job:
            job = pipelines["grid"]
    pipelines["__default__"] = job
    return pipelines


def stage_pipelines() -> dict[str, Pipeline]:
    """Every stage, in the order the whole job runs them (data_prep first).

    ``register_pipelines`` cannot tell which stage makes a missing input: under ``kedro run --pipelines x``
    Kedro 1.7 loads only ``x`` (``find_pipelines`` honours the CLI's filter), so this imports them all.
    """
    from . import pipelines as package

    stages = {m.name: _namespaced(m.name, importlib.import_module(f"{package.__name__}.{m.name}").create_pipeline())
              for m in pkgutil.iter_modules(package.__path__) if m.ispkg}
    position = {n.name: i for i, n in enumerate(sum(stages.values(), Pipeline([])).nodes)}  # topological
    return dict(sorted(stages.items(), key=lambda kv: min(position[n.name] for n in kv[1].nodes)))

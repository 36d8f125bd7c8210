"""Dagster definitions (kedro-dagster): the project's pipelines as Dagster jobs (``conf/<env>/dagster.yml``).

Each Kedro node is a Dagster op, so the grid's pairs are separate tasks that an executor can spread over
processes (``multiprocess``) or over the workers of a dask.distributed cluster (``dask``, dagster-dask; on a
cluster, GPU workers). The Kedro environment is ``KEDRO_ENV`` (default ``local``).
"""

import os

import dagster as dg
import kedro_dagster.translator
from kedro_dagster import KedroProjectTranslator
from kedro_dagster.config.models import DaskExecutorOptions
from kedro_dagster.dagster import ExecutorCreator


class _DaskWithoutUnsetClusters:
    """dagster-dask's executor, configured with only the cluster kind that is set.

    kedro-dagster 0.8.1 configures it with ``DaskExecutorOptions.model_dump()``, which lists every cluster kind
    (``existing``, ``local``, ``kube``...) with ``None`` for the unset ones, and Dagster's ``Selector`` refuses
    more than one key ("You can only specify a single field at path root:config:cluster").
    """

    @staticmethod
    def configured(config: dict):
        from dagster_dask import dask_executor

        cluster = {k: v for k, v in (config.get("cluster") or {}).items() if v is not None}
        return dask_executor.configured({**config, "cluster": cluster or {"local": {}}})


class _ExecutorCreator(ExecutorCreator):
    def __init__(self, dagster_config):
        super().__init__(dagster_config)
        self.register_executor(DaskExecutorOptions, _DaskWithoutUnsetClusters())


kedro_dagster.translator.ExecutorCreator = _ExecutorCreator  # the translator builds its creator by this name

translator = KedroProjectTranslator(env=os.environ.get("KEDRO_ENV", "local"))
location = translator.to_dagster()

defs = dg.Definitions(
    assets=list(location.named_assets.values()),
    resources=location.named_resources | {"io_manager": dg.fs_io_manager},
    jobs=list(location.named_jobs.values()),
    schedules=list(location.named_schedules.values()),
    sensors=list(location.named_sensors.values()),
    loggers={"console": dg.colored_console_logger},
)

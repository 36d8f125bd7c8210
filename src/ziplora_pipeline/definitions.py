"""Dagster definitions (kedro-dagster): the project's pipelines as Dagster jobs (``conf/<env>/dagster.yml``).

Each Kedro node is a Dagster op, so the grid's pairs are separate tasks that an executor can spread over
processes or, on a cluster, over GPU workers. The Kedro environment is ``KEDRO_ENV`` (default ``local``).
"""

import os

import dagster as dg
from kedro_dagster import KedroProjectTranslator

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

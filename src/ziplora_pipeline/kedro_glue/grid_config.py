"""The grid parameters at pipeline-registration time.

Kedro builds pipelines before nodes get parameters, but the grid's pipeline *is* its parameters (one
namespace per concept and pair). ``GridHooks.after_context_created`` keeps the run's config loader
(with ``--env`` and ``--params``); without a session (``kedro registry list``, Kedro-Viz, notebooks) the
project's ``conf/`` is read with ``KEDRO_ENV``.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..core.config_utils import from_dict
from ..core.evaluation.grid import GridConfig

_LOADER = None


def remember(config_loader) -> None:
    global _LOADER
    _LOADER = config_loader


def current_grid_config() -> GridConfig:
    loader = _LOADER
    if loader is None:
        from kedro.framework.project import settings

        loader = settings.CONFIG_LOADER_CLASS(conf_source=str(Path.cwd() / settings.CONF_SOURCE),
                                              env=os.environ.get("KEDRO_ENV"), **settings.CONFIG_LOADER_ARGS)
    try:
        params = loader["parameters"]
    except Exception:  # noqa: BLE001 - no conf/ here (e.g. imported from a notebook elsewhere): the defaults
        params = {}
    return from_dict(GridConfig, params.get("grid"), "grid")

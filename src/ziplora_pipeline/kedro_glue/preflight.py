"""Checks run before a pipeline's first node: every input it needs from disk is there.

Kedro finds a missing input only when the node that loads it starts, after earlier nodes have
already saved new versions, and reports it as ``DatasetError: Did not find any versions for ...``.
Here each missing input is named once with the stage that produces it and the command to run:

    Cannot run the 'merge' stage: 2 input(s) have no saved version yet.
      - subject_lora_weights (data/06_models/subject_lora/...): made by the 'subject_lora' stage
    Run `kedro run --pipelines subject_lora,style_lora` first (or `kedro run` for the whole job).
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

from ..core.config_utils import ConfigError

logger = logging.getLogger(__name__)


class MissingInputError(ConfigError):
    """An input of the requested pipeline(s) is not on disk; the message says which stage makes it."""


def _describe(dataset) -> str:
    for attr in ("_filepath", "_path"):
        path = getattr(dataset, attr, None)
        if path is not None:
            return str(path)
    return type(dataset).__name__


def _exists(dataset) -> bool:
    try:
        return bool(dataset.exists())
    except Exception:  # noqa: BLE001 - a dataset that cannot even check itself is as good as missing
        return False


def producers(name: str, registered: Mapping[str, Any]) -> list[str]:
    """Stages (not ``__default__``) whose nodes output ``name``, smallest first."""
    found = [(len(p.nodes), n) for n, p in registered.items() if n != "__default__" and name in p.all_outputs()]
    return [n for _, n in sorted(found)]


def check_inputs(pipeline, catalog, registered: Mapping[str, Any], params: Mapping[str, Any],
                 run_name: str) -> None:
    """Raise ``MissingInputError`` / ``ImageInputError`` if an input the run needs is absent.

    Checked: (1) every free input of ``pipeline`` that another stage produces (LoRAs, prompts, images)
    must have a saved version; (2) the raw reference folders the run reads (``raw_subjects``,
    ``raw_styles``) must hold the configured subject/style folder. Inputs nobody produces and that are
    not raw folders (checkpoint stores) are optional and not checked.
    """
    from ..pipelines.data_prep.nodes import RAW_INPUTS, concept_ids

    inputs = {i for i in pipeline.inputs() if not i.startswith("params:") and i != "parameters"}
    nodes = {n.name for n in pipeline.nodes}

    def partitions(name: str) -> dict:
        try:
            return catalog.get(name).load()  # lazy: lists file names, reads nothing
        except Exception:  # noqa: BLE001 - kedro raises DatasetError("No partitions found") for a missing root
            return {}

    for name in sorted(inputs & RAW_INPUTS.keys()):
        concept, root = RAW_INPUTS[name]
        if f"data_prep.prepare_{concept}" in nodes:  # the one-pair job's folder (the grid's are checked below)
            folder = (params.get("data_prep", {}).get(concept) or {}).get("folder", "")
            concept_ids(partitions(name), folder, concept, root)
    if any(n.endswith(".prepare") for n in nodes):  # the grid: every concept folder it prepares, before any training
        from ..core.config_utils import from_dict
        from ..core.evaluation.grid import GridConfig

        for concept, (kind, c) in from_dict(GridConfig, params.get("grid"), "grid").concepts().items():
            if f"{concept}.prepare" in nodes:
                concept_ids(partitions(f"raw_{kind}s"), c.folder or concept, concept, f"data/01_raw/{kind}s",
                            setting=f"grid.{kind}s.{concept}.folder")

    missing: dict[str, str] = {}
    stages: list[str] = []
    for name in sorted(inputs - RAW_INPUTS.keys()):
        made_by = producers(name, registered)
        if not made_by or _exists(catalog.get(name)):
            continue
        missing[name] = f"{_describe(catalog.get(name))}: made by the '{made_by[0]}' stage"
        if made_by[0] not in stages:
            stages.append(made_by[0])
    if missing:
        order = [n for n in registered if n in stages]  # stage_pipelines' order: data_prep before the LoRAs
        lines = "\n".join(f"  - {n} ({where})" for n, where in missing.items())
        raise MissingInputError(
            f"Cannot run {run_name}: {len(missing)} input(s) have no saved version yet.\n{lines}\n"
            f"Run `kedro run --pipelines {','.join(order)}` first (or `kedro run` for the whole job)."
        )

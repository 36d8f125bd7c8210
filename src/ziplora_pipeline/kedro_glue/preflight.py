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
    check_images(nodes, partitions, params)

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


def check_images(nodes: set[str], partitions, params: Mapping[str, Any]) -> None:
    """Every image the run's data_prep nodes will read decoded and checked as those nodes do (corrupt, truncated,
    too small, a decompression bomb), all folders before any node: otherwise the style's images were saved and
    then the subject's folder failed. One ``ImageInputError`` lists every bad file of every folder."""
    from ..core.images import ImageInputError
    from ..pipelines.data_prep.nodes import RAW_INPUTS, prepare_concept

    resolution = (params.get("data_prep") or {}).get("resolution", 64)
    problems = []
    for name, (concept, root) in RAW_INPUTS.items():
        if f"data_prep.prepare_{concept}" in nodes:
            try:
                prepare_concept(partitions(name), (params.get("data_prep") or {}).get(concept) or {}, resolution,
                                concept, root)
            except ImageInputError as err:
                problems.append(str(err))
    grid_prepares = [n.removesuffix(".prepare") for n in sorted(nodes) if n.endswith(".prepare")]
    if grid_prepares:
        from ..pipelines.grid.nodes import prepare_grid_concept
        from ..core.config_utils import from_dict
        from ..core.evaluation.grid import GridConfig

        concepts = from_dict(GridConfig, params.get("grid"), "grid").concepts()
        for concept in grid_prepares:
            if concept in concepts:
                try:
                    prepare_grid_concept(partitions(f"raw_{concepts[concept][0]}s"), params.get("grid"), resolution,
                                         concept)
                except ImageInputError as err:
                    problems.append(str(err))
    if problems:
        raise ImageInputError("\n".join(problems) + "\nNothing was saved: fix or remove these files and run the "
                              "same command again.")


class LoraInputError(ConfigError):
    """A LoRA file the run would read is unusable; the message names the catalog entry, the file and the fix."""


_LORA_FIX = ("Re-export the file, use a LoRA trained on this base model, or point the catalog entry "
             "(conf/local/catalog.yml) at the right file.")


def _lora_inputs(pipeline, catalog) -> dict[str, Any]:
    """{entry: dataset} of the run's free inputs that are LoRA files already on disk (the run does not make them)."""
    from ..datasets.lora_safetensors import LoraSafetensorsDataset

    names = sorted(i for i in pipeline.inputs() if not i.startswith("params:") and i != "parameters")
    found = {}
    for name in names:
        try:
            dataset = catalog.get(name)
        except Exception:  # noqa: BLE001 - not a catalog entry (a free input satisfied elsewhere)
            continue
        if isinstance(dataset, LoraSafetensorsDataset) and _exists(dataset):
            found[name] = dataset
    return found


def _meta_unet(unet_config):
    """The base UNet's module tree on the meta device (shapes only, no memory), to check LoRA shapes against."""
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel.from_config(unet_config)


def check_lora_files(pipeline, catalog, params: Mapping[str, Any]) -> None:
    """Every LoRA file the run reads from disk (``subject_lora_weights``, ``style_lora_weights`` when a stage runs
    on saved or your own LoRAs; a grid's saved concept LoRAs): readable, with UNet layers, finite, of this base
    model's family and shapes; and the subject and style not the same LoRA. Raises ``LoraInputError`` naming the
    entry, the file and the fix, before any node runs (found inside the merge node, they came after other nodes
    had saved)."""
    import torch

    from ..core.config_utils import from_dict
    from ..core.diffusion.base_model import BaseModelConfig, base_unet_config
    from ..core.lora.factors import check_against_unet, unet_lora_factors
    from ..core.lora.io import check_family

    datasets = _lora_inputs(pipeline, catalog)
    if not datasets:
        return
    base = from_dict(BaseModelConfig, params.get("base_model"), "base_model")
    unet_config = base_unet_config(base)
    family = "sdxl" if unet_config.get("addition_embed_type") == "text_time" else "sd"
    unet = _meta_unet(unet_config)
    loaded = {}
    for name, dataset in datasets.items():
        where = f"{name} ({_describe(dataset)})"
        try:
            lora = dataset.load()
            check_family(lora, family, where)
            factors = unet_lora_factors(lora, where, unet_config)
            check_against_unet(unet, {where: factors})
        except Exception as err:  # noqa: BLE001 - any failure to read or fit the file is this input's problem
            raise LoraInputError(f"Catalog entry '{name}' ({_describe(dataset)}) cannot be used: {err} "
                                 f"{_LORA_FIX}") from err
        loaded[name] = (lora, where)
    pairs = [(a, b) for a, b in (("subject_lora_weights", "style_lora_weights"),) if a in loaded and b in loaded]
    for a, b in pairs:
        (la, wa), (lb, wb) = loaded[a], loaded[b]
        same = la.state_dict.keys() == lb.state_dict.keys() and all(
            torch.equal(la.state_dict[k], lb.state_dict[k]) for k in la.state_dict)
        if same:
            raise LoraInputError(
                f"{wa} and {wb} are the same LoRA (identical tensors): a ZipLoRA of a LoRA with itself merges nothing. "
                f"Point one of the two catalog entries at the other concept's LoRA, or run its training stage "
                f"(kedro run --pipelines {b.removesuffix('_weights')}).")

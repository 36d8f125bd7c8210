"""``grid``: a library of concept LoRAs (one namespace per concept) and every pair asked for merged, generated
and judged (one namespace per pair), then the grid figure and table (namespace ``grid``).

Built from the parameters (``grid.subjects``, ``grid.styles``, ``grid.pairs``) when the pipelines are
registered: ``grid_config.current_grid_config`` reads them with the run's ``--env`` and ``--params``.
Per concept ``<c>``: ``<c>.prepare`` -> ``<c>.images`` / ``<c>.prompt``, ``<c>.train_lora`` -> ``<c>.lora_weights``,
``<c>.input_statistics`` (its recorded layer inputs, read by every pair it is in).
Per pair ``<s>_x_<t>``: the merge stage's ``zip_merge`` node on the two concept LoRAs, the pair's methods built
through the registry (``grid.methods``, the references, the strength variants), the merge stage's ``export_merges``,
then ``generate`` and ``judge``. Datasets come from the catalog's factories (``"{concept}.lora_weights"``...).
"""

from __future__ import annotations

import warnings
from functools import partial, update_wrapper

from kedro.pipeline import Node, Pipeline

from ...core.evaluation.grid import GridConfig, pair_name
from ..merge.nodes import export_merges, input_statistics, zip_merge
from .nodes import (build_pair_methods, generate_pair, grid_sheets, grid_table, judge_pair, prepare_grid_concept,
                    train_grid_concept_lora)


def _bound(func, **kwargs):
    """``func`` with some arguments fixed, keeping its name and docstring (Kedro-Viz shows them)."""
    return update_wrapper(partial(func, **kwargs), func)


_SHARED = ("params:grid", "params:base_model", "params:merge", "params:merge.methods", "params:evaluation",
           "params:data_prep.resolution")


def _in_namespace(template: Pipeline, namespace: str, inputs: dict[str, str], parameters: dict[str, str],
                  tags: list[str]) -> Pipeline:
    """``template`` in ``namespace``: its own datasets become ``<namespace>.<name>`` (Kedro's automatic prefixing,
    which the catalog's factories match); ``inputs`` are another namespace's (or a raw) datasets."""
    with warnings.catch_warnings():  # Kedro warns on any '.' in a mapped name, although a namespaced dataset of
        warnings.filterwarnings("ignore", message="One or more dataset names contain")  # another namespace has one
        used = template.inputs()
        return Pipeline(template, namespace=namespace, inputs=inputs,
                        parameters={p: p for p in _SHARED if p in used} | parameters, tags=tags)


def concept_template(name: str) -> Pipeline:
    """One concept: its images and prompt, then its LoRA (the LoRA stage's node, with the concept's overrides)."""
    return Pipeline([
        Node(_bound(prepare_grid_concept, name=name),
             inputs={"partitions": "raw", "grid_params": "params:grid", "resolution": "params:data_prep.resolution"},
             outputs=["images", "prompt"], name="prepare"),
        Node(_bound(train_grid_concept_lora, name=name),
             inputs={"images": "images", "prompt": "prompt", "lora_params": "params:lora", "grid_params": "params:grid",
                     "base_params": "params:base_model", "checkpoints": "lora_checkpoints"},
             outputs=["lora_weights", "training_log", "loss_curve"], name="train_lora"),
        # recorded once per concept and read by every pair it is in (the closed-form method's statistics)
        Node(input_statistics, inputs={"lora": "lora_weights", "images": "images", "prompt": "prompt",
                                       "merge_params": "params:merge", "base_params": "params:base_model"},
             outputs="input_statistics", name="input_statistics"),
    ])


def pair_template(pair: str) -> Pipeline:
    """One pair: ZipLoRA's mergers, the pair's methods and the two merges' files, then its images and scores."""
    loras = {"subject_lora": "subject_lora", "style_lora": "style_lora"}
    concepts = {"subject_prompt": "subject_prompt", "style_prompt": "style_prompt"}
    return Pipeline([
        Node(zip_merge,
             inputs={**loras, **concepts, "subject_images": "subject_images", "style_images": "style_images",
                     "merge_params": "params:merge", "base_params": "params:base_model"},
             outputs=["ziplora_mergers", "merge_log", "merge_curves"], name="ziplora_merge"),
        Node(build_pair_methods,
             inputs={**loras, **concepts, "mergers": "ziplora_mergers", "merge_log": "merge_log",
                     "grid_params": "params:grid", "methods_params": "params:merge.methods",
                     "base_params": "params:base_model", "subject_statistics": "subject_statistics",
                     "style_statistics": "style_statistics", "subject_images": "subject_images",
                     "style_images": "style_images", "merge_params": "params:merge"},
             outputs=["method_loras", "method_costs"], name="build_methods"),
        Node(export_merges, inputs={"method_loras": "method_loras", **concepts, "base_params": "params:base_model",
                                    "inference": "params:grid"},
             outputs=["ziplora_weights", "ziplora_kohya_weights", "direct_merge_weights", "direct_merge_kohya_weights",
                      "ziplora_sample_image", "direct_merge_sample_image", "ziplora_model_card",
                      "direct_merge_model_card"],  # the card last: its save registers the model (hooks/registry.py)
             name="export_merges"),
        Node(_bound(generate_pair, pair=pair),
             inputs={"method_loras": "method_loras", **loras, **concepts, "grid_params": "params:grid",
                     "methods_params": "params:merge.methods", "base_params": "params:base_model"},
             outputs="generated_images", name="generate"),
        Node(_bound(judge_pair, pair=pair),
             inputs={"images": "generated_images", "subject_images": "subject_images", "style_images": "style_images",
                     **concepts, "grid_params": "params:grid", "evaluation_params": "params:evaluation",
                     "base_params": "params:base_model"},
             outputs="scores", name="judge"),
    ])


def concept_pipeline(name: str, kind: str) -> Pipeline:
    return _in_namespace(concept_template(name), name, {"raw": f"raw_{kind}s"}, {"params:lora": f"params:{kind}.lora"},
                         ["grid", "lora"])


def pair_pipeline(subject: str, style: str) -> Pipeline:
    inputs = {f"{role}_{what}": f"{concept}.{name}" for role, concept in (("subject", subject), ("style", style))
              for what, name in (("lora", "lora_weights"), ("images", "images"), ("prompt", "prompt"),
                                 ("statistics", "input_statistics"))}
    return _in_namespace(pair_template(pair_name(subject, style)), pair_name(subject, style), inputs, {}, ["grid", "pair"])


def summary_pipeline(cfg: GridConfig) -> Pipeline:
    """The grid's figure and table. Their dataset names carry ``cfg.key()`` (the pair set), so a grid with a new pair
    has new outputs and ``--only-missing-outputs`` reruns these nodes (and only the new pairs' nodes upstream)."""
    pairs = cfg.pair_list()
    concepts = list(dict.fromkeys([s for s, _ in pairs] + [t for _, t in pairs]))
    key = cfg.key()
    with warnings.catch_warnings():  # as in _in_namespace: the inputs are the pairs' and concepts' namespaced datasets
        warnings.filterwarnings("ignore", message="One or more dataset names contain")
        return _summary(cfg, pairs, concepts, key)


def _summary(cfg: GridConfig, pairs, concepts, key: str) -> Pipeline:
    return Pipeline([
        Node(grid_sheets, inputs={"grid_params": "params:grid",
                                  **{f"{pair_name(s, t)}__images": f"{pair_name(s, t)}.generated_images" for s, t in pairs},
                                  **{f"{c}__refs": f"{c}.images" for c in concepts}},
             outputs=f"grid.{key}.sheets", name="sheets"),
        Node(grid_table, inputs={"grid_params": "params:grid", "evaluation_params": "params:evaluation",
                                 **{f"{pair_name(s, t)}": f"{pair_name(s, t)}.scores" for s, t in pairs}},
             outputs=[f"grid.{key}.table", f"grid.{key}.table_markdown"], name="table"),
    ], namespace="grid", prefix_datasets_with_namespace=False, tags=["grid"])


def build_grid_pipeline(cfg: GridConfig) -> Pipeline:
    pairs = cfg.pair_list()
    used = dict.fromkeys([s for s, _ in pairs] + [t for _, t in pairs])
    kinds = {name: kind for name, (kind, _) in cfg.concepts().items()}
    return (sum((concept_pipeline(c, kinds[c]) for c in used), Pipeline([]))
            + sum((pair_pipeline(s, t) for s, t in pairs), Pipeline([])) + summary_pipeline(cfg))


def create_pipeline(**kwargs) -> Pipeline:
    from ...kedro_glue.grid_config import current_grid_config

    return build_grid_pipeline(current_grid_config())

"""The MLflow Model Registry: every exported ZipLoRA becomes a version of the registered model
``ziplora-<subject>-x-<style>`` (a ``pyfunc`` that serves images, ``serving.py``), tagged with the base model and the
versions of the two source LoRAs, with the alias ``newest`` on the version just made.

Registering always *adds* a version (MLflow numbers them), so a merge of the same pair from other source LoRAs never
overwrites an earlier one; the tags say which LoRAs each version merged.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

from ...core.evaluation.grid import pair_concepts
from ...core.merging.model_card import SAMPLE, sample_settings
from .tracking import CatalogHooks, saved_path

logger = logging.getLogger(__name__)

ALIAS = "newest"  # MLflow reserves "latest" (models:/<name>/latest is the highest version number)
CARD = "ziplora_model_card"  # the export node's last ZipLoRA output: its LoRA files are saved before it
REQUIREMENTS = ("mlflow", "torch", "diffusers", "transformers", "peft", "safetensors", "pillow", "pandas")


def registered_name(subject: str, style: str) -> str:
    """``ziplora-robot-x-sketch``: MLflow's model names allow any characters, URLs and shells do not."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"ziplora-{subject}-x-{style}")


def base_model_reference(base_params: dict, root: str) -> dict:
    """The run's ``base_model`` parameters with a local folder made absolute (the server runs from anywhere)."""
    ref = dict(base_params)
    path = str(ref.get("pretrained_model_name_or_path", ""))
    if path and not os.path.isabs(path) and os.path.exists(os.path.join(root, path)):
        ref["pretrained_model_name_or_path"] = os.path.abspath(os.path.join(root, path))
    return ref


def registered_card(text: str, sources: dict[str, str], versions: dict[str, str], base_model: str) -> str:
    """The card as registered: beside its sample image (``widget:``, as diffusers' DreamBooth cards show theirs,
    and the image in the text) and with a "Sources" section naming the two LoRAs' catalog versions."""
    from huggingface_hub import ModelCard

    card = ModelCard(text)
    prompt = getattr(card.data, "instance_prompt", None) or ""
    card.data.widget = [{"text": prompt, "output": {"url": SAMPLE}}]
    lines = [f"- {role} LoRA: catalog entry `{sources[role]}`, version `{versions[role]}`" for role in sources]
    return (f"{str(card).rstrip()}\n\n![{prompt}]({SAMPLE})\n\n## Sources\n\n" + "\n".join(lines)
            + f"\n- base model: `{base_model}`\n")


def _requirements() -> list[str]:
    # given, not inferred: mlflow's inference imports the model in a subprocess (seconds per registration)
    out = []
    for name in REQUIREMENTS:
        try:
            out.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(name)
    return out


class ModelRegistryHooks(CatalogHooks):
    """Register each saved ZipLoRA export (one-pair ``ziplora_model_card``, grid ``<pair>.ziplora_model_card``)."""

    @hook_impl
    def after_dataset_saved(self, dataset_name: str, data: Any, node) -> None:
        if self._catalog is None or not (dataset_name == CARD or dataset_name.endswith(f".{CARD}")):
            return
        import mlflow

        if mlflow.active_run() is None:  # tracking switched off for this pipeline, or a notebook
            return
        prefix = dataset_name[: -len(CARD)]  # "" or "<pair>."
        try:
            version = self._register(prefix)
        except Exception as err:  # noqa: BLE001 - the merge is saved; a registry failure must not lose it
            logger.warning("Could not register %sziplora_weights in the MLflow Model Registry: %s: %s", prefix,
                           type(err).__name__, err)
            return
        logger.info("Registered MLflow model %s version %s (alias @%s): serve it with `mlflow models serve -m "
                    "models:/%s@%s --env-manager local`", version.name, version.version, ALIAS, version.name, ALIAS)

    def _source(self, prefix: str) -> tuple[str, str, dict[str, str], dict]:
        """Subject, style, the catalog entries of their LoRAs, and the generation settings of this export."""
        load = self._catalog.load
        if prefix:  # a grid pair "<subject>_x_<style>."
            subject, style = pair_concepts(prefix[:-1])
            return subject, style, {"subject": f"{subject}.lora_weights", "style": f"{style}.lora_weights"}, \
                load("params:grid")
        prep = load("params:data_prep")
        return (prep["subject"]["folder"], prep["style"]["folder"],
                {"subject": "subject_lora_weights", "style": "style_lora_weights"}, load("params:generation"))

    def _register(self, prefix: str):
        import mlflow
        from mlflow import MlflowClient

        from ... import serving
        from ...settings import project_root

        subject, style, sources, inference = self._source(prefix)
        name = registered_name(subject, style)
        files = {"lora": f"{prefix}ziplora_weights", "kohya": f"{prefix}ziplora_kohya_weights",
                 "card": f"{prefix}{CARD}", "mergers": f"{prefix}ziplora_mergers",
                 "sample": f"{prefix}ziplora_sample_image"}
        artifacts = {key: saved_path(self._catalog.get(entry)) for key, entry in files.items()}
        if artifacts["sample"] and os.path.isdir(artifacts["sample"]):  # an image set: its one image
            artifacts["sample"] = os.path.join(artifacts["sample"], "sample.png")
        missing = [files[k] for k, p in artifacts.items() if not p or not os.path.exists(p)]
        if missing:
            raise FileNotFoundError(f"no saved file for {missing}")
        versions = {role: self._catalog.get(entry).resolve_load_version() or "-" for role, entry in sources.items()}
        base = base_model_reference(self._catalog.load("params:base_model"), project_root())
        defaults = sample_settings(inference)  # the request params' defaults: what the card's sample was made with
        with tempfile.TemporaryDirectory() as tmp:
            # the registered card names the two source LoRAs by their catalog versions (the node that writes the
            # card sees the LoRAs' tensors, not their versions)
            card = Path(tmp) / "README.md"
            card.write_text(registered_card(Path(artifacts["card"]).read_text(), sources, versions,
                                            base["pretrained_model_name_or_path"]))
            info = mlflow.pyfunc.log_model(
                name=name, python_model=str(Path(serving.__file__).with_name("serving_model.py")),
                artifacts={**artifacts, "card": str(card)}, model_config={"base_model": base, "inference": defaults},
                signature=serving.signature(defaults), pip_requirements=_requirements(), registered_model_name=name)
        client = MlflowClient()
        version = client.get_model_version(name, str(info.registered_model_version))
        tags = {"base_model": base["pretrained_model_name_or_path"], "subject": subject, "style": style,
                "subject_lora_version": versions["subject"], "style_lora_version": versions["style"],
                "ziplora_version": self._catalog.get(files["lora"]).resolve_load_version() or "-"}
        for key, value in tags.items():
            client.set_model_version_tag(name, version.version, key, str(value))
        client.update_model_version(name, version.version, description=(
            f"ZipLoRA of the subject LoRA {versions['subject']} and the style LoRA {versions['style']} on "
            f"{tags['base_model']}; its model card is artifacts/card, the diffusers file artifacts/lora."))
        client.update_registered_model(name, description=(
            f"ZipLoRA merges of the subject '{subject}' and the style '{style}' (ziplora_pipeline). Serve the newest: "
            f"`mlflow models serve -m models:/{name}@{ALIAS} --env-manager local`, then POST "
            f'{{"inputs": ["<prompt>"]}} to /invocations.'))
        client.set_registered_model_tag(name, "subject", subject)
        client.set_registered_model_tag(name, "style", style)
        client.set_registered_model_alias(name, ALIAS, version.version)
        return version

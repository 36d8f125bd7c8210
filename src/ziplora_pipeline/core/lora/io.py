"""LoRA files: what a diffusers ``save_lora_weights`` file holds, as an in-memory value.

A ``LoraFile`` is the state dict and the safetensors header metadata of a diffusers-format SDXL
LoRA (keys ``unet.<module>.lora_A.weight`` / ``lora_B.weight``, the peft ``LoraConfig`` under the
``lora_adapter_metadata`` header). Keeping the metadata is what preserves ``lora_alpha``: without
it diffusers assumes alpha = rank and reloads a LoRA with alpha != rank at the wrong scale.

Why not call ``StableDiffusionXLPipeline.save_lora_weights`` directly: it writes straight to a
folder, while our artifacts go through the Kedro catalog (versioned, written atomically). The
packing below mirrors ``LoraBaseMixin._save_lora_weights`` (prefix keys and metadata with
``unet.``, JSON-encode the config) so the file is byte-for-byte what diffusers would write.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch

LORA_ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # = diffusers.loaders.lora_base's
UNET_PREFIX = "unet"


class LoraFormatError(ValueError):
    """A state dict is not a usable LoRA for this model; the message says what was found."""


@dataclass
class LoraFile:
    """A LoRA as stored on disk: tensors plus safetensors header metadata (all strings)."""

    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)

    def adapter_config(self, prefix: str = UNET_PREFIX) -> dict | None:
        """The peft ``LoraConfig`` dict stored for ``prefix`` (``None`` if the file has none)."""
        raw = self.metadata.get(LORA_ADAPTER_METADATA_KEY)
        if not raw:
            return None
        packed = json.loads(raw)
        start = f"{prefix}."
        return {k[len(start):]: v for k, v in packed.items() if k.startswith(start)} or None

    def unet_state_dict(self) -> dict[str, torch.Tensor]:
        """The UNet part, prefix stripped (``<module>.lora_A.weight`` keys)."""
        start = f"{UNET_PREFIX}."
        return {k[len(start):]: v for k, v in self.state_dict.items() if k.startswith(start)}


def pack_lora_file(unet_state_dict: dict[str, torch.Tensor], lora_config: dict) -> LoraFile:
    """Build the diffusers-format file from a peft UNet state dict and its ``LoraConfig.to_dict()``."""
    config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in lora_config.items()}
    packed_config = {f"{UNET_PREFIX}.{k}": v for k, v in config.items()}
    tensors = {f"{UNET_PREFIX}.{k}": v.detach().contiguous().cpu() for k, v in unet_state_dict.items()}
    metadata = {"format": "pt", LORA_ADAPTER_METADATA_KEY: json.dumps(packed_config, indent=2, sort_keys=True)}
    return LoraFile(tensors, metadata)


BASE_MODEL_KEY = "ziplora_pipeline.base_model"  # header entries naming the base the LoRA was trained on
BASE_FAMILY_KEY = "ziplora_pipeline.base_family"


def lora_file_from_unet(unet, adapter_name: str, base_model: str | None = None, family: str | None = None) -> LoraFile:
    """Export one peft adapter of a diffusers UNet as a diffusers-format ``LoraFile``.

    ``base_model``/``family`` are recorded in the header (other tools ignore extra entries) so a
    merge can refuse a LoRA trained for another model family with a message that says so.
    """
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(unet, adapter_name=adapter_name)
    lora = pack_lora_file(state, unet.peft_config[adapter_name].to_dict())
    if base_model:
        lora.metadata[BASE_MODEL_KEY] = base_model
    if family:
        lora.metadata[BASE_FAMILY_KEY] = family
    return lora


def check_family(lora: LoraFile, family: str, name: str) -> None:
    """Raise ``LoraFormatError`` when ``lora`` records a base-model family other than ``family``."""
    trained = lora.metadata.get(BASE_FAMILY_KEY)
    if trained and trained != family:
        raise LoraFormatError(
            f"The {name} was trained on a {trained} base model ({lora.metadata.get(BASE_MODEL_KEY, '?')}), but the "
            f"base model here is {family}. Retrain it on this base model, or set base_model to the one it was trained on."
        )


def load_lora_file(pipe, lora: LoraFile, adapter_name: str) -> None:
    """Load ``lora`` into ``pipe.unet`` (and its text-encoder parts, if any) as ``adapter_name`` (alpha kept).

    ``load_lora_weights`` only reads the alpha metadata from a file path, not from a dict, so
    in-memory values go through ``load_lora_into_unet`` / ``load_lora_into_text_encoder`` with the
    metadata passed explicitly.
    """
    config = lora.adapter_config()
    metadata = {f"{UNET_PREFIX}.{k}": v for k, v in config.items()} if config else None
    type(pipe).load_lora_into_unet(
        dict(lora.state_dict), network_alphas=None, unet=pipe.unet, adapter_name=adapter_name,
        _pipeline=pipe, metadata=metadata,
    )
    for prefix in ("text_encoder", "text_encoder_2"):
        part = {k: v for k, v in lora.state_dict.items() if k.startswith(f"{prefix}.")}
        if not part or getattr(pipe, prefix, None) is None:
            continue
        config = lora.adapter_config(prefix)  # none in our exports: diffusers then uses alpha = rank (scale 1)
        type(pipe).load_lora_into_text_encoder(
            part, network_alphas=None, text_encoder=getattr(pipe, prefix), prefix=prefix, adapter_name=adapter_name,
            _pipeline=pipe, metadata={f"{prefix}.{k}": v for k, v in config.items()} if config else None,
        )

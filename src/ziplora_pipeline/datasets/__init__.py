"""Custom Kedro datasets: LoRA safetensors files, image sets, raw bytes, checkpoint folders."""

from .binary import BinaryDataset
from .checkpoint_store import CheckpointStoreDataset
from .file_bundle import FileBundleDataset
from .image_set import ImageSetDataset
from .lora_safetensors import LoraSafetensorsDataset
from .lora_set import LoraSetDataset
from .tensors import TensorDictDataset

__all__ = ["BinaryDataset", "CheckpointStoreDataset", "FileBundleDataset", "ImageSetDataset", "LoraSafetensorsDataset",
           "LoraSetDataset", "TensorDictDataset"]

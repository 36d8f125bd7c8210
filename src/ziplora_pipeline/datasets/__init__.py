"""Custom Kedro datasets: LoRA safetensors files, image sets, raw bytes, checkpoint folders, and
atomic versions of the JSON/text/CSV/figure datasets (every versioned save is write-then-rename)."""

from .atomic_files import CSVDataset, FigureDataset, JSONDataset, TextDataset
from .binary import BinaryDataset
from .checkpoint_store import CheckpointStoreDataset
from .diffusers_folder import DiffusersFolderDataset
from .file_bundle import FileBundleDataset
from .image_set import ImageSetDataset
from .lora_safetensors import LoraSafetensorsDataset
from .lora_set import LoraSetDataset
from .tensors import TensorDictDataset
from .toy_judges import ToyJudgesDataset

__all__ = ["CSVDataset", "FigureDataset", "JSONDataset", "TextDataset", "BinaryDataset", "CheckpointStoreDataset", "DiffusersFolderDataset", "FileBundleDataset", "ImageSetDataset", "LoraSafetensorsDataset",
           "LoraSetDataset", "TensorDictDataset", "ToyJudgesDataset"]

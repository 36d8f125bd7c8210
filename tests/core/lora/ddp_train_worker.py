"""Run by tests/core/lora/test_ddp.py under ``torchrun --nproc_per_node 2``: train a LoRA data-parallel on CPU
(gloo) and write each rank's exported LoRA, so the test can check DDP kept the ranks in sync."""

import os
import sys

from safetensors.torch import save_file

from ziplora_pipeline.core.diffusion.base_model import BaseModelConfig, load_base_pipeline
from ziplora_pipeline.core.diffusion.sdxl import encode_concept
from ziplora_pipeline.core.lora.training import LoraTrainingConfig, train_lora
from ziplora_pipeline.sample_data import subject_views

model, out = sys.argv[1], sys.argv[2]
pipe = load_base_pipeline(BaseModelConfig(pretrained_model_name_or_path=model, miniature_seed=None, device="cpu"))
inputs = encode_concept(pipe, subject_views(views=2, size=64), "a photo of sks robot")
result = train_lora(pipe, inputs, LoraTrainingConfig(steps=4, learning_rate=1e-2), "subject")
rank = os.environ["RANK"]
save_file(result.lora.state_dict, f"{out}/rank{rank}.safetensors",
          metadata={"processes": str(result.processes), "loss0": repr(result.losses[0])})

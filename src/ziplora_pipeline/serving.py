"""An exported merge as an MLflow ``pyfunc`` model: ``predict`` takes prompts and returns images made by the base
model the run used with the merged LoRA applied, so ``mlflow models serve -m models:/<name>@newest`` serves it.

Request (MLflow's scoring protocol)::

    POST /invocations  {"inputs": ["a sks robot in zwx style"], "params": {"seed": 0, "num_inference_steps": 20}}
    -> {"predictions": [{"image": "<base64 PNG>"}]}

The base model is *referenced*, not copied (``model_config["base_model"]``: the run's ``base_model`` parameters with
a local folder made absolute): a 7 GB SDXL in every registered version would fill the artifact store. The server
therefore needs the same hub id or folder the run used. The model's artifacts are the merged LoRA (diffusers and
kohya files), its card and its mergers.
"""

from __future__ import annotations

import base64
import io
import logging
from typing import Any

import mlflow.pyfunc
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

logger = logging.getLogger(__name__)

PARAMS = ("seed", "num_inference_steps", "guidance_scale", "height", "width")


def _bad_request(message: str) -> MlflowException:
    # INVALID_PARAMETER_VALUE: the scoring server answers 400 with this message (not a 500 with a traceback)
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)


def prompts_of(model_input: Any) -> list[str]:
    """The prompts of a request: a DataFrame (its ``prompt`` column, or its only column), a list or a string."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        column = "prompt" if "prompt" in model_input.columns else (
            model_input.columns[0] if len(model_input.columns) == 1 else None)
        if column is None:
            raise _bad_request(f"Send the prompts as a list of strings or a 'prompt' column; got columns "
                               f"{list(model_input.columns)}.")
        values = list(model_input[column])
    elif isinstance(model_input, dict):  # {"prompt": [...]}: the scoring server's form of a named column
        values = list(model_input.get("prompt", next(iter(model_input.values()), [])))
    elif isinstance(model_input, str):
        values = [model_input]
    else:
        values = list(model_input)
    if not values:
        raise _bad_request("No prompts: send at least one, e.g. {\"inputs\": [\"a sks robot in zwx style\"]}.")
    bad = [v for v in values if not isinstance(v, str) or not v.strip()]
    if bad:
        raise _bad_request(f"Every prompt must be a non-empty string; got {bad[:3]!r}.")
    return values


def size_multiple(pipe) -> int:
    """Image sides must be multiples of this: the VAE's downsampling times the UNet's (its down blocks after the
    first each halve the latent; SDXL: 8 x 4 = 32)."""
    return int(pipe.vae_scale_factor) * 2 ** (len(pipe.unet.config.block_out_channels) - 1)


def native_size(pipe) -> int:
    """The resolution the base model was trained at (SDXL: 1024; the toy: 64)."""
    return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)


def check_size(height: int, width: int, multiple: int, native: int) -> None:
    """A size the base model can make: positive multiples of ``multiple``, at most twice its native resolution."""
    for name, value in (("height", height), ("width", width)):
        if value <= 0 or value % multiple or value > 2 * native:
            raise _bad_request(f"{name} = {value} cannot be made by this base model: use a multiple of {multiple} "
                               f"between {multiple} and {2 * native} (its native resolution is {native}).")


def encode_png(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def decode_png(text: str):
    """The inverse of ``encode_png`` (a client's side): base64 PNG -> PIL image."""
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(text))).convert("RGB")


class MergedLoraModel(mlflow.pyfunc.PythonModel):
    """The base pipeline with one merged LoRA loaded (``load_lora_weights`` on the diffusers file)."""

    def load_context(self, context) -> None:
        from diffusers.utils import logging as diffusers_logging

        from .core.diffusion.base_model import BaseModelConfig, load_base_pipeline

        # "No LoRA keys associated to CLIPTextModelWithProjection": the merge adapts the UNet only, by design
        diffusers_logging.set_verbosity_error()
        config = dict(context.model_config)
        self._pipe = load_base_pipeline(BaseModelConfig(**config["base_model"]), for_inference=True)
        self._pipe.load_lora_weights(context.artifacts["lora"])
        self._defaults = dict(config.get("inference", {}))
        self._multiple, self._native = size_multiple(self._pipe), native_size(self._pipe)
        logger.info("Serving %s on %s (images %d px by default)", context.artifacts["lora"],
                    config["base_model"]["pretrained_model_name_or_path"], self._defaults.get("height", self._native))

    def predict(self, context, model_input, params: dict | None = None):
        import pandas as pd
        import torch

        prompts = prompts_of(model_input)
        p = {**self._defaults, **{k: v for k, v in (params or {}).items() if v is not None}}
        unknown = sorted(set(p) - set(PARAMS))
        if unknown:
            raise _bad_request(f"Unknown params {unknown}; known: {list(PARAMS)}.")
        height, width = int(p["height"]), int(p["width"])
        check_size(height, width, self._multiple, self._native)
        steps = int(p["num_inference_steps"])
        if steps <= 0:
            raise _bad_request(f"num_inference_steps must be > 0, got {steps}.")
        # one CPU generator per image, seeded seed + i: the generation stage's protocol (same seed, same noise)
        generators = [torch.Generator("cpu").manual_seed(int(p["seed"]) + i) for i in range(len(prompts))]
        with torch.no_grad():
            images = self._pipe(prompt=prompts, generator=generators, num_inference_steps=steps,
                                guidance_scale=float(p["guidance_scale"]), height=height, width=width).images
        return pd.DataFrame({"image": [encode_png(im) for im in images]})


def signature(defaults: dict):
    """Prompts in, base64 PNGs out; the generation settings as request params with the run's values as defaults."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    types = {"seed": "long", "num_inference_steps": "long", "guidance_scale": "double", "height": "long",
             "width": "long"}
    return ModelSignature(inputs=Schema([ColSpec("string", "prompt")]), outputs=Schema([ColSpec("string", "image")]),
                          params=ParamSchema([ParamSpec(k, types[k], defaults[k]) for k in PARAMS]))

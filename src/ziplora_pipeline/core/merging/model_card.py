"""A model card beside each exported merge, as diffusers' DreamBooth LoRA scripts write one (``README.md`` with the
Hugging Face card metadata: base model, tags, instance prompt), so the file can be pushed to the Hub, listed on
Civitai or read by a person: what it merges, its trigger words, the prompt to use and how to load it."""

from __future__ import annotations

from huggingface_hub import ModelCard, ModelCardData

TAGS = ["text-to-image", "diffusers", "lora", "template:sd-lora"]
SAMPLE = "sample.png"  # the card's sample image (diffusers' DreamBooth cards: image_0.png under `widget:`)


def card_prompt(subject_prompt: dict, style_prompt: dict) -> str:
    """The card's instance prompt, e.g. "a sks robot in zwx style"."""
    return f"{subject_prompt['prompt']} in {style_prompt.get('token', '')} style".strip()


def sample_settings(inference: dict | None) -> dict:
    """The sample's generation settings: the run's (``generation`` or ``grid``), its first seed."""
    inf = inference or {}
    size = int(inf.get("resolution", 64))
    return {"seed": int((inf.get("seeds") or [0])[0]), "num_inference_steps": int(inf.get("num_inference_steps", 20)),
            "guidance_scale": float(inf.get("guidance_scale", 5.0)), "height": size, "width": size}


def sample_image(pipe, lora, name: str, prompt: str, inference: dict | None):
    """One image of ``prompt`` with ``lora`` applied (the card's sample), seeded as the generation stage seeds."""
    import torch

    from .method import lora_applied

    settings = sample_settings(inference)
    seed = settings.pop("seed")
    with lora_applied(pipe, name, lora), torch.no_grad():
        return pipe(prompt, generator=torch.Generator("cpu").manual_seed(seed), **settings).images[0]


def merge_model_card(method: str, file_name: str, kohya_name: str, base_model: str, architecture: str,
                     subject_prompt: dict, style_prompt: dict, inference: dict | None = None,
                     run_id: str | None = None) -> str:
    """The card's text (YAML front matter + markdown) for the ``method`` merge ("ziplora" | "direct_merge") of the
    two concepts (their data_prep prompts: ``prompt``, ``token``, ``noun``)."""
    tokens = [t for t in (subject_prompt.get("token"), style_prompt.get("token")) if t]
    prompt = card_prompt(subject_prompt, style_prompt)
    family = "stable-diffusion-xl" if architecture == "sdxl" else "stable-diffusion"
    data = ModelCardData(base_model=base_model, library_name="diffusers", instance_prompt=prompt,
                         tags=[*TAGS, family, *(["ziplora"] if method == "ziplora" else [])])
    what = ("ZipLoRA (Shah et al., 2023): the subject and style LoRAs with learned per-column merger vectors (Eq. 2-3),"
            " exported as one rank-(r_c + r_s) LoRA" if method == "ziplora"
            else "the direct merge (ΔW_c + ΔW_s), the paper's first baseline")
    inf = inference or {}
    size = inf.get("resolution")
    settings = ", ".join(f"{k} {v}" for k, v in (("num_inference_steps", inf.get("num_inference_steps")),
                                                  ("guidance_scale", inf.get("guidance_scale")),
                                                  ("height = width", size)) if v is not None)
    provenance = f" (MLflow run `{run_id}` records the versions of both files)" if run_id else ""
    body = f"""
# {method}: {subject_prompt['prompt']} + {style_prompt['prompt']}

{what}, made by ziplora_pipeline (`kedro run`) from

- the subject LoRA, trained on "{subject_prompt['prompt']}",
- the style LoRA, trained on "{style_prompt['prompt']}"{provenance}.

## Trigger words

{", ".join(f"`{t}`" for t in tokens)}: prompt with `{prompt}`, or put the subject in a new scene:
"{subject_prompt['prompt']} wearing a hat in {style_prompt.get('token', '')} style".

## Use it

```python
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained("{base_model}")
pipe.load_lora_weights("{file_name}")
image = pipe("{prompt}"{f", height={size}, width={size}" if size else ""}).images[0]
```

Recommended settings (the ones the project judged it with): {settings or "the base model's defaults"}.
A sample with these settings (seed {sample_settings(inference)["seed"]}) is saved beside this card as
`{method}_sample_image` (`python -m ziplora_pipeline.latest {method}_sample_image`).
`{kohya_name}` is the same LoRA in kohya's format for ComfyUI and AUTOMATIC1111, its header carrying the base model
and the trigger words.
"""
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n{body}"))

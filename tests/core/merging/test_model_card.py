"""The model card written beside each exported merge (core/merging/model_card.py)."""

from __future__ import annotations

from huggingface_hub import ModelCard

from ziplora_pipeline.core.merging.model_card import merge_model_card

SUBJECT = {"prompt": "a sks robot", "token": "sks", "noun": "robot"}
STYLE = {"prompt": "a house in zwx style", "token": "zwx", "noun": "house"}


def test_the_card_has_the_hub_metadata_trigger_words_and_a_loading_snippet():
    text = merge_model_card("ziplora", "ziplora.safetensors", "ziplora_kohya.safetensors",
                            "stabilityai/stable-diffusion-xl-base-1.0", "sdxl", SUBJECT, STYLE,
                            {"num_inference_steps": 50, "guidance_scale": 5.0, "resolution": 1024}, "run123")
    card = ModelCard(text)  # parses as a Hugging Face model card
    assert card.data.base_model == "stabilityai/stable-diffusion-xl-base-1.0"
    assert {"lora", "ziplora", "diffusers", "text-to-image", "stable-diffusion-xl"} <= set(card.data.tags)
    assert card.data.instance_prompt == "a sks robot in zwx style"
    assert "`sks`, `zwx`" in text and 'pipe.load_lora_weights("ziplora.safetensors")' in text
    assert "height=1024, width=1024" in text and "num_inference_steps 50" in text and "run123" in text
    assert "ziplora_kohya.safetensors" in text


def test_the_direct_merge_card_is_not_tagged_ziplora():
    card = ModelCard(merge_model_card("direct_merge", "direct_merge.safetensors", "direct_merge_kohya.safetensors",
                                      "data/06_models/toy_sdxl", "sdxl", SUBJECT, STYLE))
    assert "ziplora" not in card.data.tags and "direct merge" in card.text

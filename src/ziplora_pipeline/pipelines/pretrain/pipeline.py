"""``pretrain``: the toy-world SDXL (render → VAE → encode → UNet + text encoders). Not in ``__default__``."""

from kedro.pipeline import Node, Pipeline

from .nodes import check_toy_model, encode_pool, make_pool, pretrain_unet, pretrain_vae, train_toy_judges


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(make_pool, inputs="params:pretrain", outputs=["toy_pool", "toy_captions"], name="render_toy_pool"),
        Node(pretrain_vae, inputs=["toy_pool", "params:pretrain", "pretrain_checkpoints"],
             outputs=["toy_vae_weights", "toy_vae_log"], name="pretrain_vae"),
        Node(encode_pool, inputs=["toy_pool", "toy_vae_weights", "params:pretrain"], outputs="toy_latents",
             name="encode_toy_pool"),
        Node(pretrain_unet, inputs=["toy_latents", "toy_captions", "toy_vae_weights", "params:pretrain",
                                    "pretrain_checkpoints"],
             outputs=["toy_sdxl", "toy_unet_log"], name="pretrain_unet"),
        Node(train_toy_judges, inputs="params:pretrain", outputs=["toy_judges", "toy_judges_report"],
             name="train_toy_judges"),
        Node(check_toy_model, inputs=["toy_sdxl", "toy_judges", "params:pretrain"],
             outputs=["toy_model_check", "toy_model_samples"], name="check_toy_model"),
    ], tags=["pretrain"])

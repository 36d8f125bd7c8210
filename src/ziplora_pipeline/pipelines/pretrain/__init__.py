"""``pretrain``: the toy-world SDXL. The nodes import without Kedro (scripts/pretrain_gpu.py runs them on
a GPU box that has torch and diffusers only), so the pipeline is built on demand."""


def create_pipeline(**kwargs):
    from .pipeline import create_pipeline as create

    return create(**kwargs)


__all__ = ["create_pipeline"]

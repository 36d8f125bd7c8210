"""MLflow "models from code" entry point of the registered merges (``kedro_glue/hooks/registry.py``): MLflow copies
this file into each logged model and runs it when the model is loaded, instead of unpickling a Python object."""

import mlflow

from ziplora_pipeline.serving import MergedLoraModel

mlflow.models.set_model(MergedLoraModel())

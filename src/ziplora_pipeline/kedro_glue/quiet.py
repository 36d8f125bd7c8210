"""Silence third-party messages that are known to be harmless, where they are raised.

Called from ``settings.py`` (imported by ``kedro run`` before any plugin hook or node), so a default
run's log starts with the project's own lines. Each filter is narrow: one message, one category.
Export ``DIFFUSERS_VERBOSITY=warning`` / ``TRANSFORMERS_VERBOSITY=warning`` to see those libraries' notes.
"""

from __future__ import annotations

import logging
import os
import re
import warnings

# (message regex, category, why it is harmless)
KNOWN_HARMLESS = (
    # kedro and kedro-mlflow call OmegaConf's old resolver API (5x per run); nothing to do on our side
    (r"register_new_resolver\(\) is deprecated", UserWarning),
    # mlflow's pyfunc module warns at import about a class kedro-mlflow defines; message has ANSI codes
    (r".*Add type hints to the `predict` method", UserWarning),
    # dagster-mlflow (pulled in by kedro-dagster's plugin) marks its own hook factory as beta at import
    (r"Function `_create_mlflow_run_hook` is currently in beta", Warning),
    # the same package's resource, in every Dagster op of the grid job
    (r"Dagster resource `mlflow_tracking` is currently in beta", Warning),
    # the registered merges have an explicit signature; an input example would make mlflow load the base model and
    # generate an image at every registration (kedro_glue/hooks/registry.py)
    (r".*An input example was not provided when logging the model", UserWarning),
)


class _KnownHarmless(logging.Filter):
    """Drops captured warnings (logger ``py.warnings``) matching ``KNOWN_HARMLESS``. Needed beside the
    warnings filters because mlflow raises its warning under ``simplefilter("once")`` in a
    ``catch_warnings`` block (mlflow/utils/annotations.py), which overrides any "ignore" filter;
    Kedro's RichHandler routes warnings through logging (``logging.captureWarnings``)."""

    patterns = [re.compile(p, re.I) for p, _ in KNOWN_HARMLESS]

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not any(p.search(text) for p in self.patterns)


def silence_known_warnings() -> None:
    for pattern, category in KNOWN_HARMLESS:
        warnings.filterwarnings("ignore", message=pattern, category=category)
    warnings_logger = logging.getLogger("py.warnings")
    if not any(isinstance(f, _KnownHarmless) for f in warnings_logger.filters):
        warnings_logger.addFilter(_KnownHarmless())
    # diffusers and transformers log through their own handlers at a level they set on first use,
    # which overrides conf/logging.yml; their env variables are read then. Silenced notes: "modules in
    # AutoencoderKL that should be kept in float32: []" (an empty list, per fp16 load) and
    # "CLIPImageProcessor requires torchvision; falling back to ...Pil" (the PIL path is what we use).
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # mlflow draws a download bar per file when it registers a model (four per merge), between the log lines
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

"""Every merge-method kind by name: ``kind -> "<module>:<class>"`` under core/merging/, one line per kind.

Adding a method is one file with one ``MergeMethod`` subclass, one line here and one entry in
``merge.methods`` (docs/extending.md). The classes are imported on first use, so that reading the
parameters (which every ``kedro`` command does) names an unknown kind without importing them all.
"""

from __future__ import annotations

import difflib
import importlib

from ..config_utils import ConfigError, from_dict, require
from .method import MergeMethod

KINDS: dict[str, str] = {
    "base": "base_only:BaseOnly",
    "lora": "single_lora:SingleLora",
    "direct_merge": "direct_merge:DirectMerge",
    "ziplora": "ziplora:ZipLora",
    "ziplora_closed_form": "ziplora_closed_form:ZipLoraClosedForm",
    "k_lora": "k_lora:KLoraMethod",
    "peft": "peft_merges:PeftMerge",
    "np_lora": "np_lora:NpLora",
}


def method_class(kind: str) -> type[MergeMethod]:
    """The ``MergeMethod`` subclass registered as ``kind``."""
    module, cls = KINDS[kind].split(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), cls)


def parse_method(name: str, raw: dict | None, where: str = "merge.methods") -> MergeMethod:
    """``{kind, enabled, **options}`` -> the kind's ``MergeMethod``; an unknown kind or option names the valid ones."""
    require(raw is None or isinstance(raw, dict),
            f"{where}.{name} must be a mapping such as {{kind: peft, combination_type: ties}}, got {raw!r}.")
    raw = dict(raw or {})
    kind = raw.pop("kind", name)
    enabled = raw.pop("enabled", True)
    if kind not in KINDS:
        close = difflib.get_close_matches(kind, list(KINDS), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"Unknown method kind '{kind}' for {where}.{name}.{hint} An entry's kind defaults to its "
                          f"name; set `kind:` to one of {sorted(KINDS)} (core/merging/registry.py).")
    require(isinstance(enabled, bool), f"{where}.{name}.enabled must be true or false, got {enabled!r}.")
    cls = method_class(kind)
    return cls(name, from_dict(cls.Options, raw, f"{where}.{name}"), enabled)


def parse_methods(raw: dict[str, dict] | None, where: str = "merge.methods", enabled_only: bool = True
                  ) -> dict[str, MergeMethod]:
    """The entries of ``raw`` in order (the enabled ones unless ``enabled_only=False``); at least one enabled."""
    require(isinstance(raw, dict) and raw, f"{where} must map method names to their entries "
                                           f"(conf/base/parameters_merge.yml), got {raw!r}.")
    methods = {name: parse_method(name, entry, where) for name, entry in raw.items()}
    require(any(m.enabled for m in methods.values()),
            f"{where}: every method is switched off; enable at least one of {sorted(methods)}.")
    return {n: m for n, m in methods.items() if m.enabled or not enabled_only}

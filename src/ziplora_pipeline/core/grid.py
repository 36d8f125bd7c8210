"""A library of concepts and the grid of (subject, style) pairs merged from it (the paper's Fig. 1 grid).

Each concept (a subject or a style) is a folder under ``data/01_raw/subjects/`` or
``data/01_raw/styles/`` with its own token and noun; its LoRA is trained once. Every pair asked for
(``pairs: all`` = every subject × every style) is merged from the two concept LoRAs, generated and
judged. Names become Kedro namespaces (``robot``, ``robot_x_sketch``), so they must be identifiers.
"""

from __future__ import annotations

import hashlib
import keyword
from dataclasses import dataclass, field

from .config_utils import ConfigError, require

KINDS = ("subject", "style")
PAIR_SEPARATOR = "_x_"


@dataclass(frozen=True)
class ConceptConfig:
    """One concept of the library. ``folder`` defaults to the concept's name."""

    token: str  # rare identifier, unique across the library ("sks", "zwx", ...)
    noun: str  # class noun (subject) or what the style image shows (style)
    folder: str | None = None
    template: str | None = None  # DreamBooth prompt; default "a {token} {noun}" / "a {noun} in {token} style"
    lora: dict = field(default_factory=dict)  # overrides of grid.lora.<kind> for this concept (rank, steps, ...)


@dataclass(frozen=True)
class GridConfig:
    """The concept library, the pairs to merge and how each pair is generated and judged."""

    subjects: dict = field(default_factory=lambda: {"robot": {"token": "sks", "noun": "robot"}})
    styles: dict = field(default_factory=lambda: {"sketch": {"token": "zwx", "noun": "house"}})
    pairs: str | list = "all"  # "all" (every subject × style) or [[subject, style], ...]
    max_pairs: int = 100  # a larger grid needs confirm: true (--params grid.confirm=true)
    confirm: bool = False
    replace_default_job: bool = False  # conf/grid: `kedro run` runs the grid instead of the one-pair job
    prompts: tuple[str, ...] = ("a {subject} in {style} style", "a {subject} wearing a hat in {style} style")
    seeds: tuple[int, ...] = (100, 101, 102, 103)  # disjoint from every training seed
    num_inference_steps: int = 20
    guidance_scale: float = 4.0
    resolution: int = 64
    batch_size: int = 16
    sheet_cell: int = 96
    sheet_seed: int | None = None  # the seed whose images fill the grid sheet; default the first

    def __post_init__(self):
        concepts = self.concepts()  # parses every concept: unknown keys fail here
        tokens: dict[str, str] = {}
        for name, (kind, c) in concepts.items():
            require(name.isidentifier() and not keyword.iskeyword(name) and PAIR_SEPARATOR not in name,
                    f"grid.{kind}s.{name}: a concept name must be a Python identifier without '{PAIR_SEPARATOR}' "
                    "(it names a Kedro namespace), e.g. my_dog.")
            if c.token in tokens:
                raise ConfigError(f"grid: concepts '{tokens[c.token]}' and '{name}' share the token '{c.token}'; "
                                  "each concept needs its own rare token (the prompts could not tell them apart).")
            tokens[c.token] = name
        both = set(self.subjects) & set(self.styles)
        require(not both, f"grid: {sorted(both)} are listed both as a subject and as a style; give each concept one role.")
        pairs = self.pair_list()
        require(len(pairs) > 0, "grid.pairs is empty: use 'all' or list [subject, style] pairs.")
        require(len(pairs) <= self.max_pairs or self.confirm,
                f"grid: {len(pairs)} pairs is more than grid.max_pairs = {self.max_pairs}; each pair is a merge, "
                f"generation and evaluation. Run with --params grid.confirm=true to go ahead.")
        require(len(self.seeds) > 0 and len(self.prompts) > 0, "grid.prompts and grid.seeds must not be empty.")
        for p in self.prompts:
            try:
                p.format(subject="s", style="t")
            except (KeyError, IndexError) as err:
                raise ConfigError(f"grid.prompts: {p!r} may only use {{subject}} and {{style}} ({err}).") from err
        require(self.resolution % 8 == 0 and self.num_inference_steps > 0, "grid.resolution must be a multiple of 8.")

    def concepts(self) -> dict[str, tuple[str, ConceptConfig]]:
        """{name: (kind, config)} for every subject and style."""
        from .config_utils import from_dict

        out = {}
        for kind, group in (("subject", self.subjects), ("style", self.styles)):
            for name, raw in (group or {}).items():
                out[name] = (kind, from_dict(ConceptConfig, raw, f"grid.{kind}s.{name}"))
        return out

    def pair_list(self) -> list[tuple[str, str]]:
        """[(subject, style)] in parameter order; every name checked against the library and its role."""
        if self.pairs == "all":
            return [(s, t) for s in self.subjects for t in self.styles]
        if isinstance(self.pairs, str):
            raise ConfigError(f"grid.pairs must be 'all' or a list of [subject, style] pairs, got {self.pairs!r}.")
        out = []
        for pair in self.pairs:
            require(isinstance(pair, (list, tuple)) and len(pair) == 2, f"grid.pairs: {pair!r} is not [subject, style].")
            s, t = pair
            for name, role, group in ((s, "subject", self.subjects), (t, "style", self.styles)):
                if name in group:
                    continue
                other = self.styles if role == "subject" else self.subjects
                if name in other:
                    raise ConfigError(f"grid.pairs: {pair!r} uses '{name}' as a {role}, but it is a "
                                      f"{'style' if role == 'subject' else 'subject'}; pairs are [subject, style].")
                raise ConfigError(f"grid.pairs: {pair!r} names an unknown {role} '{name}'; the {role}s are "
                                  f"{sorted(group)} (grid.{role}s).")
            out.append((s, t))
        return list(dict.fromkeys(out))

    def key(self) -> str:
        """Names the grid's summary datasets: the pair set, so adding a pair makes new (missing) outputs."""
        pairs = self.pair_list()
        digest = hashlib.sha1(repr(sorted(pairs)).encode()).hexdigest()[:8]
        return f"{len({s for s, _ in pairs})}x{len({t for _, t in pairs})}_{digest}"


def pair_name(subject: str, style: str) -> str:
    return f"{subject}{PAIR_SEPARATOR}{style}"


def concept_template(kind: str, c: ConceptConfig) -> str:
    """The concept's DreamBooth prompt template (the one-pair job's defaults unless the concept sets one)."""
    return c.template or ("a {token} {noun}" if kind == "subject" else "a {noun} in {token} style")


def pair_prompts(cfg: GridConfig, subject: ConceptConfig, style: ConceptConfig) -> list[str]:
    """The generation prompts of one pair: "{subject}" is "<token> <noun>", "{style}" the style's token."""
    return [p.format(subject=f"{subject.token} {subject.noun}", style=style.token) for p in cfg.prompts]

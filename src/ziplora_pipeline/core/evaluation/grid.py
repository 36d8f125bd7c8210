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

from ..config_utils import ConfigError, require

KINDS = ("subject", "style")
CLAIM_GROUPS = ("merge", "subject", "style", "recontext")  # the one-pair job's prompt groups (generation.prompts)
DEFAULT_PROMPTS = {"merge": ["a {subject} in {style} style"], "subject": ["a {subject}"],
                   "style": ["a {object} in {style} style"],
                   "recontext": ["a {subject} wearing a hat in {style} style",
                                 "a {subject} next to a tree in {style} style"]}
# which groups each method of a pair is generated on: the references only where claim (b) divides by them, the
# weaker style strengths only where claim (d) reads them
REFERENCE_GROUPS = {"subject_lora": ("subject",), "style_lora": ("style",)}
REFERENCES = {"subject_lora": {"kind": "lora", "source": "subject"}, "style_lora": {"kind": "lora", "source": "style"}}
CLAIMED = ("ziplora", "direct_merge")  # the grid's claims are ZipLoRA − direct merge, paired by pair
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
    # The paper's claims' prompt groups (core/evaluation/claims.py): {subject} = "<token> <noun>", {style} = the style's token,
    # {object} = an object the style image never showed (the first of unseen_objects that is neither the style's
    # noun nor the subject's).
    prompts: dict = field(default_factory=lambda: dict(DEFAULT_PROMPTS))
    unseen_objects: tuple[str, ...] = ("cat", "house", "tree")
    methods: tuple[str, ...] = CLAIMED  # entries of merge.methods generated and judged for every pair
    style_strengths: tuple[float, ...] = (0.7, 0.4)  # claim (d): ZipLoRA re-exported at these style strengths
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
        require(len(self.seeds) > 0, "grid.seeds must not be empty.")
        require(isinstance(self.prompts, dict) and set(self.prompts) <= set(CLAIM_GROUPS)
                and all(self.prompts.get(g) for g in ("merge",)),
                f"grid.prompts must map prompt groups {list(CLAIM_GROUPS)} to lists of prompts, 'merge' not empty; "
                f"got {self.prompts!r}.")
        for group, prompts in self.prompts.items():
            require(isinstance(prompts, (list, tuple)), f"grid.prompts.{group} must be a list of prompts.")
            for p in prompts:
                try:
                    p.format(subject="s", style="t", object="o")
                except (KeyError, IndexError) as err:
                    raise ConfigError(f"grid.prompts.{group}: {p!r} may only use {{subject}}, {{style}} and "
                                      f"{{object}} ({err}).") from err
        require(all(m in self.methods for m in CLAIMED) and len(set(self.methods)) == len(self.methods),
                f"grid.methods must list {list(CLAIMED)} (the grid's claims compare them) and may add other entries "
                f"of merge.methods, each once; got {list(self.methods)}.")
        clash = sorted(set(self.methods) & (set(REFERENCES) | {strength_name(s) for s in self.style_strengths}))
        require(not clash, f"grid.methods {clash}: these names are the grid's own references or strength variants.")
        require(all(0 < s < 1 for s in self.style_strengths),
                f"grid.style_strengths must lie in (0, 1) (1.0 is the ZipLoRA itself), got {list(self.style_strengths)}.")
        require(self.resolution % 8 == 0 and self.num_inference_steps > 0, "grid.resolution must be a multiple of 8.")

    def concepts(self) -> dict[str, tuple[str, ConceptConfig]]:
        """{name: (kind, config)} for every subject and style."""
        from ..config_utils import from_dict

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


def pair_concepts(pair: str) -> tuple[str, str]:
    """``pair_name``'s inverse: "robot_x_sketch" -> ("robot", "sketch") (concept names never hold the separator)."""
    subject, style = pair.split(PAIR_SEPARATOR, 1)
    return subject, style


def concept_template(kind: str, c: ConceptConfig) -> str:
    """The concept's DreamBooth prompt template (the one-pair job's defaults unless the concept sets one)."""
    return c.template or ("a {token} {noun}" if kind == "subject" else "a {noun} in {token} style")


def unseen_object(cfg: GridConfig, subject: ConceptConfig, style: ConceptConfig) -> str:
    """The object of the pair's style-alone prompt: one the style image never showed (nor the subject is)."""
    for obj in cfg.unseen_objects:
        if obj not in (style.noun, subject.noun):
            return obj
    raise ConfigError(f"grid.unseen_objects {list(cfg.unseen_objects)} has no object other than the style's noun "
                      f"'{style.noun}' and the subject's '{subject.noun}'; add one.")


def pair_prompts(cfg: GridConfig, subject: ConceptConfig, style: ConceptConfig) -> list[tuple[str, int, str]]:
    """The generation prompts of one pair as (group, index, prompt): "{subject}" is "<token> <noun>", "{style}"
    the style's token, "{object}" the pair's unseen object."""
    obj = unseen_object(cfg, subject, style)
    return [(group, i, p.format(subject=f"{subject.token} {subject.noun}", style=style.token, object=obj))
            for group in CLAIM_GROUPS for i, p in enumerate(cfg.prompts.get(group) or [])]


def strength_name(scale: float) -> str:
    """The method name of ZipLoRA at style strength ``scale`` (the one-pair job's: ziplora_style0p7)."""
    return f"ziplora_style{scale:g}".replace(".", "p")


def pair_methods(cfg: GridConfig) -> dict[str, tuple[str, ...]]:
    """{method: the prompt groups it is generated on} for every pair."""
    groups = tuple(g for g in CLAIM_GROUPS if cfg.prompts.get(g))
    out = {m: groups for m in cfg.methods}
    out |= {m: tuple(g for g in gs if g in groups) for m, gs in REFERENCE_GROUPS.items()}
    out |= {strength_name(s): tuple(g for g in ("merge", "recontext") if g in groups) for s in cfg.style_strengths}
    return {m: gs for m, gs in out.items() if gs}


def pair_method_entries(cfg: GridConfig, methods: dict[str, dict]) -> dict[str, dict]:
    """The ``merge.methods``-style entries every pair builds (``pair_methods`` says on which groups each is
    generated): ``grid.methods`` as ``merge.methods`` defines them, the subject and style LoRAs (claim (b)'s
    references) and ZipLoRA re-exported at each of ``grid.style_strengths`` (claim (d))."""
    unknown = [m for m in cfg.methods if m not in (methods or {})]
    if unknown:
        raise ConfigError(f"grid.methods {unknown} are not entries of merge.methods {sorted(methods or {})}; "
                          "add them there (conf/base/parameters_merge.yml) or drop them from grid.methods.")
    out = {m: {**(methods[m] or {}), "enabled": True} for m in cfg.methods}
    out |= {m: dict(e) for m, e in REFERENCES.items()}
    out |= {strength_name(s): {"kind": "ziplora", "style_scale": s} for s in cfg.style_strengths}
    return out


def generate_methods(pipe, methods: dict, groups: dict[str, tuple[str, ...]], assets, items: list, gen,
                     log_name: str = "") -> dict:
    """``{<method>__<group><i>__seed<s>: image}``: each method (a ``MergeMethod``) applied in turn, generating the
    prompt items (``generation.PromptItem``) of its ``groups`` with the generation stage's loop (same batches and
    seeded noise for every method); ``assets`` is the methods' ``MethodAssets``."""
    # imported here, as in the function below: GridConfig is read when the pipelines are registered (every
    # `kedro` command), which should not import torch and diffusers
    import logging
    import time

    from .generation import generate

    images = {}
    for method, m in methods.items():
        t0 = time.perf_counter()
        with m.applied(pipe, assets):
            out = generate(pipe, [it for it in items if it.group in groups[method]], gen)
        images.update({f"{method}__{item.key}__seed{seed}": img for item, seed, img in out})
        logging.getLogger(__name__).info("%s: %d images with %s in %.1f s", log_name, len(out), method,
                                         time.perf_counter() - t0)
    return images


def judge_method(encoders, images: dict, method: str, groups: tuple[str, ...], prompts: list[tuple[str, int, str]],
                 seeds, subject_refs: list, style_refs: list, tokens: tuple[str, ...],
                 style_prompt: str) -> tuple[dict, dict | None]:
    """One method's images of a pair, judged: ``({group: summarise_axes}, summarise_axes of the merge and
    recontext groups together or None)``; ``prompts`` as ``pair_prompts`` gives them."""
    from .claims import summarise_axes
    from .image_metrics import image_scores

    items = [(f"{method}__{g}{i}__seed{seed}", g, p, seed) for g, i, p in prompts if g in groups for seed in seeds]
    scores = image_scores(encoders, [images[n] for n, *_ in items], [p for _, _, p, _ in items], subject_refs,
                          style_refs, tokens, style_prompt)

    def subset(keep):
        idx = [k for k, (_, g, _, _) in enumerate(items) if g in keep]
        return summarise_axes({a: (None if v is None else [v[k] for k in idx]) for a, v in scores.items()},
                              [items[k][3] for k in idx])

    both = {"merge", "recontext"} & set(groups)
    return {g: subset((g,)) for g in groups}, (subset(both) if both else None)

"""The compared methods on the miniature model: PEFT merges, K-LoRA, output fidelity, generation (the methods and
the ``trained`` fixture: conftest.py; what every method must do: test_method_contract.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.core.merging.conftest import STYLE_PROMPT, SUBJECT_PROMPT
from tests.helpers import RESOLUTION, default_methods
from ziplora_pipeline.core.config_utils import ConfigError
from ziplora_pipeline.core.diffusion.base_model import load_base_pipeline
from ziplora_pipeline.core.evaluation.fidelity import fidelity_table, make_probe, output_fidelity, predict
from ziplora_pipeline.core.evaluation.generation import GenerationConfig, generate, image_name
from ziplora_pipeline.core.lora.factors import LoraFactors
from ziplora_pipeline.core.merging.k_lora import KLoRA, KLoraConfig, choose, magnitude_ratio
from ziplora_pipeline.core.merging.method import lora_applied
from ziplora_pipeline.core.merging.registry import parse_method, parse_methods
from ziplora_pipeline.datasets.lora_safetensors import LoraSafetensorsDataset

# ---- PEFT merges ------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["peft_cat", "peft_ties_svd", "peft_dare_ties_svd", "peft_svd"])
def test_each_peft_merge_is_a_lora_plain_diffusers_loads(tmp_path, base_cfg, trained, unet_probe, method):
    lora = trained["assets"].files[method]
    path = tmp_path / f"{method}.safetensors"
    LoraSafetensorsDataset(filepath=str(path)).save(lora)
    pipe = load_base_pipeline(base_cfg)
    base = unet_probe(pipe.unet)
    pipe.load_lora_weights(str(path), adapter_name=method)
    pipe.set_adapters([method])
    out = unet_probe(pipe.unet)
    assert torch.isfinite(out).all() and (out - base).abs().max() > 1e-4
    cost = trained["costs"][method]
    assert cost["merge_seconds"] > 0 and cost["file_mb"] > 0


def test_peft_cat_is_exactly_the_direct_merge(base_cfg, trained, unet_probe):
    """cat concatenates the factors: ΔW_c + ΔW_s, as the direct merge (atol 1e-5)."""
    outs = []
    for name in ("peft_cat", "direct_merge"):
        pipe = load_base_pipeline(base_cfg)
        with lora_applied(pipe, name, trained["assets"].files[name]):
            outs.append(unet_probe(pipe.unet))
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=0)


# ---- K-LoRA -----------------------------------------------------------------------------------

def test_klora_picks_the_lora_with_the_larger_topk_sum():
    """Hand-made ΔW: few large entries beat many small ones (top-k), and time shifts the balance."""
    big_few = torch.zeros(8, 8)
    big_few[0, :4] = 1.0  # top-4 sum 4
    small_many = torch.full((8, 8), 0.6)  # top-4 sum 2.4, total sum 38.4 (a plain sum would pick it)
    cfg = KLoraConfig(top_k=4)  # style scale α τ + β = 1.5 τ + 0.5: 1 at τ = 1/3
    assert choose(big_few, small_many, progress=1 / 3, cfg=cfg) == "subject"  # 4 > 2.4: top-k, not the total
    assert choose(small_many, big_few, progress=1 / 3, cfg=cfg) == "style"  # 2.4 < 4
    assert choose(small_many, big_few, progress=0.0, cfg=cfg) == "subject"  # 2.4 > 4 · 0.5: early steps favour it
    assert choose(big_few, small_many, progress=1.0, cfg=cfg) == "style"  # 4 < 2.4 · 2.0: late steps favour it
    assert choose(big_few * 2, small_many, progress=1.0, cfg=cfg) == "subject"  # 8 > 4.8
    # Equal deltas: the subject early (scale 0.5), the style late (scale 2.0) — K-LoRA's time schedule.
    assert choose(big_few, big_few, 0.0, cfg) == "subject" and choose(big_few, big_few, 1.0, cfg) == "style"
    # γ divides the subject's score: a subject LoRA 4x stronger overall is not favoured for its size alone.
    assert choose(big_few * 4, big_few, 0.0, cfg, gamma=4.0) == "subject"
    assert choose(big_few * 4, big_few, 0.5, cfg, gamma=4.0) == "style"


def test_klora_magnitude_ratio_is_the_mean_layer_ratio():
    f = lambda v: LoraFactors(torch.full((1, 2), v), torch.ones(2, 1), 1.0)  # noqa: E731
    assert magnitude_ratio({"a": f(2.0), "b": f(4.0)}, {"a": f(1.0), "b": f(1.0)}) == pytest.approx(3.0)


@pytest.mark.parametrize(("beta", "expected"), [(1e-6, "subject"), (1e6, "style")])
def test_klora_on_the_unet_equals_the_lora_it_selects(base_cfg, trained, unet_probe, beta, expected):
    """β tiny: every layer picks the subject at every step, so the UNet equals the subject LoRA's; β huge: style."""
    cfg = KLoraConfig(alpha=0.0, beta=beta, gamma=1.0)
    pipe = load_base_pipeline(base_cfg)
    with KLoRA(trained["factors"]["subject"], trained["factors"]["style"], cfg).attach(pipe.unet):
        got = unet_probe(pipe.unet)
    assert not any(type(m).__name__ == "KLoRALinear" for m in pipe.unet.modules())  # detached
    ref = load_base_pipeline(base_cfg)
    with lora_applied(ref, expected, trained["files"][expected]):
        torch.testing.assert_close(got, unet_probe(ref.unet), atol=1e-5, rtol=0)


def test_klora_rule_picks_per_layer_and_time_from_topk_scores():
    """S_c / γ > S_s (α τ + β) on layers with known top-1 scores: always subject, subject then style, always style."""
    f = lambda v: LoraFactors(torch.full((1, 2), v), torch.ones(2, 1), 1.0)  # noqa: E731  ΔW entries all = v
    subject = {"x": f(3.0), "y": f(1.5), "z": f(0.4)}
    style = {"x": f(1.0), "y": f(1.0), "z": f(1.0)}
    klora = KLoRA(subject, style, KLoraConfig(top_k=1, alpha=1.5, beta=0.5, gamma=1.0))
    # y: 1.5 > 1.5 τ + 0.5  <=>  τ < 2/3
    assert klora.choices(0.0) == {"x": "subject", "y": "subject", "z": "style"}
    assert klora.choices(0.6) == {"x": "subject", "y": "subject", "z": "style"}
    assert klora.choices(0.7) == {"x": "subject", "y": "style", "z": "style"}
    assert klora.choices(1.0) == {"x": "subject", "y": "style", "z": "style"}


def test_klora_selects_per_sample_in_a_batch_of_mixed_timesteps(base_cfg, trained):
    """One batch with an early (t=999) and a late (t=0) sample equals the two samples run alone: the choice is made
    per sample from its own timestep, and γ is set so that layers do switch between the two."""
    sub, sty = trained["factors"]["subject"], trained["factors"]["style"]
    scores = KLoRA(sub, sty, KLoraConfig(gamma=1.0)).scores  # {layer: (S_c, S_s)}
    ratios = sorted(c / s for c, s in scores.values())
    cfg = KLoraConfig(gamma=ratios[len(ratios) // 2] / (1.5 * 0.5 + 0.5))  # the median layer flips at τ = 0.5
    klora = KLoRA(sub, sty, cfg)
    early, late = klora.choices(0.001), klora.choices(1.0)
    switched = [p for p in early if early[p] != late[p]]
    assert switched and all(early[p] == "subject" and late[p] == "style" for p in switched)

    g = torch.Generator().manual_seed(7)
    size = RESOLUTION // 8
    sample, hidden = torch.randn(2, 4, size, size, generator=g), torch.randn(2, 77, 64, generator=g)
    pooled, time_ids = torch.randn(2, 32, generator=g), torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)
    t = torch.tensor([999, 0])
    pipe = load_base_pipeline(base_cfg)

    @torch.no_grad()
    def run(i):
        return pipe.unet(sample[i], t[i], encoder_hidden_states=hidden[i],
                         added_cond_kwargs={"text_embeds": pooled[i], "time_ids": time_ids[i]}, return_dict=False)[0]

    with klora.attach(pipe.unet):
        both, first, second = run(slice(0, 2)), run(slice(0, 1)), run(slice(1, 2))
    torch.testing.assert_close(both[:1], first, atol=1e-5, rtol=0)
    torch.testing.assert_close(both[1:], second, atol=1e-5, rtol=0)


# ---- output fidelity --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def probes(base_cfg, subject_images, style_images):
    pipe = load_base_pipeline(base_cfg)
    return {"subject": make_probe(pipe, subject_images, SUBJECT_PROMPT, 4, 0),
            "style": make_probe(pipe, style_images, STYLE_PROMPT, 4, 0)}


def test_output_fidelity_is_one_for_the_lora_and_zero_for_the_base(base_cfg, trained, probes):
    specs = {n: trained["specs"][n] for n in ("base", "subject_lora", "style_lora", "direct_merge", "ziplora", "k_lora")}
    table = fidelity_table(load_base_pipeline(base_cfg), specs, trained["assets"], probes, batch_size=4)
    assert table["subject_lora"]["subject_fidelity"] == pytest.approx(1.0, abs=1e-6)
    assert table["style_lora"]["style_fidelity"] == pytest.approx(1.0, abs=1e-6)
    assert table["base"]["subject_fidelity"] == pytest.approx(0.0, abs=1e-6)
    assert table["base"]["style_fidelity"] == pytest.approx(0.0, abs=1e-6)
    assert all(np.isfinite(v) for row in table.values() for v in row.values())


def test_output_fidelity_formula():
    lora, base = torch.ones(2, 4), torch.zeros(2, 4)
    assert output_fidelity(lora, lora, base) == 1.0
    assert output_fidelity(base, lora, base) == 0.0
    assert output_fidelity(0.5 * lora, lora, base) == pytest.approx(0.5)
    assert output_fidelity(-lora, lora, base) == pytest.approx(-1.0)  # not clipped
    with pytest.raises(ValueError, match="does not change"):
        output_fidelity(lora, lora, lora)


def test_probe_is_fixed_by_its_seed(base_cfg, subject_images):
    pipe = load_base_pipeline(base_cfg)
    a, b = (make_probe(pipe, subject_images, SUBJECT_PROMPT, 3, 7) for _ in range(2))
    assert torch.equal(a.noisy, b.noisy) and torch.equal(a.timesteps, b.timesteps)
    assert torch.equal(predict(pipe.unet, a), predict(pipe.unet, b))


# ---- generation -------------------------------------------------------------------------------

def test_generation_is_bit_identical_for_the_same_seed(base_cfg, trained):
    cfg = GenerationConfig(seeds=(3,), num_inference_steps=2, batch_size=4)
    items = cfg.prompt_items()[:2]
    runs = []
    for _ in range(2):
        pipe = load_base_pipeline(base_cfg)
        with trained["specs"]["k_lora"].applied(pipe, trained["assets"]):
            runs.append(generate(pipe, items, cfg))
    for (item_a, seed_a, img_a), (item_b, seed_b, img_b) in zip(*runs):
        assert (item_a, seed_a) == (item_b, seed_b)
        assert np.array_equal(np.asarray(img_a), np.asarray(img_b))
    assert runs[0][0][2].size == (RESOLUTION, RESOLUTION)
    assert image_name("k_lora", items[0], 3) == "k_lora__subject0__seed3"


def test_every_default_method_applies_and_restores_the_unet(base_cfg, trained, unet_probe):
    pipe = load_base_pipeline(base_cfg)
    before = unet_probe(pipe.unet)
    for name, spec in trained["specs"].items():
        with spec.applied(pipe, trained["assets"]):
            out = unet_probe(pipe.unet)
        assert torch.isfinite(out).all(), name
        if name != "base":
            assert (out - before).abs().max() > 1e-5, f"{name} changed nothing"
        torch.testing.assert_close(unet_probe(pipe.unet), before, atol=0, rtol=0)
    assert set(trained["specs"]) == {n for n, e in default_methods().items() if (e or {}).get("enabled", True)}


# ---- bad input --------------------------------------------------------------------------------

def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"Unknown method kind 'zipora'.*Did you mean 'ziplora'.*'peft'"):
        parse_method("zipora", {})
    with pytest.raises(ConfigError, match=r"Unknown parameter 'merge.methods.mine.styel_scale'. Did you mean 'merge.methods.mine.style_scale'"):
        parse_method("mine", {"kind": "ziplora", "styel_scale": 0.5})
    with pytest.raises(ConfigError, match="combination_type 'tie' is not one of"):
        parse_method("mine", {"kind": "peft", "combination_type": "tie"})
    with pytest.raises(ConfigError, match="needs density"):
        parse_method("mine", {"kind": "peft", "combination_type": "ties"})
    with pytest.raises(ConfigError, match="every method is switched off"):
        parse_methods({"base": {"enabled": False}})


def test_empty_prompt_group_is_named():
    from ziplora_pipeline.core.config_utils import from_dict

    with pytest.raises(ConfigError, match="generation.prompts.recontext is empty"):
        from_dict(GenerationConfig, {"prompts": {"recontext": []}}, "generation")

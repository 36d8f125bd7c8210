"""ZipLoRA on the miniature SDXL: the loop, the exported files in plain diffusers, bad inputs."""

from __future__ import annotations

import logging
import re

import pytest
import torch
from PIL import Image

from tests.helpers import RESOLUTION, to_sgm
from ziplora_pipeline.core.diffusion.base_model import load_base_pipeline
from ziplora_pipeline.core.diffusion.sdxl import encode_concept, training_scheduler
from ziplora_pipeline.core.images import square_resize
from ziplora_pipeline.core.lora.factors import LoraFactors, check_against_unet, unet_lora_factors
from ziplora_pipeline.core.lora.io import LoraFile, LoraFormatError
from ziplora_pipeline.core.lora.training import LoraTrainingConfig, train_lora
from ziplora_pipeline.core.merging.export import factors_to_lora_file, merged_factors, to_kohya
from ziplora_pipeline.core.merging.optimise import MergeConfig, build_teacher_pool, pool_terms, ziplora_merge
from ziplora_pipeline.core.merging.ziplora_layer import (attach_ziplora, detach_ziplora, load_merger_state_dict,
                                                         set_mergers)
from ziplora_pipeline.datasets.lora_safetensors import LoraSafetensorsDataset


@pytest.fixture(scope="module")
def concepts(base_cfg, subject_images, sample_raw):
    """Two LoRAs trained on the miniature model (ranks differ: 8 with alpha 4, and 4) plus inputs."""
    style_images = [square_resize(Image.open(p).convert("RGB"), RESOLUTION)
                    for p in sorted((sample_raw / "styles" / "sketch").glob("*.png"))]
    out = {"inputs": {}, "files": {}}
    for name, images, prompt, cfg in [
        ("subject", subject_images, "a photo of sks robot", LoraTrainingConfig(rank=8, alpha=4, steps=30, seed=0)),
        ("style", style_images, "a house in zwx style", LoraTrainingConfig(rank=4, steps=30, seed=1)),
    ]:
        pipe = load_base_pipeline(base_cfg)
        out["inputs"][name] = encode_concept(pipe, images, prompt)
        out["files"][name] = train_lora(pipe, out["inputs"][name], cfg, name).lora
    out["factors"] = {n: unet_lora_factors(f, n) for n, f in out["files"].items()}
    return out


@pytest.fixture(scope="module")
def merged(base_cfg, concepts):
    pipe = load_base_pipeline(base_cfg)
    return ziplora_merge(pipe.unet, concepts["factors"], concepts["inputs"], MergeConfig(steps=100),
                         training_scheduler(pipe), progress=False)


def test_loop_lowers_both_reconstructions_and_merger_overlap(merged):
    """At the paper's lr 0.01 and λ 0.01 (default overlap form: cosine; default fresh draws, so these figures
    are on the held-out draws)."""
    first, last = merged.initial, merged.final
    assert last["recon_subject"] < first["recon_subject"]
    assert last["recon_style"] < first["recon_style"]
    assert first["mean_abs_cos"] == pytest.approx(1.0)
    assert last["mean_abs_cos"] < 0.9
    assert len(merged.history["loss"]) == 100


def test_learned_mergers_beat_the_direct_merge_on_held_out_draws(base_cfg, concepts, merged):
    """16 (image, noise, t) draws per concept from a seed that neither the merge's steps nor its own held-out
    figures used: both reconstructions must beat the direct merge (mergers all ones)."""
    pipe = load_base_pipeline(base_cfg)
    cfg, names = MergeConfig(teacher_pool=16), ["subject", "style"]
    wrappers = attach_ziplora(pipe.unet, concepts["factors"])
    g = torch.Generator().manual_seed(999)  # the merge drew its pool from seed 0
    pools = [build_teacher_pool(pipe.unet, wrappers, training_scheduler(pipe), n, concepts["inputs"][n], cfg, g)
             for n in names]
    direct = pool_terms(pipe.unet, wrappers, pools, names, cfg)  # mergers start at ones: the direct merge
    load_merger_state_dict(wrappers, merged.mergers)
    zipped = pool_terms(pipe.unet, wrappers, pools, names, cfg)
    detach_ziplora(pipe.unet, wrappers)
    assert direct["mean_abs_cos"] == pytest.approx(1.0) and zipped["mean_abs_cos"] < 0.9
    assert zipped["recon_subject"] < direct["recon_subject"], (zipped, direct)
    assert zipped["recon_style"] < direct["recon_style"], (zipped, direct)


def test_gradient_checkpointing_gives_the_same_mergers_and_is_restored(base_cfg, concepts):
    """merge.gradient_checkpointing only trades compute for memory: 5 steps with it on give the same mergers as
    without (recomputed activations are bit-for-bit the same forward), and the UNet's own setting comes back."""
    pipe = load_base_pipeline(base_cfg)
    runs, seen = {}, {}
    for on in (False, True):
        seen[on] = []
        runs[on] = ziplora_merge(pipe.unet, concepts["factors"], concepts["inputs"],
                                 MergeConfig(steps=5, gradient_checkpointing=on), training_scheduler(pipe),
                                 on_step=lambda s, **k: seen[on].append(pipe.unet.is_gradient_checkpointing),
                                 progress=False)
        assert seen[on] == [on] * 5
        assert not pipe.unet.is_gradient_checkpointing
    assert runs[True].mergers.keys() == runs[False].mergers.keys()
    for k, v in runs[False].mergers.items():
        torch.testing.assert_close(runs[True].mergers[k], v, rtol=1e-5, atol=1e-6)
    assert runs[True].history["loss"] != runs[False].history["loss"][:1] * 5  # the mergers moved
    pipe.unet.enable_gradient_checkpointing()  # a LoRA training left it on: the merge must not switch it off
    ziplora_merge(pipe.unet, concepts["factors"], concepts["inputs"], MergeConfig(steps=1), training_scheduler(pipe),
                  progress=False)
    assert pipe.unet.is_gradient_checkpointing


def test_fresh_draws_and_held_out_figures(base_cfg, concepts, merged):
    """teacher_pool: null (the default) draws a new batch every step, so its before/after figures are the
    held-out ones; a fixed pool reports held-out figures (another seed) that differ from its pool's own."""
    assert merged.initial == merged.heldout_initial and merged.final == merged.heldout_final
    pipe = load_base_pipeline(base_cfg)
    fixed = ziplora_merge(pipe.unet, concepts["factors"], concepts["inputs"], MergeConfig(steps=5, teacher_pool=16),
                          training_scheduler(pipe), progress=False)
    assert fixed.heldout_initial.keys() == fixed.initial.keys()
    assert fixed.heldout_initial["recon_subject"] != pytest.approx(fixed.initial["recon_subject"], rel=1e-3)
    calls = []
    import ziplora_pipeline.core.merging.optimise as M

    real = M.build_teacher_pool
    try:
        M.build_teacher_pool = lambda *a, **k: calls.append(a[3]) or real(*a, **k)
        fresh = ziplora_merge(pipe.unet, concepts["factors"], concepts["inputs"], MergeConfig(steps=4, teacher_pool=None),
                              training_scheduler(pipe), progress=False)
    finally:
        M.build_teacher_pool = real
    assert calls == ["subject", "style"] * 5  # the held-out draws, then one fresh draw per concept per step
    assert len(fresh.history["loss"]) == 4 and fresh.final["recon_subject"] != fresh.initial["recon_subject"]


def test_bf16_merge_runs_on_cpu_and_fp16_is_refused_off_cuda(base_cfg, concepts):
    """bf16 autocast works on any device and keeps fp32 mergers, close to the fp32 merge after 5 steps; fp16 has no
    loss scaling off CUDA, so it is refused with a message that says what to use."""
    pipe = load_base_pipeline(base_cfg)
    args = (pipe.unet, concepts["factors"], concepts["inputs"])
    fp32 = ziplora_merge(*args, MergeConfig(steps=5), training_scheduler(pipe), progress=False)
    bf16 = ziplora_merge(*args, MergeConfig(steps=5, mixed_precision="bf16"), training_scheduler(pipe), progress=False)
    assert all(m.dtype == torch.float32 for m in bf16.mergers.values())
    assert bf16.final["recon_style"] == pytest.approx(fp32.final["recon_style"], rel=0.05)
    assert bf16.history["loss"] != fp32.history["loss"]  # autocast was on
    with pytest.raises(ValueError, match="fp16 needs a CUDA device.*use bf16"):
        ziplora_merge(*args, MergeConfig(steps=1, mixed_precision="fp16"), training_scheduler(pipe), progress=False)


def test_teacher_pool_rejects_the_old_sentinel_and_a_size_of_zero():
    for bad in ("fresh", 0):
        with pytest.raises(ValueError, match=r"teacher_pool must be a number of draws > 0 or null"):
            MergeConfig(teacher_pool=bad)


def test_merger_file_keys_are_unet_module_paths(base_cfg, merged, concepts):
    modules = dict(load_base_pipeline(base_cfg).unet.named_modules())
    for key, m in merged.mergers.items():
        path, adapter = key.rsplit(".", 1)
        assert adapter in ("subject", "style") and isinstance(modules[path], torch.nn.Linear)
        assert m.shape == (modules[path].in_features,)
    assert "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.subject" in merged.mergers


def test_one_hot_mergers_reproduce_each_lora(base_cfg, concepts, unet_probe):
    """Mergers (1, 0) = the subject LoRA loaded by diffusers; (0, 1) = the style LoRA (atol 1e-6)."""
    zip_pipe = load_base_pipeline(base_cfg)
    wrappers = attach_ziplora(zip_pipe.unet, concepts["factors"])
    for name in ("subject", "style"):
        ref = load_base_pipeline(base_cfg)
        from ziplora_pipeline.core.lora.io import load_lora_file

        load_lora_file(ref, concepts["files"][name], name)
        with set_mergers(wrappers, {name: 1.0}):
            torch.testing.assert_close(unet_probe(zip_pipe.unet), unet_probe(ref.unet), atol=1e-6, rtol=0)
    detach_ziplora(zip_pipe.unet, wrappers)


@pytest.mark.parametrize("kohya", [False, True])
def test_exported_lora_loads_in_plain_diffusers_and_matches(tmp_path, base_cfg, concepts, merged, unet_probe, kohya):
    """The rank-(r_c + r_s) file, loaded with load_lora_weights into a fresh pipeline, reproduces the
    merged UNet (learned mergers, style strength 0.7) to atol 1e-5."""
    strengths = {"subject": 1.0, "style": 0.7}
    lora = factors_to_lora_file(merged_factors(concepts["factors"], merged.mergers, strengths))
    if kohya:
        lora = to_kohya(lora)
        assert any(k.startswith("lora_unet_") and k.endswith(".lora_down.weight") for k in lora.state_dict)
    path = tmp_path / "merged.safetensors"
    LoraSafetensorsDataset(filepath=str(path)).save(lora)

    zip_pipe = load_base_pipeline(base_cfg)
    scaled = {n: {p: type(f)(f.A, f.B, f.scale * strengths[n]) for p, f in fs.items()}
              for n, fs in concepts["factors"].items()}
    wrappers = attach_ziplora(zip_pipe.unet, scaled)
    load_merger_state_dict(wrappers, merged.mergers)
    expected = unet_probe(zip_pipe.unet)

    plain = load_base_pipeline(base_cfg)
    plain.load_lora_weights(str(path), adapter_name="ziplora")
    got = unet_probe(plain.unet)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    assert (got - unet_probe(load_base_pipeline(base_cfg).unet)).abs().max() > 1e-3  # the LoRA does something
    ranks = {f.rank for f in unet_lora_factors(lora, "merged").values()}
    assert ranks == {12}  # 8 + 4


def test_kohya_input_parses_to_the_same_factors(concepts):
    lora = factors_to_lora_file(concepts["factors"]["subject"])  # scale folded, alpha = rank
    a = unet_lora_factors(lora, "diffusers")
    b = unet_lora_factors(to_kohya(lora), "kohya")
    assert set(a) == set(b)
    for p in a:
        torch.testing.assert_close(a[p].delta(), b[p].delta(), atol=1e-7, rtol=0)


def test_kohya_sgm_names_parse_to_the_same_layers_with_the_unet_config(base_cfg, concepts):
    """Kohya SDXL files name blocks the SGM way; with the UNet's config they parse to the same module paths and
    ΔW as the diffusers file (before: wrong paths, then refused as another model family); without it, a clear error."""
    from ziplora_pipeline.core.diffusion.base_model import base_unet_config

    lora = factors_to_lora_file(concepts["factors"]["style"])
    config = base_unet_config(base_cfg)
    sgm = to_sgm(to_kohya(lora), config.layers_per_block)
    assert any("input_blocks" in k for k in sgm.state_dict) and any("output_blocks" in k for k in sgm.state_dict)
    a, b = unet_lora_factors(lora, "diffusers"), unet_lora_factors(sgm, "sgm", config)
    assert set(a) == set(b)
    for p in a:
        torch.testing.assert_close(a[p].delta(), b[p].delta(), atol=1e-7, rtol=0)
    with pytest.raises(LoraFormatError, match="SGM block names.*unet_config"):
        unet_lora_factors(sgm, "sgm")
    # community LoRAs also adapt feed-forward and proj_in/proj_out Linear layers: same paths in every format
    unet = load_base_pipeline(base_cfg).unet
    g = torch.Generator().manual_seed(0)
    wide = factors_to_lora_file({n: LoraFactors(torch.randn(2, m.in_features, generator=g),
                                                torch.randn(m.out_features, 2, generator=g), 1.0)
                                 for n, m in unet.named_modules() if n.endswith(("ff.net.0.proj", "ff.net.2", "proj_in",
                                                                                 "proj_out", "attn2.to_k"))})
    peft, sgm = unet_lora_factors(wide, "peft"), unet_lora_factors(to_sgm(to_kohya(wide), config.layers_per_block),
                                                                   "sgm", config)
    assert set(peft) == set(sgm) and any(p.endswith("ff.net.2") for p in peft) and any("proj_in" in p for p in peft)
    for p in peft:
        torch.testing.assert_close(peft[p].delta(), sgm[p].delta(), atol=1e-6, rtol=1e-6)
    check_against_unet(unet, {"wide": sgm})


def test_a_3x3_convolution_layer_is_refused_by_name(base_cfg, concepts):
    """LoCon layers (3×3 convolutions) are never dropped silently: the error names the layer and says why, both
    for a file whose kernels say so and for factors aimed at such a layer."""
    unet = load_base_pipeline(base_cfg).unet
    conv = next(n for n, m in unet.named_modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
                and "resnets" in n)
    factors = dict(concepts["factors"]["style"])
    factors[conv] = LoraFactors(torch.zeros(2, 8), torch.zeros(8, 2), 1.0)
    with pytest.raises(LoraFormatError, match=rf"{re.escape(conv)}, a 3×3 convolution.*1×1 convolutions"):
        check_against_unet(unet, {"style": factors})
    kohya = dict(to_kohya(concepts["files"]["style"]).state_dict)
    name = "lora_unet_" + conv.replace(".", "_")
    kohya |= {f"{name}.lora_down.weight": torch.zeros(2, 32, 3, 3), f"{name}.lora_up.weight": torch.zeros(32, 2, 1, 1),
              f"{name}.alpha": torch.tensor(2.0)}
    with pytest.raises(LoraFormatError, match="3×3 convolution kernel.*LoCon"):
        unet_lora_factors(LoraFile(kohya), "style")


def _delta(layer, adapter: str) -> torch.Tensor:
    """A peft layer's ΔW for ``adapter`` as diffusers loaded it, (out, in) (a 1×1 conv's kernel flattened)."""
    d = layer.get_delta_weight(adapter)
    return d.reshape(d.shape[0], -1).float()


def test_foreign_files_with_text_encoder_and_1x1_conv_parts_merge_and_load_in_plain_diffusers(base_cfg, tmp_path):
    """Community LoRAs adapt 1×1 convolutions (resnet shortcuts) and the text encoders too. Each format (peft/diffusers
    file, kohya with diffusers-style names and alpha != rank, kohya with SGM names) parses to the same layers; a
    merge of two such files exported and loaded by plain ``load_lora_weights`` has, layer by layer, ΔW = Σ m_i ⊗ ΔW_i
    on the UNet (conv included, per input channel) and ΔW = Σ c_i ΔW_i on the text encoders (combined directly)."""
    from safetensors.torch import save_file

    from ziplora_pipeline.core.diffusion.base_model import base_unet_config
    from ziplora_pipeline.core.lora.factors import text_encoder_lora_factors
    from ziplora_pipeline.core.merging.export import combined_text_encoders, text_encoder_parts

    pipe = load_base_pipeline(base_cfg)
    config = base_unet_config(base_cfg)
    g = torch.Generator().manual_seed(0)
    rand = lambda out, inp, r=3: LoraFactors(torch.randn(r, inp, generator=g) * 0.2,  # noqa: E731
                                             torch.randn(out, r, generator=g) * 0.2, 1.0)
    unet_layers = {n: m for n, m in pipe.unet.named_modules() if n.endswith(("attn1.to_q", "conv_shortcut", "ff.net.2"))}
    convs = [n for n, m in unet_layers.items() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(unet_layers[c].kernel_size == (1, 1) for c in convs)

    def te_part(te):
        layers = {("text_model." + n if not n.startswith(("text_model", "text_projection")) else n): m
                  for n, m in te.named_modules() if n.endswith(("q_proj", "fc1", "text_projection"))}
        return {n: rand(m.out_features, m.in_features) for n, m in layers.items()}

    def lora(seed_shift: int):
        unet = {n: rand(m.weight.shape[0], m.weight.shape[1]) for n, m in unet_layers.items()}
        for c in convs:
            unet[c].conv = True
        tes = {"text_encoder": te_part(pipe.text_encoder), "text_encoder_2": te_part(pipe.text_encoder_2)}
        return unet, tes, factors_to_lora_file(unet, text_encoders=tes)

    (u_sub, te_sub, peft_file), (u_sty, te_sty, sty_file) = lora(0), lora(1)
    kohya = dict(to_kohya(sty_file).state_dict)
    assert any(k.startswith("lora_te2_") for k in kohya) and any(k.startswith("lora_te1_") for k in kohya)
    assert any(v.dim() == 4 for k, v in kohya.items() if "conv_shortcut" in k)
    for k in [k for k in kohya if k.endswith(".alpha")]:  # alpha = r/2 everywhere, B doubled: the same ΔW
        kohya[k] = kohya[k] / 2
        kohya[k.replace(".alpha", ".lora_up.weight")] = kohya[k.replace(".alpha", ".lora_up.weight")] * 2
    kohya = LoraFile(kohya)
    sgm = to_sgm(kohya, config.layers_per_block)
    for name, f in (("peft", peft_file), ("kohya", kohya), ("sgm", sgm)):
        want_u, want_te = (u_sub, te_sub) if name == "peft" else (u_sty, te_sty)
        got_u, got_te = unet_lora_factors(f, name, config), text_encoder_lora_factors(f, name)
        assert set(got_u) == set(want_u) and {p for p, x in got_u.items() if x.conv} == set(convs), name
        assert {te: set(p) for te, p in got_te.items()} == {te: set(p) for te, p in want_te.items()}, name
        for p in want_u:
            torch.testing.assert_close(got_u[p].delta(), want_u[p].delta(), atol=1e-6, rtol=1e-5, msg=f"{name} {p}")
        for te in want_te:
            for p in want_te[te]:
                torch.testing.assert_close(got_te[te][p].delta(), want_te[te][p].delta(), atol=1e-6, rtol=1e-5)

    # merge the peft file with the SGM kohya file: random mergers stand in for learned ones
    files = {"subject": peft_file, "style": sgm}
    loras = {"subject": unet_lora_factors(peft_file, "subject"), "style": unet_lora_factors(sgm, "style", config)}
    check_against_unet(pipe.unet, loras)
    wrappers = attach_ziplora(pipe.unet, loras)
    with torch.no_grad():
        for w in wrappers.values():
            for m in w.mergers.values():
                m.uniform_(0, 1, generator=g)
    x = torch.randn(1, unet_layers[convs[0]].in_channels, 4, 4, generator=g)
    with torch.no_grad():  # the wrapped 1×1 conv computes W0 x + Σ_i s_i B_i A_i (m_i ⊙ x) per pixel
        want = wrappers[convs[0]].base(x) + sum(
            torch.einsum("oi,nihw->nohw", loras[n][convs[0]].delta() * wrappers[convs[0]].mergers[n][None, :], x)
            for n in loras)
        torch.testing.assert_close(wrappers[convs[0]](x), want, atol=1e-5, rtol=1e-5)
    mergers = {f"{p}.{n}": m.detach().clone() for p, w in wrappers.items() for n, m in w.mergers.items()}
    detach_ziplora(pipe.unet, wrappers)
    strengths = {"subject": 1.0, "style": 0.8}
    merged = factors_to_lora_file(merged_factors(loras, mergers, strengths),
                                  text_encoders=combined_text_encoders(text_encoder_parts(files), strengths, "test"))
    path = tmp_path / "merged.safetensors"
    save_file(merged.state_dict, str(path), metadata=merged.metadata)

    plain = load_base_pipeline(base_cfg)
    plain.load_lora_weights(str(path), adapter_name="zip")
    modules = dict(plain.unet.named_modules())
    for p in unet_layers:
        want = sum(strengths[n] * loras[n][p].delta() * mergers[f"{p}.{n}"][None, :] for n in loras)
        got = _delta(modules[p], "zip")
        assert (got - want).norm() <= 1e-4 * want.norm(), p
    te_parts = {n: text_encoder_lora_factors(f, n) for n, f in files.items()}
    for te in ("text_encoder", "text_encoder_2"):
        modules = dict(getattr(plain, te).named_modules())
        for p in te_sub[te]:
            want = sum(strengths[n] * te_parts[n][te][p].delta() for n in files)
            got = _delta(modules.get(p) or modules[p.removeprefix("text_model.")], "zip")
            assert (got - want).norm() <= 1e-4 * want.norm(), (te, p)
    # the kohya copy of the merge carries the same layers
    again = to_kohya(merged)
    assert set(unet_lora_factors(again, "again")) == set(unet_layers)
    assert {te: set(p) for te, p in text_encoder_lora_factors(again, "again").items()} == \
        {te: set(p) for te, p in te_sub.items()}


# ---- bad inputs -------------------------------------------------------------------------------

def test_not_a_lora_names_what_was_found():
    with pytest.raises(LoraFormatError, match="holds no UNet LoRA weights.*conv_in.weight"):
        unet_lora_factors(LoraFile({"conv_in.weight": torch.zeros(3, 3)}), "model.safetensors")


def test_nan_weights_are_rejected(concepts):
    state = dict(concepts["files"]["subject"].state_dict)
    key = next(k for k in state if k.endswith("lora_B.weight"))
    state[key] = state[key].clone().fill_(float("nan"))
    with pytest.raises(LoraFormatError, match="NaN/inf"):
        unet_lora_factors(LoraFile(state, concepts["files"]["subject"].metadata), "subject")


def test_shape_mismatch_names_first_layer(base_cfg, concepts):
    factors = dict(concepts["factors"]["subject"])
    path = sorted(factors)[0]
    f = factors[path]
    factors[path] = type(f)(torch.zeros(f.rank, f.A.shape[1] + 8), f.B, f.scale)  # another model's width
    with pytest.raises(LoraFormatError, match=f"layer {path.replace('.', '[.]')} is"):
        check_against_unet(load_base_pipeline(base_cfg).unet, {"subject": factors})


def test_lora_for_no_layer_of_this_unet(base_cfg, concepts):
    f = next(iter(concepts["factors"]["style"].values()))
    with pytest.raises(LoraFormatError, match="adapts no layer of this UNet"):
        check_against_unet(load_base_pipeline(base_cfg).unet, {"style": {"mid_block.foo.to_q": f}})


def test_text_encoder_parts_in_an_unknown_layout_are_named_in_a_warning(concepts, caplog):
    lora = concepts["files"]["style"]
    state = {**lora.state_dict, "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.hada_w1_a": torch.zeros(2, 32)}
    with caplog.at_level(logging.WARNING):
        factors = unet_lora_factors(LoraFile(state, lora.metadata), "style")
        from ziplora_pipeline.core.lora.factors import text_encoder_lora_factors

        assert text_encoder_lora_factors(LoraFile(state, lora.metadata), "style") == {}
    assert set(factors) == set(concepts["factors"]["style"])
    assert "1 text-encoder tensors are in no format" in caplog.text and "hada_w1_a" in caplog.text


def test_merge_config_rejects_bad_values():
    from ziplora_pipeline.core.config_utils import ConfigError

    with pytest.raises(ConfigError, match="merge.overlap"):
        MergeConfig(overlap="cosin")
    with pytest.raises(ConfigError, match="timestep_range"):
        MergeConfig(timestep_range=(500, 100))


def test_kohya_copy_carries_the_base_model_and_trigger_words_a1111_reads():
    import json

    from ziplora_pipeline.core.lora.factors import LoraFactors
    from ziplora_pipeline.core.merging.export import kohya_metadata

    g = torch.Generator().manual_seed(0)
    lora = factors_to_lora_file({"down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q": LoraFactors(
        torch.randn(2, 8, generator=g), torch.randn(8, 2, generator=g), 1.0)})
    meta = kohya_metadata("stabilityai/stable-diffusion-xl-base-1.0", "sdxl", ["sks", "zwx"], "ZipLoRA")
    kohya = to_kohya(lora, meta)
    head = kohya.metadata
    assert head["ss_network_module"] == "networks.lora" and head["ss_base_model_version"] == "sdxl_base_v1-0"
    assert head["ss_sd_model_name"] == "stabilityai/stable-diffusion-xl-base-1.0"
    assert json.loads(head["ss_tag_frequency"]) == {"trigger words": {"sks": 1, "zwx": 1}}
    assert head["modelspec.trigger_phrase"] == "sks, zwx" and head["modelspec.architecture"].startswith("stable-diffusion-xl")
    assert all(isinstance(v, str) for v in head.values())  # safetensors headers hold strings only
    with pytest.raises(ValueError, match="architecture 'flux'"):
        kohya_metadata("x", "flux")

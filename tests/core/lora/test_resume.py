"""An interrupted LoRA training resumed from its checkpoint ends with exactly the weights of an
uninterrupted run (CPU, same seed): model, optimizer and the data generator are all restored."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from peft.utils import get_peft_model_state_dict

from ziplora_pipeline.core.lora.checkpoints import CheckpointStore, run_key
from ziplora_pipeline.core.lora.training import LoraTrainingConfig, train_lora

ADAPTER = "subject"
CFG = LoraTrainingConfig(rank=4, alpha=8, steps=6, checkpoint_every=2, learning_rate=1e-2, seed=3)
KEY_PARTS = ("base-model-id", "a photo of sks robot")


class SimulatedCrash(RuntimeError):
    pass


def _crash_at(step_to_crash: int):
    def on_step(step: int, loss: float) -> None:
        if step == step_to_crash:
            raise SimulatedCrash(f"killed after step {step}")
    return on_step


@pytest.fixture
def uninterrupted(fresh_pipe, encode):
    pipe = fresh_pipe()
    return train_lora(pipe, encode(pipe), CFG, ADAPTER)


@pytest.mark.parametrize(("crash_step", "expected_resume"), [
    (5, 4),  # killed during step 5: steps 1-4 are done and checkpointed at 4
    (4, 2),  # killed in step 4's callback, before its checkpoint: back to 2, steps 3-4 redone
])
def test_resume_gives_the_uninterrupted_weights(fresh_pipe, encode, tmp_path, uninterrupted,
                                                crash_step, expected_resume):
    store = CheckpointStore(tmp_path / "checkpoints")
    key = run_key(dataclasses.asdict(CFG), ADAPTER, *KEY_PARTS)

    crashed = fresh_pipe()
    with pytest.raises(SimulatedCrash):
        train_lora(crashed, encode(crashed), CFG, ADAPTER, store, KEY_PARTS, on_step=_crash_at(crash_step))
    assert store.steps(key)[-1] == expected_resume
    del crashed

    steps_seen = []
    resumed_pipe = fresh_pipe()
    resumed = train_lora(resumed_pipe, encode(resumed_pipe), CFG, ADAPTER, store, KEY_PARTS,
                         on_step=lambda step, loss: steps_seen.append(step))

    assert resumed.resumed_from == expected_resume
    assert steps_seen == list(range(expected_resume + 1, CFG.steps + 1))  # only the missing steps ran
    assert uninterrupted.resumed_from == 0
    assert resumed.losses == uninterrupted.losses  # restored history + identical new steps
    a, b = resumed.lora.state_dict, uninterrupted.lora.state_dict
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    assert resumed.lora.metadata == uninterrupted.lora.metadata
    # The in-UNet adapter is the exported one, and a finished run leaves no checkpoint behind.
    live = get_peft_model_state_dict(resumed_pipe.unet, adapter_name=ADAPTER)
    assert all(torch.equal(live[k], a[f"unet.{k}"]) for k in live)
    assert store.steps(key) == []


def test_a_different_config_does_not_resume_someone_elses_checkpoint(fresh_pipe, encode, tmp_path):
    store = CheckpointStore(tmp_path / "checkpoints")
    pipe = fresh_pipe()
    with pytest.raises(SimulatedCrash):
        train_lora(pipe, encode(pipe), CFG, ADAPTER, store, KEY_PARTS, on_step=_crash_at(5))

    other = dataclasses.replace(CFG, learning_rate=5e-3)
    pipe = fresh_pipe()
    assert train_lora(pipe, encode(pipe), other, ADAPTER, store, KEY_PARTS).resumed_from == 0
    pipe = fresh_pipe()
    assert train_lora(pipe, encode(pipe), CFG, ADAPTER, store, ("other images",)).resumed_from == 0
    # The original run's checkpoint is still there for the original job.
    assert store.steps(run_key(dataclasses.asdict(CFG), ADAPTER, *KEY_PARTS)) == [2, 4]

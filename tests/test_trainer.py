"""The generic trainer: losses go down the right path, and an interrupted run resumes exactly."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from scmgen import SCM, SpecError
from scmgen.data import load_dataset
from scmgen.trainer import Trainer
from tests.conftest import TINY


def make_trainer(out: Path, *overrides: str) -> Trainer:
    model = SCM.from_yaml(TINY, ["train.steps=10", "train.log_every=1", *overrides])
    return Trainer(model, load_dataset(model.spec, str(TINY)), out, progress=False, tensorboard=False)


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v.clone() for k, v in trainer.model.state_dict().items()}
    for t in trainer.terms:
        if t.critic is not None:
            out.update({f"critic.{k}": v.clone() for k, v in t.critic.state_dict().items()})
    return out


@pytest.mark.parametrize("extra", [[], ["train.ema=0.9"]], ids=["plain", "ema"])
def test_resume_reaches_the_same_weights_bit_for_bit(tmp_path: Path, extra: list[str]) -> None:
    straight = make_trainer(tmp_path / "a", *extra)
    straight.fit()
    expected = weights(straight)

    first = make_trainer(tmp_path / "b", *extra)
    for _ in range(6):
        first.train_step()
    first.save_checkpoint()
    del first
    torch.manual_seed(1234)  # a resumed process starts with other RNG state: resume must restore it
    resumed = make_trainer(tmp_path / "b", *extra)
    assert resumed.resume() == 6
    resumed.fit()
    got = weights(resumed)
    assert expected.keys() == got.keys()
    for k in expected:
        assert torch.equal(expected[k], got[k]), k


def test_ema_leaves_the_average_in_the_model_and_the_live_weights_in_the_checkpoint(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, "train.ema=0.5", "train.steps=4")
    for _ in range(4):
        trainer.train_step()
    live = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in trainer._trained().items()}
    expected = {n: {k: v.clone() for k, v in s.items()} for n, s in trainer.average.shadow.items()}
    trainer.fit()  # already at its last step: only saves and swaps in the average
    for name, module in trainer._trained().items():
        state = module.state_dict()
        for k, v in expected[name].items():
            assert torch.equal(state[k], v), (name, k)
        assert any(not torch.equal(state[k], live[name][k]) for k in expected[name]), name
    reloaded = make_trainer(tmp_path, "train.ema=0.5", "train.steps=4")
    assert reloaded.resume() == 4
    for name, module in reloaded._trained().items():
        assert all(torch.equal(v, live[name][k]) for k, v in module.state_dict().items()), name


def test_ema_resume_refuses_a_checkpoint_without_the_average(tmp_path: Path) -> None:
    make_trainer(tmp_path, "train.steps=2").fit()
    with pytest.raises(SpecError, match="saved without train.ema"):
        make_trainer(tmp_path, "train.ema=0.9").resume()


def test_checkpoints_rotate_and_latest_points_to_newest(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, "train.checkpoint_every=3", "train.keep_checkpoints=2")
    trainer.fit()
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.glob("step_*")) == ["step_0000009", "step_0000010"]
    assert (root / "latest").read_text().strip() == "step_0000010"
    assert not list(root.glob(".*"))


def test_gradient_accumulation_counts_images(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, "train.accumulate=2", "train.steps=null", "train.epochs=1")
    assert trainer.total_steps == 256 // (16 * 2)
    trainer.train_step()
    assert trainer.batches.offset == 32


def test_frozen_mechanism_does_not_change(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, "nodes.backdrop.trainable=false", "train.steps=3")
    before = {k: v.clone() for k, v in trainer.model.mechanisms["backdrop"].state_dict().items() if v.is_floating_point()}
    trainer.fit()
    after = trainer.model.mechanisms["backdrop"].state_dict()
    assert "backdrop" not in trainer.optimizers
    for k, v in before.items():
        if "running" not in k:
            assert torch.equal(v, after[k]), k


def test_resume_refuses_a_checkpoint_of_another_graph(tmp_path: Path) -> None:
    make_trainer(tmp_path, "train.steps=2").fit()
    other = make_trainer(tmp_path, "nodes.mask.params.width=4")
    with pytest.raises(SpecError, match="checkpoint is for a different graph"):
        other.resume()


def test_bf16_autocast_trains(tmp_path: Path) -> None:
    result = make_trainer(tmp_path, "train.precision=bf16", "train.steps=2").fit()
    assert result.step == 2 and all(torch.isfinite(torch.tensor(v)) for v in result.last_losses.values())


def test_same_seed_same_trained_weights(tmp_path: Path) -> None:
    a = make_trainer(tmp_path / "a", "train.steps=4")  # a trainer seeds the process's RNG: one at a time
    a.fit()
    b = make_trainer(tmp_path / "b", "train.steps=4")
    b.fit()
    wa, wb = weights(a), weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c = make_trainer(tmp_path / "c", "train.steps=4", "train.seed=1")
    c.fit()
    assert not all(torch.equal(wa[k], weights(c)[k]) for k in wa)


def test_a_warmed_up_loss_rises_linearly_from_zero(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, "losses.binary.warmup=4", "train.steps=6")
    logged = [trainer.train_step()["binary"] for _ in range(6)]
    assert logged[0] == 0.0
    # the unweighted mask entropy barely moves in a few steps: the logged value follows the ramp
    ramp = [logged[k] / (0.3 * min(1.0, k / 4)) for k in range(1, 6)]
    assert max(ramp) / min(ramp) < 1.2 and logged[4] > logged[1] * 3


def test_checkpoints_log_the_mechanisms_diagnostics_without_changing_the_run(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    quiet = make_trainer(tmp_path / "quiet", "train.checkpoint_every=5")
    quiet.fit()
    model = SCM.from_yaml(TINY, ["train.steps=10", "train.log_every=1", "train.checkpoint_every=5"])
    logged = Trainer(model, load_dataset(model.spec, str(TINY)), tmp_path / "logged", progress=False)
    logged.fit()
    assert all(torch.equal(v, weights(logged)[k]) for k, v in weights(quiet).items())  # no RNG drawn, no state moved
    events = EventAccumulator(str(tmp_path / "logged" / "tensorboard"))
    events.Reload()
    final = model.mechanisms["mask"].class_statistics()
    for name in ("coverage", "variation"):
        for c in range(4):
            scalars = events.Scalars(f"mask/{name}/class_{c}")
            assert [s.step for s in scalars] == [5, 10]
            assert scalars[-1].value == pytest.approx(float(final[name][c]), abs=1e-6)

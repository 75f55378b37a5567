"""Counterfactuals of observed images on the tiny graph: the encoder recovers the labels of the
generator's own samples, refinement lowers the reconstruction error, a counterfactual recomputes
only the intervened node's descendants, encoders are saved and reused, and the command line
writes its files or fails in one line."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from mechanisms.synthetic import shapes
from scmgen import abduction, weights
from scmgen.abduction import (
    Encoder,
    ImageDistance,
    abduct,
    abduction_targets,
    counterfactual_of,
    encoder_quality,
    load_or_train_encoder,
    train_encoder,
)
from scmgen.data import to_float
from scmgen.model import SCM
from tests.cli_helpers import run_cli
from tests.conftest import TINY

pytestmark = pytest.mark.usefixtures("random_vgg_record_per_module")


@pytest.fixture(autouse=True)
def _test_record(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(weights._state, "used_random", set())
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model() -> SCM:
    return SCM.from_yaml(TINY).eval()


@pytest.fixture(scope="module")
def encoder(model: SCM) -> Encoder:
    return train_encoder(model, steps=150, batch_size=32, lr=2e-3, precision="fp32", progress=False)[0]


@pytest.fixture(scope="module")
def distance() -> ImageDistance:
    return ImageDistance()


@pytest.fixture(scope="module")
def real() -> torch.Tensor:
    return to_float(shapes("test", n=16, size=16).images)


def test_targets_are_the_noise_and_the_labels_mechanisms_read(model: SCM) -> None:
    noise, labels = abduction_targets(model)
    assert noise == {"u_background": 8, "u_shape": 8, "u_texture": 8}
    assert labels == {"background": 4, "shape": 4, "texture": 4}  # not y: only its children read it


def test_encoder_recovers_the_labels_of_its_own_samples(model: SCM, encoder: Encoder) -> None:
    quality = encoder_quality(model, encoder, torch.Generator().manual_seed(5), n=256)
    # chance is 0.25; the untrained tiny mask hides much of the foreground, so texture is the hard one
    assert quality.label_accuracy["shape"] > 0.6 and quality.label_accuracy["background"] > 0.6, quality.label_accuracy
    assert sum(quality.label_accuracy.values()) / 3 > 0.5
    untrained = encoder_quality(model, Encoder.for_model(model), torch.Generator().manual_seed(5), n=256)
    assert quality.reconstruction_l1 < untrained.reconstruction_l1


def test_refinement_lowers_the_reconstruction_error(model: SCM, encoder: Encoder, distance: ImageDistance,
                                                    real: torch.Tensor) -> None:
    fast = abduct(model, encoder, real, steps=0, distance=distance)
    refined = abduct(model, encoder, real, steps=15, distance=distance)
    assert torch.equal(fast.l1, fast.l1_encoder) and torch.allclose(refined.l1_encoder, fast.l1)
    assert refined.l1.mean() < fast.l1.mean()
    # each image keeps its best noise: the objective (L1 + LPIPS) never gets worse
    assert ((refined.l1 + refined.lpips) <= (fast.l1 + fast.lpips) + 0.01).all()
    assert torch.equal(refined.labels["shape"], fast.labels["shape"])


def test_top_k_labels_reconstruct_at_least_as_well(model: SCM, encoder: Encoder, distance: ImageDistance,
                                                   real: torch.Tensor) -> None:
    plain = abduct(model, encoder, real, distance=distance)
    best = abduct(model, encoder, real, distance=distance, top_k=4)
    assert (best.l1 + best.lpips).mean() <= (plain.l1 + plain.lpips).mean() + 1e-3


def test_counterfactual_recomputes_only_descendants(model: SCM, encoder: Encoder, distance: ImageDistance,
                                                    real: torch.Tensor) -> None:
    found = abduct(model, encoder, real[:6], steps=2, distance=distance)
    cf = counterfactual_of(model, found, {"background": torch.tensor([(int(b) + 1) % 4 for b in found.labels["background"]])})
    assert torch.equal(cf["mask"], found.values["mask"])
    assert torch.equal(cf["foreground"], found.values["foreground"])
    assert not torch.equal(cf["backdrop"], found.values["backdrop"])
    null = counterfactual_of(model, found, {})
    assert torch.equal(null["image"], found.reconstruction)


def test_abduction_in_batches_matches_one_batch(model: SCM, encoder: Encoder, distance: ImageDistance,
                                                real: torch.Tensor) -> None:
    whole = abduct(model, encoder, real, distance=distance)
    parts = abduct(model, encoder, real, distance=distance, batch_size=5)
    assert torch.equal(whole.labels["texture"], parts.labels["texture"])
    assert torch.allclose(whole.reconstruction, parts.reconstruction, atol=1e-5)
    assert len(parts.subset(slice(0, 3))) == 3


def test_encoder_is_saved_reused_and_retrained_for_other_weights(model: SCM, tmp_path: Path) -> None:
    said: list[str] = []
    first = load_or_train_encoder(model, tmp_path / "encoder", steps=3, progress=False, say=said.append)
    assert any("training the abduction encoder" in s for s in said)
    assert sorted(p.name for p in (tmp_path / "encoder").iterdir()) == ["config.json", "meta.json", "model.safetensors"]
    said.clear()
    again = load_or_train_encoder(model, tmp_path / "encoder", steps=3, progress=False, say=said.append)
    assert not said
    x = torch.zeros(2, 3, 16, 16)
    assert torch.equal(first(x)[0]["u_shape"], again(x)[0]["u_shape"])
    other = SCM.from_yaml(TINY, ["train.seed=7"]).eval()
    load_or_train_encoder(other, tmp_path / "encoder", steps=3, progress=False, say=said.append)
    assert any("other weights" in s for s in said)


# -- command line ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, model: SCM) -> Path:
    return model.save_pretrained(tmp_path_factory.mktemp("ckpt") / "model")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    data = shapes("test", n=2, size=16)
    paths = []
    for i in range(2):
        paths.append(folder / f"shape{i}.png")
        Image.fromarray(data.images[i].permute(1, 2, 0).numpy()).save(paths[-1])
    Image.fromarray(data.images[0].permute(1, 2, 0).numpy()).resize((24, 20)).convert("L").save(folder / "odd.png")
    (folder / "text.png").write_text("not an image")
    return [*paths, folder / "odd.png", folder / "text.png"]


def test_cli_writes_counterfactuals_panel_and_errors(checkpoint: Path, images: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "cf"
    stdout, stderr = run_cli("counterfactual", checkpoint, "--image", images[0], "--image", images[1],
                             "--image", images[2], "--do", "background=2", "--do", "shape=disk,texture=1",
                             "--steps", 2, "--encoder-steps", 5, "--out", out, "--quiet")
    assert "odd.png: L converted to RGB; centre-cropped to 20x20; resized from 20x20 to 16x16" in stderr
    assert "training the abduction encoder" in stderr and "reconstruction L1" in stdout
    names = sorted(p.name for p in out.iterdir())
    assert not [n for n in names if n.startswith(".")]  # written under temporary names, renamed
    assert {"panel.png", "counterfactuals.json", "shape0_reconstruction.png", "shape0_do_background-2.png",
            "odd_do_shape-disk_texture-1.png"} <= set(names)
    assert Image.open(out / "shape1_do_background-2.png").size == (16, 16)
    report = json.loads((out / "counterfactuals.json").read_text())
    assert {"commit", "command", "steps", "lpips", "images", "mean"} <= set(report)
    first = report["images"][0]
    assert set(first["reconstruction"]) == {"file", "l1", "lpips", "l1_encoder", "lpips_encoder"}
    assert set(first["labels"]) == {"shape", "texture", "background"}
    assert first["counterfactuals"] == {"background=2": "shape0_do_background-2.png",
                                        "shape=disk, texture=1": "shape0_do_shape-disk_texture-1.png"}
    assert (checkpoint / "encoder" / "model.safetensors").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--image", "missing.png", "--do", "background=2"], "--image missing.png: no such file"),
    (["--image", "TEXT", "--do", "background=2"], "not a readable image"),
    (["--image", "GOOD", "--do", "colour=2"], "do colour: not an intervenable node"),
    (["--image", "GOOD", "--do", "background"], "expected NODE=VALUE"),
    (["--image", "GOOD", "--do", "shape=circle"], "do shape=circle: unknown class name"),
])
def test_cli_bad_input_is_one_line_and_exit_2(checkpoint: Path, images: list[Path], tmp_path: Path,
                                              args: list[str], message: str) -> None:
    args = [str(images[3]) if a == "TEXT" else str(images[0]) if a == "GOOD" else a for a in args]
    _, stderr = run_cli("counterfactual", checkpoint, *args, "--encoder-steps", 2, "--steps", 0, "--out", tmp_path, code=2)
    assert message in stderr


def test_the_imagenet_graph_takes_the_same_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """tiny_imagenet (BigGAN mechanisms sharing one noise, a frozen U2-Net mask) under --random-init."""
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "weights"))
    monkeypatch.setitem(weights._state, "random_init", True)
    model = SCM.from_yaml(Path(__file__).resolve().parent.parent / "graphs" / "tiny_imagenet.yaml").eval()
    assert abduction_targets(model) == ({"u": 16}, {"shape": 10, "texture": 10, "background": 10})
    encoder = train_encoder(model, steps=2, batch_size=4, precision="fp32", progress=False)[0]
    found = abduct(model, encoder, torch.rand(2, 3, 32, 32) * 2 - 1, steps=1, precision="fp32")
    cf = counterfactual_of(model, found, {"background": torch.tensor([(int(b) + 1) % 10 for b in found.labels["background"]])})
    assert torch.equal(cf["mask"], found.values["mask"]) and torch.equal(cf["foreground"], found.values["foreground"])
    assert "teacher" not in found.values  # the frozen teacher is not needed for the image


@pytest.mark.parametrize("native", [False, True], ids=["emulated", "native"])
def test_abduction_uses_bf16_only_where_the_device_computes_it(model: SCM, distance: ImageDistance, native: bool,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Emulated bf16 is many times slower than fp32 (0.07x on an AVX2 CPU): by default neither the
    encoder's training nor the refinement runs under it there."""
    from scmgen import precision

    ran: list[bool] = []
    monkeypatch.setattr(precision, "native_bf16", lambda device: native)
    monkeypatch.setattr(abduction, "autocast", lambda device, p: ran.append(precision.resolve(p, device, warn=False))
                        or contextlib.nullcontext())
    encoder = train_encoder(model, steps=1, batch_size=2, progress=False)[0]
    abduct(model, encoder, torch.rand(2, 3, 16, 16) * 2 - 1, steps=1, distance=distance)
    assert ran and set(ran) == {"bf16" if native else "fp32"}

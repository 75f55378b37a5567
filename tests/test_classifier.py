"""The invariant classifier: heads from the graph, averaged logits on real images, per-head losses
on counterfactuals, training, persistence, pretrained ResNet weights, the evaluation sets in their
published layouts (on rigged classifiers whose right answers are known), and `scmgen classify`."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from mechanisms.synthetic import shapes
from scmgen import weights
from scmgen.classifier import (
    InvariantClassifier,
    ReferenceCNN,
    average_logits,
    counterfactual_loss,
    heads_from_checkpoint,
    heads_from_spec,
    real_loss,
)
from scmgen.classify import EvalSets, TensorImages, counterfactual_set, evaluate, markdown_summary, train_classifier
from scmgen.cli import cli
from scmgen.errors import SpecError, UsageError
from scmgen.evalsets import CUE_CONFLICT_CATEGORIES, IMAGENET_16, IN9_CLASSES, IN9_IMAGENET, in9_mapping
from scmgen.model import SCM
from scmgen.sampling import generate_dataset
from tests.conftest import TINY

HEADS = {"shape": 4, "texture": 4, "background": 4}


@pytest.fixture(autouse=True)
def _one_thread(_threads: None) -> None:
    """These networks are tiny: one thread runs them about 10x faster than two when other
    processes share the cores (conftest's `_threads` sets two; this runs after it)."""
    torch.set_num_threads(1)


def save_png(path: Path, pixels: torch.Tensor) -> None:
    """uint8 (3, H, W) -> an image file (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(path)


def make_data(root: Path, n_real: int = 64, n_cf: int = 48) -> tuple[Path, Path, Path]:
    """A real ImageFolder of coloured shapes (16 px) and the tiny SCM's counterfactual set in both
    layouts (PNG + labels.csv, safetensors shards)."""
    real = shapes(n=n_real, size=16, correlation=0.0, seed=1)
    for i in range(n_real):
        save_png(root / "real" / real.class_names[int(real.labels[i])] / f"{i:03d}.png", real.images[i])
    model = SCM.from_yaml(TINY)
    generate_dataset(model, n_cf, root / "cf", per_shape=4, batch_size=n_cf)
    generate_dataset(model, n_cf, root / "cf_st", per_shape=4, batch_size=n_cf, image_format="safetensors")
    return root / "real", root / "cf", root / "cf_st"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return make_data(tmp_path_factory.mktemp("data"))


# -- heads and losses -----------------------------------------------------------------------
def test_heads_come_from_the_graphs_intervenable_labels(tmp_path: Path) -> None:
    model = SCM.from_yaml(TINY)
    assert heads_from_spec(model.spec) == HEADS  # mask/foreground/backdrop are intervenable but not labels
    assert heads_from_checkpoint(TINY) == HEADS
    model.save_pretrained(tmp_path / "model")
    assert heads_from_checkpoint(tmp_path) == HEADS  # a run directory holding model/


def test_real_images_are_predicted_by_the_averaged_logits() -> None:
    torch.manual_seed(0)
    model = InvariantClassifier("mnist.cnn", HEADS).eval()
    out = model(torch.rand(5, 3, 16, 16) * 2 - 1)
    assert set(out) == set(HEADS) and all(v.shape == (5, 4) for v in out.values())
    mean = (out["shape"] + out["texture"] + out["background"]) / 3
    assert torch.allclose(average_logits(out), mean)
    labels = torch.tensor([0, 1, 2, 3, 0])
    assert torch.allclose(real_loss(out, labels), F.cross_entropy(mean, labels))


def test_counterfactual_loss_trains_each_head_on_its_own_label() -> None:
    torch.manual_seed(0)
    model = InvariantClassifier("mnist.cnn", HEADS)
    x = torch.rand(6, 3, 16, 16) * 2 - 1
    labels = {h: torch.randint(4, (6,)) for h in HEADS}
    out = model(x)
    assert torch.allclose(counterfactual_loss(out, labels), sum(F.cross_entropy(out[h], labels[h]) for h in HEADS))

    def head_grads(lab: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        model.zero_grad()
        counterfactual_loss(model(x), lab).backward()
        return {h: model.heads[h].weight.grad.clone() for h in HEADS}

    before = head_grads(labels)
    after = head_grads({**labels, "texture": (labels["texture"] + 1) % 4})
    assert torch.equal(before["shape"], after["shape"]) and torch.equal(before["background"], after["background"])
    assert not torch.equal(before["texture"], after["texture"])


def test_the_folded_input_norm_is_the_reference_layers_exactly() -> None:
    """ReferenceCNN folds its input batch norm into the first convolution: outputs, every
    parameter's gradient and the running statistics must be those of the same layers run one after
    another, in training (over several steps, so the running statistics feed back) and in eval."""
    torch.manual_seed(0)
    folded = ReferenceCNN()
    plain = nn.Sequential(*[copy.deepcopy(layer) for layer in folded])
    with torch.no_grad():  # a non-trivial affine, so that both of its parameters matter
        folded[0].weight.uniform_(0.5, 2), folded[0].bias.uniform_(-1, 1)
    plain.load_state_dict(folded.state_dict())
    assert list(folded.state_dict()) == list(plain.state_dict())  # checkpoints keep the reference's keys
    for step in range(3):
        x = (torch.rand(8, 3, 12, 12) * (step + 1) - 0.5).contiguous(memory_format=torch.channels_last)
        outs = [net(x) for net in (folded, plain)]
        torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-5)
        for net, out in zip((folded, plain), outs):
            net.zero_grad()
            (out * torch.arange(out.shape[1])).sum().backward()
        for (name, a), b in zip(folded.named_parameters(), plain.parameters()):
            # fp32 sums in another order: errors relative to the gradient's scale
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5 * float(b.grad.abs().max()), msg=name)
    for name, buffer in plain.named_buffers():
        torch.testing.assert_close(folded.get_buffer(name), buffer, msg=name)
    folded.eval(), plain.eval()
    x = torch.randn(4, 3, 12, 12)
    torch.testing.assert_close(folded(x), plain(x), rtol=1e-4, atol=1e-5)


def test_mismatched_heads_are_refused() -> None:
    with pytest.raises(UsageError, match="differ in size"):
        InvariantClassifier("mnist.cnn", {"shape": 4, "texture": 5})
    with pytest.raises(UsageError, match="target head"):
        InvariantClassifier("mnist.cnn", {"digit": 4})


# -- training, persistence, weights ---------------------------------------------------------
def test_training_on_real_and_counterfactual_shapes_beats_chance() -> None:
    """Real shapes whose colours follow the label, and counterfactuals whose texture and
    background colours are drawn independently: the averaged prediction learns the real label and
    the texture and background heads learn their own mechanism's label (chance is 0.25)."""
    torch.manual_seed(0)
    real = shapes(n=192, size=16, correlation=1.0, seed=0)
    cf_data = shapes(n=192, size=16, correlation=0.0, seed=2)
    model = InvariantClassifier("mnist.cnn", HEADS)
    result = train_classifier(model, real, TensorImages(cf_data.images, dict(cf_data.factors)), real_fraction=0.5,
                              recipe="mnist", epochs=3, batch_size=32, device="cpu", progress=False)
    assert result.steps == 3 * (192 // 16) and result.images == result.steps * 32 and len(result.history) == 3
    assert result.history[-1]["lr"] == pytest.approx(0.7 ** 2)
    test_real = shapes(n=128, size=16, correlation=1.0, seed=4)
    test_cf = shapes(split="test", n=128, size=16, seed=3)
    sets = EvalSets.load(val=test_real, counterfactuals=TensorImages(test_cf.images, dict(test_cf.factors)),
                         recipe="mnist")
    results = evaluate(model, sets, batch_size=64)
    assert results["real"]["images"] == 128 and results["summary"]["real_top1"] > 0.8
    assert results["counterfactual"]["accuracy"]["texture"] > 0.6
    assert results["counterfactual"]["accuracy"]["background"] > 0.4


def test_save_and_load_give_identical_outputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = InvariantClassifier("mnist.cnn", HEADS, target_head="texture")
    model(torch.rand(8, 3, 16, 16))  # move the batch-norm statistics away from their initial values
    model.eval()
    model.save_pretrained(tmp_path / "clf", {"note": "test"})
    loaded = InvariantClassifier.from_pretrained(tmp_path / "clf")
    assert loaded.config() == model.config() and loaded.meta["note"] == "test"
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    a, b = model(x), loaded(x)
    assert all(torch.equal(a[h], b[h]) for h in HEADS)
    with pytest.raises(SpecError, match="no such classifier directory"):
        InvariantClassifier.from_pretrained(tmp_path / "missing")


def test_resnet_backbone_loads_torchvision_weights_from_the_cache(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """resnet18 takes the same code path as resnet50 (torchvision state dict, fc left out)."""
    monkeypatch.setenv("SCMGEN_WEIGHTS", str(tmp_path))
    monkeypatch.setattr(weights, "_state", {"random_init": False, "used_random": set()})
    with pytest.raises(weights.MissingWeights, match="resnet18"):
        InvariantClassifier("resnet18", {"shape": 3}).load_imagenet_weights()
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None)
    (tmp_path / "resnet18").mkdir()
    torch.save(reference.state_dict(), tmp_path / "resnet18" / "resnet18-f37072fd.pth")
    model = InvariantClassifier("resnet18", {"shape": 3})
    assert model.load_imagenet_weights() and model.pretrained
    assert torch.equal(model.backbone.conv1.weight, reference.conv1.weight)
    assert torch.equal(model.backbone.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)
    assert model(torch.zeros(2, 3, 32, 32))["shape"].shape == (2, 3)

    torch.save({**reference.state_dict(), "extra.weight": torch.zeros(1)},
               tmp_path / "resnet18" / "resnet18-f37072fd.pth")
    with pytest.raises(SpecError, match="unexpected keys"):
        InvariantClassifier("resnet18", {"shape": 3}).load_imagenet_weights()
    weights.set_random_init(True)
    (tmp_path / "resnet18" / "resnet18-f37072fd.pth").unlink()
    (tmp_path / "resnet18").rmdir()
    model = InvariantClassifier("resnet18", {"shape": 3})
    assert not model.load_imagenet_weights() and model.random_init == ["resnet18"]


# -- evaluation sets ------------------------------------------------------------------------
class Rigged(nn.Module):
    """Answers what the image's blue channel says (value = answer * step): the ImageNet class
    `to_imagenet(answer)` wins by a wide margin, or with `width` 16 / 9 the answer itself."""

    def __init__(self, width: int, to_imagenet: dict[int, int], step: int) -> None:
        super().__init__()
        self.width, self.to_imagenet, self.step = width, to_imagenet, step

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        answer = ((x[:, 2, 0, 0] + 1) * 127.5 / self.step).round().long()
        winner = answer if self.width != 1000 else torch.tensor([self.to_imagenet[int(a)] for a in answer])
        return {"shape": F.one_hot(winner, self.width).float() * 40 - 20}


def stimulus(answer: int, step: int) -> torch.Tensor:
    return torch.tensor([30, 60, answer * step], dtype=torch.uint8).view(3, 1, 1).expand(3, 8, 8).contiguous()


@pytest.mark.parametrize("width", [1000, 16])
def test_cue_conflict_shape_bias_counts_shape_among_shape_or_texture_decisions(tmp_path: Path, width: int) -> None:
    category = {c: i for i, c in enumerate(CUE_CONFLICT_CATEGORIES)}
    answers = {"cat/cat1-elephant1.png": "cat", "cat/cat2-dog3.png": "dog", "dog/dog1-clock2.png": "dog",
               "bird/bird1-truck1.png": "oven", "knife/knife1-bear2.png": "knife",
               "bird/bird2-bird1.png": "truck"}  # shape == texture: not a cue conflict, left out
    for name, answer in answers.items():
        save_png(tmp_path / name, stimulus(category[answer], 16))
    model = Rigged(width, {i: IMAGENET_16[c][0] for c, i in category.items()}, 16)
    results = evaluate(model, EvalSets.load(cue_conflict=tmp_path, image_size=8), batch_size=4)
    cue = results["cue_conflict"]
    assert cue["images"] == 5
    assert cue["shape_bias"]["shape"] == pytest.approx(3 / 4)  # 3 shape, 1 texture, 1 neither
    assert cue["shape_match"]["shape"] == pytest.approx(3 / 5) and cue["texture_match"]["shape"] == pytest.approx(1 / 5)
    assert results["summary"]["shape_bias"] == pytest.approx(0.75)


def test_cue_conflict_names_a_bad_stimulus(tmp_path: Path) -> None:
    save_png(tmp_path / "cat" / "cat1_elephant1.png", stimulus(0, 16))
    with pytest.raises(SpecError, match=r"cat1_elephant1\.png.*<shape>N-<texture>M"):
        EvalSets.load(cue_conflict=tmp_path, image_size=8)


def test_in9_mixed_same_mixed_rand_and_gap(tmp_path: Path) -> None:
    outside = 9  # an answer outside IN-9: ImageNet class 999
    to_imagenet = {k: IN9_IMAGENET[k][0] for k in range(9)} | {outside: 999}
    plan = {"mixed_same": {0: 0, 3: 3, 5: 5, 8: 8}, "mixed_rand": {0: 0, 3: outside, 5: 5, 8: 1}}
    for variant, answers in plan.items():
        for cls, answer in answers.items():
            save_png(tmp_path / variant / "val" / IN9_CLASSES[cls] / "a.JPEG", stimulus(answer, 25))
    model = Rigged(1000, to_imagenet, 25)
    in9 = evaluate(model, EvalSets.load(in9=tmp_path, image_size=8))["in9"]
    assert in9["mapping"] == "builtin" and in9["mixed_same_images"] == 4
    assert in9["mixed_same"]["shape"] == 1.0 and in9["mixed_rand"]["shape"] == 0.5
    assert in9["gap"]["shape"] == pytest.approx(0.5)

    table, _ = in9_mapping()
    official = {str(i): int(v) for i, v in enumerate(table)} | {"999": 3}  # the release's file wins
    (tmp_path / "in_to_in9.json").write_text(json.dumps(official))
    results = evaluate(model, EvalSets.load(in9=tmp_path, image_size=8))
    assert results["in9"]["mapping"].endswith("in_to_in9.json")
    assert results["summary"]["in9_bg_gap"] == pytest.approx(0.25)
    assert "IN-9 BG-gap" in markdown_summary(results)


def test_builtin_in9_lists_match_the_published_class_counts_where_known() -> None:
    counts = {k: len(v) for k, v in IN9_IMAGENET.items()}
    assert [counts[k] for k in (3, 5, 6, 7, 8)] == [36, 27, 26, 20, 16]  # reptile insect instrument primate fish
    table, origin = in9_mapping()
    assert origin == "builtin" and table[207] == 0 and table[999] == -1


def test_counterfactual_sets_load_in_both_layouts(data: tuple[Path, Path, Path]) -> None:
    _, png, shards = data
    a, b = counterfactual_set(png), counterfactual_set(shards)
    assert len(a) == len(b) == 48 and list(a.labels) == list(b.labels) == list(HEADS)
    images_a, labels_a = a.batch(torch.arange(5))
    images_b, labels_b = b.batch(torch.arange(5))
    assert images_a.shape == images_b.shape == (5, 3, 16, 16) and images_a.dtype == images_b.dtype == torch.uint8
    first = torch.from_numpy(np.array(Image.open(png / "images" / "0000000.png"))).permute(2, 0, 1)
    assert torch.equal(images_a[0], first)
    shard = load_file(str(shards / "shard_00000.safetensors"))
    assert torch.equal(images_b, shard["images"][:5])
    assert [int(labels_b[h][0]) for h in HEADS] == shard["labels"][0].tolist()
    with pytest.raises(SpecError, match="expected a counterfactual set"):
        counterfactual_set(png / "images")


# -- the command line -----------------------------------------------------------------------
def test_classify_command_end_to_end(data: tuple[Path, Path, Path], tmp_path: Path) -> None:
    real, png, shards = data
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, [
        "classify", "--real", str(real), "--counterfactuals", str(png), "--backbone", "mnist.cnn",
        "--image-size", "16", "--epochs", "1", "--batch-size", "16", "--val", str(real), "--cf-val", str(shards),
        "--workers", "0", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert sorted(p.name for p in (out / "model").iterdir()) == ["config.json", "meta.json", "model.safetensors"]
    report = json.loads((out / "results.json").read_text())
    assert report["results"]["real"]["images"] == 64 and report["results"]["counterfactual"]["images"] == 48
    assert set(report["results"]["real"]["top1"]) == {*HEADS, "average"}
    assert report["training"]["steps"] == 8 and report["training"]["world_size"] == 1 and report["commit"]
    assert "| real top-1" in (out / "results.md").read_text()
    loaded = InvariantClassifier.from_pretrained(out / "model")
    assert loaded.head_sizes == HEADS and loaded.target_head == "shape"


@pytest.mark.parametrize("args, message", [
    (["--real", "{missing}", "--counterfactuals", "{cf}"], "{missing}: no such folder; expected an ImageFolder root"),
    (["--real", "{real}", "--counterfactuals", "{real}"], "{real}: no meta.json; expected a counterfactual set"),
    (["--real", "{real}"], "--counterfactuals DIR is needed"),
    (["--real", "{real}", "--counterfactuals", "{cf}", "--cue-conflict", "{real}"], "not a cue-conflict stimulus"),
])
def test_classify_command_bad_folders_give_one_line(data: tuple[Path, Path, Path], tmp_path: Path,
                                                    args: list[str], message: str) -> None:
    real, png, _ = data
    paths = {"missing": str(tmp_path / "nope"), "cf": str(png), "real": str(real)}
    common = ["--backbone", "mnist.cnn", "--image-size", "16", "--epochs", "1", "--batch-size", "16", "--workers", "0",
              "--out", str(tmp_path / "out"), "--quiet"]
    result = CliRunner().invoke(cli, ["classify", *[a.format(**paths) for a in args], *common])
    assert result.exit_code == 2, (result.output, result.exception)
    assert len(result.stderr.strip().splitlines()) == 1 and message.format(**paths) in result.stderr

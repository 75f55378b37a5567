"""The benchmark scripts still run (smallest settings) and the engine-overhead sanity checks hold:
the hand-written loop computes exactly what the engine computes (same losses, same images)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from scmgen.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import double_colored_bound
import ema_fidelity
import engine_overhead
import mask_orientation
import mask_readability
import mnist_classifier_step
import mnist_throughput
import real_half_shortcut


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    # timings do not matter here; one thread keeps these tests fast on a shared machine, where two
    # OpenMP threads waiting on each other can be many times slower (the generation worker too)
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def test_engine_overhead_hand_loop_matches_engine() -> None:
    result = engine_overhead.main(["--train-batches", "4", "--gen-batches", "20", "--precisions", "fp32,bf16",
                                   "--train-reps", "1", "--gen-reps", "1", "--warmup", "0", "--out", "-"])
    assert result["same_losses"] and result["same_images"]
    assert set(result["train"]) == {(4, "fp32"), (4, "bf16")}
    assert all(r > 0 for r in result["train"].values())


def test_classifier_step_times_the_folded_and_the_sequential_backbone() -> None:
    rates = mnist_classifier_step.main(["--images", "128", "--repeats", "1", "--heads", "3", "--out", "-"])
    assert set(rates) == {("fp32", "sequential"), ("fp32", "folded")} and all(r > 0 for r in rates.values())
    plain = mnist_classifier_step.classifier("sequential", 1)
    assert type(plain.backbone) is torch.nn.Sequential  # the baseline really runs the unfolded forward


def test_mnist_throughput_runs() -> None:
    result = mnist_throughput.main(["--graphs", "cgn_double_colored_mnist", "--precisions", "bf16",
                                    "--train-batches", "4", "--steps", "1", "--warmup", "0", "--gen-batches", "20",
                                    "--gen-images", "20", "--matmul-size", "128", "--out", "-"])
    assert result["train"][("cgn_double_colored_mnist", 4, "bf16")] > 0
    rate, rss = result["generation"][("cgn_double_colored_mnist", 20, "bf16")]
    assert rate > 0 and rss > 0


def test_mask_orientation_runs_and_orients(tmp_path: Path) -> None:
    from scmgen.model import SCM

    model = SCM.from_yaml(ROOT / "graphs" / "cgn_double_colored_mnist.yaml")
    with torch.no_grad():  # an untrained mask that covers the background for every class
        model.mechanisms["mask"].head.bias.fill_(3.0)
    model.save_pretrained(tmp_path / "model", {"step": 0})
    result = mask_orientation.main([str(tmp_path / "model"), "--counterfactuals", "100", "--limit", "200",
                                    "--epochs", "1", "--out", "-"])
    assert result["as trained"]["flipped"] == [] and min(result["as trained"]["coverage"]) > 0.5
    for name in ("masks flipped, textures not", "oriented (masks and textures)"):
        assert result[name]["flipped"] == list(range(10)) and max(result[name]["coverage"]) < 0.5
    assert all(0.0 <= r["fidelity"] <= 1.0 and 0.0 <= r["test_accuracy"] <= 1.0 for r in result.values())


def _tiny_cgn_run(folder: Path) -> Path:
    """A double-colored CGN trained 3 steps into `folder` (model/ and checkpoints/step_0000003)."""
    from scmgen.model import SCM
    from scmgen.training_run import train_run

    graph = ROOT / "graphs" / "cgn_double_colored_mnist.yaml"
    model = SCM.from_yaml(graph, ["train.steps=3", "train.batch_size=8", "train.ema=0.5", "train.sample_every=0",
                                  "train.checkpoint_every=0"])
    train_run(model, graph, folder, progress=False)
    return folder


def test_ema_fidelity_reads_the_live_and_the_averaged_weights(tmp_path: Path) -> None:
    run = _tiny_cgn_run(tmp_path / "run")
    result = ema_fidelity.main([str(run), "--per-class", "3", "--limit", "200", "--out", "-"])
    assert list(result) == ["live weights (step_0000003)", "moving average (model/)"]
    assert all(0.0 <= r["fidelity"] <= 1.0 and len(r["per_class"]) == 10 for r in result.values())


def test_mask_readability_reads_models_and_checkpoints(tmp_path: Path) -> None:
    run = _tiny_cgn_run(tmp_path / "run")
    folders = [str(run / "model"), str(run / "checkpoints" / "step_0000003")]
    out = tmp_path / "RESULTS.md"
    result = mask_readability.main([*folders, "--per-class", "3", "--limit", "200", "--out", str(out)])
    assert list(result) == folders
    assert all(len(r) == 10 and all(0.0 <= v <= 1.0 for v in r) for r in result.values())
    text = out.read_text()
    assert "## Mask readability of trained CGNs" in text and f"| `{folders[1]}` |" in text


def test_double_colored_bound_counts_the_same_colour_images() -> None:
    result = double_colored_bound.main(["--limit", "1000", "--epochs", "1", "--out", "-"])
    assert 0.05 < result["same_colour_share"] < 0.15  # one pair in ten, drawn independently
    assert result["bound"] == pytest.approx(1 - result["same_colour_share"] * (1 - result["accuracy_same_colour"]))


def test_real_half_shortcut_trains_every_variant(tmp_path: Path) -> None:
    from scmgen.model import SCM
    from scmgen.sampling import generate_dataset

    model = SCM.from_yaml(ROOT / "graphs" / "cgn_wildlife_mnist.yaml")
    generate_dataset(model, 200, tmp_path / "cf", image_format="safetensors")
    result = real_half_shortcut.main([str(tmp_path / "cf"), "--limit", "200", "--epochs", "1", "--out", "-"])
    assert list(result) == list(real_half_shortcut.VARIANTS)
    for r in result.values():
        assert 0.0 <= r["test_accuracy"] <= 1.0 and set(r["follows"]) == {"texture", "background"}
        assert 0.0 <= r["validation_accuracy"] <= 1.0
        assert all(f <= 1.0 - r["test_accuracy"] for f in r["follows"].values())  # following a cue is a mistake


def test_real_half_shortcut_refuses_an_unknown_variant(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        real_half_shortcut.main([str(tmp_path), "--variants", "real half,mixup", "--out", "-"])


def test_recorded_command_lines_paste_back_into_a_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    import shlex

    from scmgen.provenance import run_metadata

    argv = ["benchmarks/real_half_shortcut.py", "cf dir", "--variants", "three heads"]
    monkeypatch.setattr(sys, "argv", argv)
    assert shlex.split(run_metadata()["command"]) == argv


def test_train_step_measures_a_graph_without_one_of_its_losses(tmp_path: Path) -> None:
    import mnist_train_step

    graph = ROOT / "graphs" / "cgn_double_colored_mnist.yaml"
    assert mnist_train_step.images_per_second(graph, 4, "bf16", 1, 0, tmp_path, without="layer_colours") > 0
    with pytest.raises(SystemExit, match="--without colour: not a loss of cgn_double_colored_mnist"):
        mnist_train_step.images_per_second(graph, 4, "bf16", 1, 0, tmp_path, without="colour")


def test_train_step_measures_a_graph_changed_by_overrides(tmp_path: Path) -> None:
    import mnist_train_step

    from scmgen.errors import SpecError

    graph = ROOT / "graphs" / "cgn_double_colored_mnist.yaml"
    narrow = ("nodes.foreground.params.width=8", "nodes.backdrop.params.width=8")
    assert mnist_train_step.images_per_second(graph, 4, "fp32", 1, 0, tmp_path, overrides=narrow) > 0
    with pytest.raises(SpecError, match="train.batch_sise"):
        mnist_train_step.images_per_second(graph, 4, "fp32", 1, 0, tmp_path, overrides=("train.batch_sise=8",))


def test_mask_dynamics_reads_every_checkpoint_of_a_run(tmp_path: Path) -> None:
    import mask_dynamics

    from scmgen.model import SCM

    model = SCM.from_yaml(ROOT / "graphs" / "cgn_double_colored_mnist.yaml").eval()
    for step in (1, 2):
        model.save_pretrained(tmp_path / "checkpoints" / f"step_{step:07d}")
    result = mask_dynamics.main([str(tmp_path), "--dataset", "double_colored", "--out", "-"])
    assert list(result) == [1, 2] and result[1] == result[2]  # same weights, same statistics
    mean, variation, colours = (result[1][name] for name in mask_dynamics.STATISTICS)
    assert len(mean) == len(variation) == len(colours) == 10
    assert all(0 < m < 1 for m in mean) and all(v > 0 for v in variation)
    assert all(d > 0.05 for d in colours)  # untrained layers are nowhere near the digits' colours
    with pytest.raises(SystemExit):
        mask_dynamics.main([str(tmp_path / "none"), "--out", "-"])


def test_mechanism_swap_trains_on_every_mix_of_cgn_and_true_layers(tmp_path: Path) -> None:
    import mechanism_swap

    from scmgen.model import SCM

    SCM.from_yaml(ROOT / "graphs" / "cgn_double_colored_mnist.yaml").save_pretrained(tmp_path / "model", {"step": 0})
    result = mechanism_swap.main([str(tmp_path / "model"), "--dataset", "double_colored", "--n", "200",
                                  "--epochs", "1", "--limit", "200", "--out", "-"])
    assert list(result) == [name for name, _, _ in mechanism_swap.ROWS]
    assert all(0.0 <= r["mean"] <= 1.0 and len(r["runs"][0]["per_class"]) == 10 for r in result.values())
    with pytest.raises(SystemExit):  # a double-colored CGN against Wildlife's truth
        mechanism_swap.main([str(tmp_path / "model"), "--dataset", "wildlife", "--out", "-"])


def test_true_mechanisms_are_the_pieces_the_data_set_is_made_of() -> None:
    from mechanisms.mnist import datasets

    built = datasets.double_colored_mnist("train", correlation=0.5, seed=3)
    masks, labels, paint_object, paint_background = datasets.true_mechanisms(datasets.double_colored_mnist)
    assert torch.equal(labels, built.labels)
    g = datasets._generator(3, "train")  # the builder's draws, in its order
    p = torch.full(labels.shape, 0.5)
    texture, background = datasets._factor_index(labels, p, g), datasets._factor_index(labels, p, g)
    assert torch.equal(texture, built.factors["texture"]) and torch.equal(background, built.factors["background"])
    everything = slice(None)
    images = torch.where(masks, paint_object(texture, g)(everything), paint_background(background, g)(everything))
    assert torch.equal(images, built.images)
    with pytest.raises(ValueError, match="not a two-factor set"):
        datasets.true_mechanisms(datasets.colored_mnist)


def test_counterfactual_draws_compare_sets_of_one_cgn(tmp_path: Path) -> None:
    import counterfactual_draws

    from scmgen.model import SCM

    SCM.from_yaml(ROOT / "graphs" / "cgn_double_colored_mnist.yaml").save_pretrained(tmp_path / "model", {"step": 0})
    result = counterfactual_draws.main([str(tmp_path / "model"), "--dataset", "double_colored", "--n", "200",
                                        "--epochs", "1", "--limit", "200", "--truncations", "none;u_shape=0.5",
                                        "--per-shape", "10,1", "--out", "-"])
    assert list(result) == ["none | 10", "none | 1", "u_shape=0.5 | 10", "u_shape=0.5 | 1"]
    assert all(0.0 <= r["fidelity"] <= 1.0 and 0.0 <= r["three heads"]["test"] <= 1.0 for r in result.values())
    with pytest.raises(SystemExit):  # a double-colored CGN is not Wildlife's
        counterfactual_draws.main([str(tmp_path / "model"), "--dataset", "wildlife", "--out", "-"])
    with pytest.raises(UsageError, match="not a normal noise node"):
        counterfactual_draws.main([str(tmp_path / "model"), "--dataset", "double_colored", "--truncations",
                                   "u_mask=0.5", "--out", "-"])

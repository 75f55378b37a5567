"""`scmgen bench table1` on a tiny budget: every row of the table runs through the engine, the
result files carry their provenance, and a rerun reuses every cached stage."""
import io
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from rich.console import Console

from scmgen.classifier import InvariantClassifier
from scmgen.classify import accuracy, per_class_rate, predictions
from scmgen.cli import cli
from scmgen.data import ImageSet
from scmgen.errors import UsageError
from scmgen.precision import resolve as resolve_precision
from scmgen.table1 import (
    MAKER,
    METHODS,
    RECIPES,
    UNITS,
    Settings,
    Table1,
    cue_followed,
    random_sample,
    unreadable_classes,
)
from scmgen.table1_lanes import plan

TINY_ANY_LANES = ["--datasets", "double_colored", "--cgn-steps", "2", "--gan-steps", "2", "--counterfactuals", "100",
                  "--epochs", "1", "--cf-extra-epochs", "1", "--batch-size", "16", "--limit", "200", "--quiet"]
TINY = [*TINY_ANY_LANES, "--workers", "1"]  # in this process: monkeypatches reach it


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("table1")
    result = CliRunner().invoke(cli, ["bench", "table1", *TINY, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "table1.json").read_text())


def stages_of(payload: dict) -> dict:
    return payload["datasets"]["double_colored"]["stages"]["0"]


def test_every_row_is_measured_and_written_with_provenance(bench: tuple[Path, dict]) -> None:
    out, payload = bench
    rows = payload["datasets"]["double_colored"]["rows"]
    assert set(rows) == set(METHODS)
    for key, per_seed in rows.items():
        row = per_seed["0"]
        assert 0.0 <= row["test_accuracy"] <= 1.0 and 0.0 <= row["train_accuracy"] <= 1.0
        assert 0.0 <= row["validation_accuracy"] <= 1.0, key
        assert row["seconds"] > 0 and row["history"], key
        assert set(row["test_follows"]) == {"texture", "background"}, key
    # Original + CGN is the invariant classifier, a head per intervened label of the CGN; the reference's
    # counterfactual-only classifier has the shape head alone
    assert rows["cgn"]["0"]["heads"] == ["shape", "texture", "background"]
    assert rows["cgn_only"]["0"]["heads"] == ["shape"] and rows["cgn"]["0"]["target_head"] == "shape"
    # --epochs 1 --cf-extra-epochs 1: the rows that read counterfactuals train 2 epochs, the invariant classifier
    # its own extra epoch(s) on top, the other rows the table's one; the table says so
    epochs = {k: len(r["0"]["history"]) for k, r in rows.items()}
    assert epochs["cgn"] == 2 + METHODS["cgn"].extra_epochs > epochs["cgn_only"] == epochs["oracle"] == 2
    assert {n for k, n in epochs.items() if k not in ("cgn", "cgn_only", "oracle")} == {1}
    text = " ".join((out / "table1.md").read_text().split())
    assert f"1 epochs (reference: 10), except {METHODS['cgn'].title}: {epochs['cgn']};" in text
    assert "the rows that read counterfactuals train 1 more" in text
    for field in ("commit", "command", "seeds", "device", "torch", "wall_seconds", "settings"):
        assert field in payload
    # --precision auto is recorded as what ran, and every trained graph ran in it
    assert payload["settings"]["precision"] == resolve_precision("auto", "cpu")
    assert f"train.precision={payload['settings']['precision']}" in stages_of(payload)["cgn"]["params"]["overrides"]
    stages = stages_of(payload)
    assert {"cgn", "gan", "counterfactuals", "gan_samples"} <= set(stages)
    assert all(s["seconds"] >= 0 and s["images_per_second"] > 0 for s in stages.values())
    table = (out / "table1.md").read_text()
    assert f"Recipe **{payload['settings']['recipe']}**" in table and "cGAN steps: 2;" in table
    for method in METHODS.values():
        assert f"| {method.title} |" in table
    assert "(97.4 / 89.0)" in table  # the paper's Original + CGN numbers beside ours
    # the validation table, which an ablation is chosen on, holds every row's measurement
    assert "Validation accuracy in %: 200 training digits" in table and "train: on 200 training images" in table  # --limit
    validation = table[table.index("Validation accuracy in %"):].split("\n\n")[1]
    for key, method in METHODS.items():
        assert f"| {method.title} | {100 * rows[key]['0']['validation_accuracy']:.1f} |" in validation
    assert "Adadelta lr 3.0 (reference: 1.0; IRM (2 envs: 90%, 100%): 1.0; IRM (5 envs: 90-100%): 1.0)" in table
    assert "x0.7 per epoch, batch 16 (reference: 64), " in table  # TINY's --batch-size, beside the reference's
    fidelity = rows["oracle"]["0"]["counterfactual_shape_fidelity"]
    assert 0.0 <= fidelity <= 1.0 and f"double-colored MNIST {100 * fidelity:.1f}%" in table
    per_class = rows["oracle"]["0"]["counterfactual_shape_fidelity_per_class"]
    assert len(per_class) == 10 and "double-colored MNIST " + " ".join(f"{100 * v:.0f}" for v in per_class) in table
    masks = payload["datasets"]["double_colored"]["masks"]["0"]
    assert len(masks["coverage"]) == 10 and all(0.0 < c <= 0.5 for c in masks["coverage"])  # oriented
    assert len(masks["variation"]) == 10 and all(v > 0.0 for v in masks["variation"])
    assert ("double-colored MNIST mean " + " ".join(f"{c:.2f}" for c in masks["coverage"]) + ", variation "
            + " ".join(f"{v:.2f}" for v in masks["variation"])) in table
    assert (out / "double_colored.png").stat().st_size > 10_000
    follows = rows["original"]["0"]["test_follows"]
    assert (f"| Original | texture {100 * follows['texture']:.1f} · background {100 * follows['background']:.1f} |"
            in table)


def test_a_cgn_whose_masks_are_unreadable_trains_on_to_its_most_steps(bench: tuple[Path, dict]) -> None:
    out, payload = bench
    cgn = stages_of(payload)["cgn"]
    # 2 steps draw no digit: the mask check trains on, half the planned steps at a time, to twice them, and stops
    assert [c["step"] for c in cgn["mask_checks"]] == [2, 3, 4] and cgn["steps"] == 4
    assert cgn["steps_timed"] == 4  # its images/s counts the steps trained on too
    assert all(c["unreadable"] and len(c["per_class"]) == 10 for c in cgn["mask_checks"])
    text = " ".join((out / "table1.md").read_text().split())
    first = cgn["mask_checks"][0]
    assert "a CGN with a class under 50% trains on, half its steps at a time, up to 4 steps" in text
    assert (f"double-colored MNIST seed 0: step 2: do(shape={', '.join(map(str, first['unreadable']))}) read as their "
            "digit") in text and "-> step 4: do(shape=" in text


def test_the_mask_check_stops_training_on_once_every_digit_reads(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from mechanisms.mnist import mask_reader

    reads = iter([[0.9] * 4 + [0.1] + [0.9] * 5, [0.9] * 10])
    monkeypatch.setattr(mask_reader, "mask_readability", lambda *args, **kw: next(reads))
    result = CliRunner().invoke(cli, ["bench", "table1", *TINY, "--methods", "cgn_only", "--cgn-steps", "4",
                                      "--cgn-max-steps", "8", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    cgn = stages_of(json.loads((tmp_path / "table1.json").read_text()))["cgn"]
    assert [(c["step"], c["unreadable"]) for c in cgn["mask_checks"]] == [(4, [4]), (6, [])] and cgn["steps"] == 6
    assert json.loads((tmp_path / "cache" / "double_colored" / "seed0").glob("cgn-*/model/meta.json").__next__()
                      .read_text())["step"] == 6
    text = " ".join((tmp_path / "table1.md").read_text().split())
    assert ("step 4: do(shape=4) read as their digit 10% of the time -> step 6: every class readable "
            "(lowest: 0, 90%)") in text
    # a stage resumed after a crash times only the steps it ran: here none, from its last checkpoint
    folder = next((tmp_path / "cache" / "double_colored" / "seed0").glob("cgn-*"))
    (folder / "stage.json").unlink()
    reads = iter([[0.9] * 10])
    result = CliRunner().invoke(cli, ["bench", "table1", *TINY, "--methods", "cgn_only", "--cgn-steps", "4",
                                      "--cgn-max-steps", "8", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    cgn = stages_of(json.loads((tmp_path / "table1.json").read_text()))["cgn"]
    assert cgn["steps"] == 6 and cgn["steps_timed"] == 0 and cgn["images_per_second"] is None
    assert "| double_colored | 0 | cgn |" in (tmp_path / "table1.md").read_text()


def test_a_lane_reports_the_work_the_mask_check_added(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lanes' time left is paced by work done: a CGN trained on adds its steps' cost to the plan."""
    from mechanisms.mnist import mask_reader
    from scmgen.table1_lanes import _run_part

    reads = iter([[0.9] * 4 + [0.1] + [0.9] * 5, [0.9] * 10])
    monkeypatch.setattr(mask_reader, "mask_readability", lambda *args, **kw: next(reads))
    settings = Settings(datasets=["double_colored"], methods=["cgn_only"], cgn_steps=4, cgn_max_steps=8,
                        counterfactuals=100, batch_size=16, limit=200)
    part = next(p for p in plan(settings) if p.makes == "cgn")
    seconds, extra = _run_part(settings, str(tmp_path), part)
    assert seconds > 0 and extra == pytest.approx(UNITS["cgn"] * 2)  # trained on from step 4 to 6


def test_the_recipe_line_states_the_budget(tmp_path: Path) -> None:
    args = [a for a in TINY if a != "--quiet"]
    result = CliRunner().invoke(cli, ["bench", "table1", *args, "--methods", "original", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert ("CGN 2 steps (up to 4 when a digit's masks are unreadable), cGAN 2 steps, classifiers 1 epoch(s) at batch 16 "
            "(counterfactuals only and the ceiling: 2, Original + CGN: 3)") in " ".join(result.output.split())


def test_the_mask_check_is_told_when_it_trained_on_or_gave_up(tmp_path: Path) -> None:
    text = io.StringIO()
    table = Table1(Settings(), tmp_path, progress=False, console=Console(file=text, width=400), writes=False)
    bad, good = {"step": 2000, "per_class": [0.9] * 5 + [0.3] + [0.9] * 4, "unreadable": [5]}, {
        "step": 3000, "per_class": [0.9] * 10, "unreadable": []}
    for checks in ([good], [bad, good], [bad, {**bad, "step": 4000}], [bad]):
        table._tell_mask_checks("double_colored", 2, checks)
    mended, gave_up, no_room = text.getvalue().splitlines()  # a CGN read at once says nothing
    assert mended.endswith("seed 2: at step 2000 the CGN's masks of do(shape=5) read as their digit 30% of the time; "
                           "it trained on to step 3000, where every class reads")
    assert gave_up.endswith("it trained on to step 4000, the most --cgn-max-steps allows, where do(shape=5) read as "
                            "their digit 30% of the time")
    assert no_room.endswith("30% of the time; --cgn-max-steps allows no more steps")


def test_the_mask_reader_reads_the_masks_drawn_under_do_shape() -> None:
    from mechanisms.mnist.mask_reader import mask_images, mask_readability
    from scmgen.model import SCM
    from scmgen.table1 import GRAPHS

    masks = torch.tensor([0.0, 0.5, 1.0, 2.0]).view(1, 1, 2, 2)
    images = mask_images(masks)
    assert images.dtype == torch.uint8 and images.shape == (1, 3, 2, 2)
    assert images[0, :, 1, 1].tolist() == [255] * 3 and images[0, 0].flatten().tolist() == [0, 128, 255, 255]
    reader = InvariantClassifier("mnist.cnn", {"shape": 10})
    with torch.no_grad():  # reads every mask as a 3
        reader.heads["shape"].weight.zero_()
        reader.heads["shape"].bias.copy_(torch.nn.functional.one_hot(torch.tensor(3), 10).float())
    cgn = SCM.from_yaml(GRAPHS / "cgn_double_colored_mnist.yaml").eval()
    assert mask_readability(cgn, reader, per_class=5) == [0.0] * 3 + [1.0] + [0.0] * 6


def test_a_rerun_reuses_every_finished_stage(bench: tuple[Path, dict]) -> None:
    out, first = bench
    result = CliRunner().invoke(cli, ["bench", "table1", *TINY, "--out", str(out)])
    assert result.exit_code == 0, result.output
    again = json.loads((out / "table1.json").read_text())["datasets"]["double_colored"]
    assert all(s["cached"] for s in again["stages"]["0"].values())
    assert all(r["0"]["cached"] for r in again["rows"].values())
    # what the mask check did is said again, as after parallel lanes, which print nothing while they train
    assert "it trained on to step 4, the most --cgn-max-steps allows, where do(shape=" in " ".join(result.output.split())
    for key, per_seed in first["datasets"]["double_colored"]["rows"].items():
        assert again["rows"][key]["0"]["test_accuracy"] == per_seed["0"]["test_accuracy"]


def test_the_commit_recorded_is_the_one_the_run_started_from(bench: tuple[Path, dict],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The bench writes tracked files (its PNGs) before table1.json: a commit read at the end would call
    every run into results/table1 dirty."""
    from scmgen import table1

    out, _ = bench
    monkeypatch.setattr(table1, "git_commit", lambda: "abc123")  # as the checkout was when the run started
    monkeypatch.setattr("scmgen.provenance.git_commit", lambda: "abc123+dirty")  # after it wrote its PNGs
    result = CliRunner().invoke(cli, ["bench", "table1", *TINY, "--out", str(out)])
    assert result.exit_code == 0, result.output
    payload = json.loads((out / "table1.json").read_text())
    assert payload["commit"] == "abc123" and "commit abc123," in (out / "table1.md").read_text()


def test_a_moved_output_folder_keeps_its_cache(bench: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = bench
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    result = CliRunner().invoke(cli, ["bench", "table1", *TINY, "--out", str(moved)])
    assert result.exit_code == 0, result.output
    again = json.loads((moved / "table1.json").read_text())["datasets"]["double_colored"]
    assert all(s["cached"] for s in again["stages"]["0"].values())
    assert all(r["0"]["cached"] for r in again["rows"].values())


def test_parallel_lanes_fill_the_cache_a_single_process_reads(tmp_path: Path) -> None:
    out = tmp_path / "lanes"
    methods = ["--methods", "original,gan,cgn_only,oracle"]
    result = CliRunner().invoke(cli, ["bench", "table1", *TINY_ANY_LANES, *methods, "--workers", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    payload = json.loads((out / "table1.json").read_text())
    assert payload["lanes"]["workers"] == 2 and "2 parallel lane(s)" in (out / "table1.md").read_text()
    record = payload["datasets"]["double_colored"]
    assert set(record["rows"]) == {"original", "gan", "cgn_only", "oracle"}
    assert not any(r["0"]["cached"] for r in record["rows"].values())  # the lanes did them, this invocation
    assert set(record["stages"]["0"]) == {"cgn", "counterfactuals", "gan", "gan_samples"}
    assert len(record["masks"]["0"]["coverage"]) == 10 and (out / "double_colored.png").exists()
    result = CliRunner().invoke(cli, ["bench", "table1", *TINY, *methods, "--out", str(out)])
    assert result.exit_code == 0, result.output
    again = json.loads((out / "table1.json").read_text())["datasets"]["double_colored"]
    assert all(s["cached"] for s in again["stages"]["0"].values())
    assert all(r["0"]["cached"] and r["0"]["test_accuracy"] == record["rows"][k]["0"]["test_accuracy"]
               for k, r in again["rows"].items())


def test_a_lanes_bad_input_reaches_the_command_as_one_line(bench: tuple[Path, dict], tmp_path: Path) -> None:
    """A SpecError raised in a worker process (here: a cached CGN checkpoint made by another graph)
    crosses to the parent intact and ends the table as bad input, instead of a traceback in the pool's
    result thread and a table waiting for that lane forever."""
    out = tmp_path / "mismatch"
    shutil.copytree(bench[0], out)
    cgn = next((out / "cache" / "double_colored" / "seed0").glob("cgn-*"))
    (cgn / "stage.json").unlink()  # resumed from its checkpoint, whose graph is checked against the shipped one
    for graph in cgn.glob("checkpoints/step_*/graph.yaml"):
        graph.write_text(graph.read_text().replace("shift_samples: true", "shift_samples: false"))
    result = CliRunner().invoke(cli, ["bench", "table1", *TINY_ANY_LANES, "--methods", "cgn_only", "--workers", "2",
                                      "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "checkpoint is for a different graph" in result.output and "Traceback" not in result.output


def test_errors_that_the_cli_reports_survive_pickling() -> None:
    from scmgen.errors import SpecError
    from scmgen.registry import UnknownPlugin
    from scmgen.table1_lanes import _crosses_processes

    for error in (SpecError("g.yaml", "nodes.x", "expected y"), UnknownPlugin("mechanisms", "nope", ["a", "b"])):
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is type(error) and str(again) == str(error) and vars(again) == vars(error)
        assert _crosses_processes(error)

    class Strict(Exception):
        def __init__(self, a: str, b: str) -> None:
            super().__init__(f"{a} {b}")

    assert not _crosses_processes(Strict("a", "b"))


def test_the_lane_plan_runs_every_row_once_after_the_sets_it_reads() -> None:
    settings = Settings(seeds=[0, 1])
    parts = plan(settings)
    assert [p.makes for p in parts[:6]] == ["cgn"] * 6  # the longest parts start first
    rows = [(p.dataset, p.seed, m) for p in parts for m in p.methods]
    assert len(rows) == len(set(rows)) == 3 * 2 * len(METHODS)
    made = {(p.dataset, p.seed, p.makes) for p in parts if p.makes}
    for p in parts:
        assert p.needs <= made
        assert all(MAKER[s] in p.stages for m in p.methods for s in METHODS[m].reads())
    # a mixed row (real + generated images per batch) costs two single-stream rows, times its own epochs
    rows_part = next(p for p in parts if p.makes is None and "cgn" in p.methods)
    others = (len(rows_part.methods) - 1) * settings.epochs
    cgn_epochs = 2 * (settings.epochs + METHODS["cgn"].extra_epochs)
    assert rows_part.cost == pytest.approx(UNITS["classifier"] * (cgn_epochs + others))
    # and the budget scales the costs: the fast recipe's CGN costs half the full one's, its baselines a third,
    # and its rows that read counterfactuals train its extra epoch
    fast = Settings.from_recipe("fast", seeds=[0, 1])
    assert fast.units("cgn") == pytest.approx(settings.units("cgn") * RECIPES["fast"]["cgn_steps"] / 4000)
    assert fast.classifier_units(["original"]) == pytest.approx(settings.classifier_units(["original"]) / 3)
    assert fast.classifier_units(["oracle"]) == pytest.approx(UNITS["classifier"] * (1 + fast.cf_extra_epochs))
    assert fast.classifier_units(["cgn"]) == pytest.approx(
        UNITS["classifier"] * 2 * (1 + fast.cf_extra_epochs + METHODS["cgn"].extra_epochs))


@pytest.mark.parametrize("bf16_units", [True, False])
def test_auto_picks_the_recipe_that_fits_the_hour_and_options_override_it(
        bf16_units: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: bf16_units)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    picked = Settings.from_recipe("auto")
    assert picked.recipe == ("full" if bf16_units else "fast")
    assert (picked.cgn_steps, picked.gan_steps, picked.epochs, picked.cf_extra_epochs, picked.batch_size) == tuple(
        RECIPES[picked.recipe][k] for k in ("cgn_steps", "gan_steps", "epochs", "cf_extra_epochs", "batch_size"))
    # fp32 asked for on a CPU with bf16 units is as slow as a CPU without them
    assert Settings.from_recipe("auto", precision="fp32").recipe == "fast"
    assert Settings.from_recipe("auto", device="cuda").recipe == "full"
    mixed = Settings.from_recipe("fast", epochs=3, gan_steps=None, cf_extra_epochs=0, batch_size=64)
    assert (mixed.recipe, mixed.epochs, mixed.cgn_steps, mixed.gan_steps, mixed.cf_extra_epochs, mixed.batch_size) == (
        "fast", 3, RECIPES["fast"]["cgn_steps"], RECIPES["fast"]["gan_steps"], 0, 64)
    with pytest.raises(UsageError, match="--recipe quick"):
        Settings.from_recipe("quick")
    # the CLI's help states the recipes' numbers
    help_text = " ".join(CliRunner().invoke(cli, ["bench", "table1", "--help"]).output.split())
    full, fast = RECIPES["full"], RECIPES["fast"]
    assert f"full (CGN {full['cgn_steps']} steps" in help_text
    assert f"classifier {full['epochs']} epochs at batch {full['batch_size']})" in help_text
    assert (f"fast ({fast['cgn_steps']}, {fast['gan_steps']}, {fast['epochs']} at batch {fast['batch_size']}; the rows "
            f"that read counterfactuals {fast['cf_extra_epochs']} more)") in help_text and full["cf_extra_epochs"] == 0


def test_training_accuracy_reads_a_fixed_random_sample_of_the_training_set() -> None:
    data = ImageSet(torch.zeros(50, 1, 2, 2, dtype=torch.uint8), torch.arange(50))
    sample = random_sample(data, 20)
    assert len(sample) == 20 and len(set(sample.labels.tolist())) == 20  # without replacement
    assert sample.labels.tolist() != list(range(20))  # drawn from the whole set, not its head
    assert torch.equal(random_sample(data, 20).labels, sample.labels)  # the same draw every time
    assert random_sample(data, 60) is data


def test_a_changed_setting_recomputes_only_what_depends_on_it(bench: tuple[Path, dict]) -> None:
    out, _ = bench
    args = [*(a if a != "1" else "2" for a in TINY_ANY_LANES), "--workers", "1"]  # --epochs 2: classifiers again
    result = CliRunner().invoke(cli, ["bench", "table1", *args, "--methods", "original", "--out", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "table1.json").read_text())["datasets"]["double_colored"]
    assert not record["rows"]["original"]["0"].get("cached") and record["rows"]["original"]["0"]["epochs"] == 2


def test_the_classifier_lr_reaches_the_optimizer_and_the_table(bench: tuple[Path, dict]) -> None:
    out, first = bench
    rows = first["datasets"]["double_colored"]["rows"]
    assert rows["original"]["0"]["history"][0]["lr"] == 3.0  # the default
    assert rows["irm5"]["0"]["history"][0]["lr"] == 1.0  # IRM's own
    result = CliRunner().invoke(cli, ["bench", "table1", *TINY, "--methods", "original", "--lr", "0.5",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    row = json.loads((out / "table1.json").read_text())["datasets"]["double_colored"]["rows"]["original"]["0"]
    assert not row.get("cached") and row["history"][0]["lr"] == 0.5
    assert "Adadelta lr 0.5 (reference: 1.0)" in (out / "table1.md").read_text()


def test_counterfactuals_per_mask_regenerate_the_set_and_not_the_cgn(bench: tuple[Path, dict]) -> None:
    out, first = bench
    result = CliRunner().invoke(cli, ["bench", "table1", *TINY, "--methods", "cgn_only", "--per-shape", "1",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "table1.json").read_text())["datasets"]["double_colored"]
    assert record["stages"]["0"]["cgn"]["cached"] and not record["stages"]["0"]["counterfactuals"].get("cached")
    assert record["stages"]["0"]["counterfactuals"]["params"]["per_shape"] == 1
    assert first["datasets"]["double_colored"]["stages"]["0"]["counterfactuals"]["params"]["per_shape"] == 10
    assert not record["rows"]["cgn_only"]["0"].get("cached")
    assert "(1 counterfactuals per mask, reference: 10)" in (out / "table1.md").read_text()


def test_cgn_overrides_retrain_the_cgn_and_are_reported(bench: tuple[Path, dict]) -> None:
    out, first = bench
    result = CliRunner().invoke(cli, ["bench", "table1", *TINY, "--methods", "cgn_only,gan,lntl", "--out", str(out),
                                      "--cgn-set", "losses.gan.critic.plugin=mnist.conv"])
    assert result.exit_code == 0, result.output
    record = json.loads((out / "table1.json").read_text())["datasets"]["double_colored"]
    assert not record["stages"]["0"]["cgn"].get("cached")
    # the rows that read the counterfactuals train again; the others do not depend on the CGN
    assert not record["rows"]["cgn_only"]["0"].get("cached")
    assert record["rows"]["gan"]["0"]["cached"] and record["rows"]["lntl"]["0"]["cached"]
    assert record["stages"]["0"]["cgn"]["params"]["overrides"][0] == "losses.gan.critic.plugin=mnist.conv"
    assert "CGN graph overrides: `losses.gan.critic.plugin=mnist.conv`" in (out / "table1.md").read_text()


@pytest.mark.parametrize("args, message", [
    (["--datasets", "fashion"], "--datasets fashion: expected a comma-separated list of colored, double_colored"),
    (["--methods", "erm"], "--methods erm: expected a comma-separated list of original"),
    (["--seeds", "a,b"], "--seeds a,b: expected comma-separated integers"),
    (["--cgn-set", "train.steps"], "--cgn-set: train.steps: expected KEY=VALUE"),
    (["--cgn-set", "train.batch_size=many"], "train.batch_size"),
    (["--cgn-set", "train.steps=6000"], "--cgn-set train.steps=6000: the bench sets this field; use --cgn-steps"),
    (["--cgn-set", "train.precision=bf16"], "the bench sets this field; use --precision"),
    (["--cgn-set", "train.sample_every=100"], "the bench sets this field; the table trains without sample grids"),
    (["--precision", "fp16"], "Invalid value for '--precision'"),
    (["--cgn-steps", "100", "--cgn-max-steps", "50"], "--cgn-max-steps 50: expected at least the CGN's 100 steps"),
])
def test_bad_choices_are_one_line_errors(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["bench", "table1", *args, "--out", str(tmp_path / "t")])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "t").exists()


def test_per_class_accuracy_finds_the_class_a_mean_hides() -> None:
    model = InvariantClassifier("mnist.cnn", {"shape": 10})
    with torch.no_grad():  # answers 3 for every image
        model.heads["shape"].weight.zero_()
        model.heads["shape"].bias.copy_(torch.nn.functional.one_hot(torch.tensor(3), 10).float())
    labels = torch.arange(10).repeat(5)
    data = ImageSet(torch.zeros(50, 3, 32, 32, dtype=torch.uint8), labels, {})
    per_class = per_class_rate(predictions(model, data.images, precision="fp32") == labels, labels)
    assert per_class == [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert unreadable_classes(per_class) == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert accuracy(model, data, precision="fp32") == pytest.approx(0.1)


def test_cue_followed_counts_predictions_of_a_nuisance_class_that_is_not_the_digit() -> None:
    labels = torch.tensor([0, 1, 2, 3])
    data = ImageSet(torch.zeros(4, 3, 32, 32, dtype=torch.uint8), labels,
                    {"shape": labels, "texture": torch.tensor([0, 5, 6, 7]), "background": torch.tensor([9, 9, 9, 9])})
    # image 0: right, and its texture is its digit's, so it follows nothing; image 1 follows its texture,
    # image 2 its background, image 3 neither
    follows = cue_followed(torch.tensor([0, 5, 9, 4]), data)
    assert follows == {"texture": 0.25, "background": 0.25}


def test_a_graph_comment_keeps_the_trained_cgn_and_a_changed_value_retrains_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from scmgen import table1

    graphs = tmp_path / "graphs"
    shutil.copytree(table1.GRAPHS, graphs)
    monkeypatch.setattr(table1, "GRAPHS", graphs)
    graph = graphs / "cgn_double_colored_mnist.yaml"

    def cgn_stage() -> dict:
        result = CliRunner().invoke(cli, ["bench", "table1", *TINY, "--methods", "cgn_only", "--out", str(tmp_path / "t")])
        assert result.exit_code == 0, result.output
        return json.loads((tmp_path / "t" / "table1.json").read_text())["datasets"]["double_colored"]["stages"]["0"]["cgn"]

    assert not cgn_stage().get("cached")
    graph.write_text("# a comment that changes nothing\n" + graph.read_text())
    assert cgn_stage()["cached"]
    graph.write_text(graph.read_text().replace("weight: 0.3", "weight: 0.2"))
    assert not cgn_stage().get("cached")


def test_settings_refuse_an_override_of_a_field_the_bench_sets() -> None:
    """Python users get the CLI's refusal too: the bench would otherwise overwrite the value silently."""
    from scmgen.errors import UsageError

    for override, option in (("train.steps=5000", "--cgn-steps"), ("train.seed = 3", "--seeds")):
        with pytest.raises(UsageError, match=f"the bench sets this field; use {option}"):
            Settings(datasets=["colored"], cgn_overrides=[override]).check()
    Settings(datasets=["colored"], cgn_overrides=["train.ema=0.99"]).check()  # any other field is fine


def test_a_collapse_warning_points_to_the_grid_of_its_own_seed(tmp_path: Path) -> None:
    text = io.StringIO()
    table = Table1(Settings(seeds=[0, 2]), tmp_path, progress=False, console=Console(file=text, width=400),
                   writes=False)
    row = {"counterfactual_shape_fidelity_per_class": [0.9] * 4 + [0.1] + [0.9] * 5}
    for seed in (0, 2):
        table._warn_unreadable("wildlife", seed, row)
    first, other = text.getvalue().splitlines()
    assert "seed 0: only 10% of the do(shape=4)" in first and f"{tmp_path / 'wildlife'}.png" in first
    # the data set's PNG shows the first seed only: a later seed's warning names its own CGN's grid
    assert "seed 2" in other and f"counterfactuals.png in {tmp_path / 'cache' / 'wildlife' / 'seed2'}/cgn-*/" in other

"""One checkpoint's counterfactual quality as numbers (JSON), a readable report (Markdown) and a
panel (real images, their reconstructions and counterfactuals), plus a comparison of several."""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from scmgen.abduction import (
    Encoder,
    ImageDistance,
    abduct,
    abduction_targets,
    counterfactual_panel,
    encoder_directory,
    factual_values,
    load_or_train_encoder,
    random_labels,
)
from scmgen.checkpoint import atomic_write_text
from scmgen.data import to_float
from scmgen.evaluation.metrics import (
    composition,
    effectiveness,
    effectiveness_summary,
    label_accuracy,
    minimality,
    realism,
)
from scmgen.evaluation.predictors import load_or_train_predictors, real_data
from scmgen.images import save_image_atomic
from scmgen.model import SCM, Values
from scmgen.provenance import run_metadata
from scmgen.sampling import intervenable_labels

PANEL_IMAGES = 8


class Stopwatch:
    """Wall seconds per named section, for the report."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        result = fn()
        self.seconds[name] = round(time.perf_counter() - start, 2)
        return result


def independent_sample(model: SCM, n: int, generator: torch.Generator) -> Values:
    """n samples with every inferred label drawn independently (a cGAN: its one label)."""
    noise_sizes, label_sizes = abduction_targets(model)
    exo = model.sample_exogenous(n, generator)
    with torch.no_grad():
        return factual_values(model, {k: exo[k] for k in noise_sizes}, random_labels(model, label_sizes, n, generator))


def class_factor_of(factors: Mapping[str, torch.Tensor], labels: torch.Tensor) -> str | None:
    """The factor that is the data set's class label (MNIST: the digit's shape)."""
    return next((f for f, t in factors.items() if torch.equal(t, labels)), None)


def evaluate_model(model: SCM, checkpoint: str | Path, *, n: int = 500, n_generated: int = 1000,
                   n_composition: int = 32, steps: int = 10, seed: int = 0, encoder_steps: int = 600,
                   predictor_epochs: int = 2, progress: bool = True, say: Callable[[str], None] = print,
                   predictor_root: Path | None = None) -> tuple[dict[str, Any], Any]:
    """Every metric for one trained model (directory `checkpoint`, where its encoder is kept).
    Real images: the first `n` of the graph's test split (factors independent of the label),
    abducted with `steps` refinement steps; `n_composition` of them for composition. Returns the
    results (JSON-ready) and the panel image."""
    checkpoint = Path(checkpoint)
    source = str(checkpoint / "graph.yaml")
    watch = Stopwatch()
    predictors = watch("predictors", lambda: load_or_train_predictors(
        model.spec, source, predictor_epochs, model.device, progress, say, predictor_root))
    encoder = watch("encoder", lambda: load_or_train_encoder(model, encoder_directory(checkpoint), encoder_steps,
                                                             progress=progress, say=say))
    test = real_data(model.spec, source, "test")
    n = min(n, len(test) // 2)  # the other half is the realism reference, disjoint from the real set
    real = to_float(test.images[:n]).to(model.device)
    truth = {f: t[:n] for f, t in test.factors.items()}
    class_factor = class_factor_of(test.factors, test.labels)
    distance = ImageDistance().to(model.device)
    generator = torch.Generator().manual_seed(seed)

    found = watch("abduction", lambda: abduct(model, encoder, real, steps, distance=distance))
    generated = independent_sample(model, max(n_generated, n), generator)
    out = model.spec.output
    eff_real, cf_images = watch("effectiveness_real", lambda: effectiveness(
        model, predictors, found.values, truth, class_factor, generator))
    eff_gen, _ = watch("effectiveness_generated", lambda: effectiveness(
        model, predictors, generated, predictors.read_out(generated[out]), class_factor, generator))
    results: dict[str, Any] = {
        "graph": model.spec.name, "checkpoint": str(checkpoint), "data": model.spec.data.plugin,  # type: ignore[union-attr]
        "settings": {"n": n, "n_generated": n_generated, "n_composition": min(n_composition, n), "steps": steps,
                     "seed": seed},
        "lpips": distance.lpips_note,
        "predictors": {"directory": str(predictors.directory), "test_accuracy": predictors.test_accuracy,
                       "trained_now": predictors.trained_now},
        "encoder": {"directory": str(encoder_directory(checkpoint)), **_encoder_info(encoder)},
        "abduction": {**found.summary(), "label_accuracy": label_accuracy(found, truth, model, class_factor)},
        "effectiveness": {"real": eff_real, "generated": eff_gen,
                          "summary": {"real": effectiveness_summary(eff_real),
                                      "generated": effectiveness_summary(eff_gen)}},
        "minimality": {"generated": watch("minimality", lambda: minimality(model, generated, generator)),
                       "real": minimality(model, found.values, generator)},
        "composition": watch("composition", lambda: composition(model, encoder, real[:n_composition], steps,
                                                                distance)),
        "realism": watch("realism", lambda: realism(predictors, test.images[n:], real, {
            "generated": generated[out][:n], "reconstruction": found.reconstruction,
            "counterfactual": one_each(cf_images)})),
    }
    image = counterfactual_panel(model, real[:PANEL_IMAGES], found.subset(slice(0, PANEL_IMAGES)),
                                 panel_interventions(model))
    results["seconds"] = watch.seconds
    return results, image


def one_each(made: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Image i of the counterfactuals made by intervention i mod k: one counterfactual per image,
    the interventions in equal shares."""
    stacked = torch.stack(list(made.values()))  # (k, N, C, H, W)
    index = torch.arange(stacked.shape[1])
    return stacked[index % stacked.shape[0], index]


def _encoder_info(encoder: Encoder) -> dict[str, Any]:
    training = encoder.meta.get("training", {})
    return {"label_accuracy_on_samples": training.get("label_accuracy"), "training_steps": training.get("steps")}


def panel_interventions(model: SCM) -> list[dict[str, int]]:
    """One intervention per intervenable label, with a fixed, readable value (2, 5, 8, ...)."""
    return [{node: (2 + 3 * i) % model.spec.nodes[node].classes} for i, node in enumerate(intervenable_labels(model))]


# -- writing --------------------------------------------------------------------------------
def write_report(out: str | Path, results: dict[str, Any], image: Any, device: Any = "cpu",
                 **extra: Any) -> dict[str, Path]:
    """OUT/report.json (with run metadata), OUT/report.md and OUT/panel.png, each replaced atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {**run_metadata(device, **extra), "results": results}
    atomic_write_text(out / "report.json", json.dumps(payload, indent=2, sort_keys=True) + "\n")
    atomic_write_text(out / "report.md", markdown(results))
    save_image_atomic(image, out / "panel.png")
    return {"json": out / "report.json", "markdown": out / "report.md", "panel": out / "panel.png"}


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _num(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(r: Mapping[str, Any]) -> str:
    """The report of one checkpoint as Markdown tables."""
    s = r["settings"]
    ab = r["abduction"]
    lines = [f"# Counterfactual quality: {r['graph']}", "",
             f"Checkpoint `{r['checkpoint']}`, data `{r['data']}`. Real images: the first {s['n']} of the test split "
             f"(factors independent of the label); {s['n_generated']} generated samples with independent labels. "
             f"{r['lpips']}. Anti-causal predictors' accuracy on real test images: "
             + ", ".join(f"{f} {_pct(a)}" for f, a in r["predictors"]["test_accuracy"].items()) + ".", "",
             "## Abduction of real test images", "",
             "| | L1 | LPIPS |", "|---|---|---|",
             f"| encoder only | {_num(ab['l1_encoder'])} | {_num(ab['lpips_encoder'])} |",
             f"| encoder + {s['steps']} steps | {_num(ab['l1'])} | {_num(ab['lpips'])} |", "",
             "Inferred labels equal to the true factor: "
             + (", ".join(f"{k} {_pct(v)}" for k, v in ab["label_accuracy"].items()) or "-") + ".", "",
             "## Effectiveness", "",
             ("Each intervention asks every image for another class than its own. Entries: how often the "
             "predictors read the intervened factor as the asked value (**bold**), and every other factor as it was "
             "before (real images: their true factors; generated ones: the read-out before the intervention)."), ""]
    for source in ("real", "generated"):
        lines += _effectiveness_table(r["effectiveness"][source], f"counterfactuals of {source} images")
    lines += _minimality_lines(r["minimality"])
    lines += ["## Composition", "", (f"The null intervention (abduct, regenerate) repeated m times on "
              f"{s['n_composition']} real images; distance to the originals."), "",
              "| m | L1 | LPIPS |", "|---|---|---|"]
    lines += [f"| {m} | {_num(v['l1'])} | {_num(v['lpips'])} |" for m, v in r["composition"].items()]
    re = r["realism"]
    lines += ["", "## Realism", "", f"Frechet distance to {re['reference_images']} real test images (the rest of "
              f"the test split) in the {re['feature_space']} feature space, each set of {s['n']} images; "
              f"`real`: {s['n']} real test images (the floor that the sample size sets; reconstructions and "
              "counterfactuals are of these). "
              + ("FID: " + re["fid_note"] + "." if re.get("fid_note") else ""), "",
              "| set | FD | FID |", "|---|---|---|"]
    fid = re.get("fid") or {}
    lines += [f"| {k} | {_num(v, 2)} | {_num(fid.get(k), 2)} |" for k, v in re["fd"].items()]
    lines += ["", "Wall time (s): " + ", ".join(f"{k} {v}" for k, v in r["seconds"].items()) + ".", ""]
    return "\n".join(lines)


def _effectiveness_table(table: Mapping[str, Any], what: str) -> list[str]:
    factors = list(next(iter(table.values()))["read_out"]) if table else []
    lines = [f"{what}:", "", "| do | " + " | ".join(factors) + " |", "|---|" + "---|" * len(factors)]
    for node, v in table.items():
        cells = []
        for f in factors:
            c = v["read_out"][f]
            cells.append(f"**{_pct(c['asked'])}**" if c["intended"] == "asked" else _pct(c["kept"]))
        lines.append(f"| {node} | " + " | ".join(cells) + " |")
    return lines + [""]


def _minimality_lines(m: Mapping[str, Any]) -> list[str]:
    lines = ["## Minimality", ""]
    gen = m["generated"]
    if not gen.get("applicable"):
        return lines + [f"Not applicable: {gen['reason']}.", ""]
    lines += [(f"After do(node) the mechanisms that do not descend from it must keep their outputs; mean |pixel "
              f"change| (pixels in [-1, 1]) inside and outside the mask `{gen['mask']}` (> 0.5)."), "",
              "| images | do | unchanged mechanisms | bit-identical | change inside mask | change outside mask |",
              "|---|---|---|---|---|---|"]
    for source in ("generated", "real"):
        for node, v in m[source]["nodes"].items():
            lines.append(f"| {source} | {node} | {', '.join(v['unchanged_mechanisms'])} | "
                         f"{'yes' if v['exact'] else 'NO'} | {_num(v['pixel_change_inside_mask'])} | "
                         f"{_num(v['pixel_change_outside_mask'])} |")
    return lines + [""]


def comparison_rows(reports: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The headline numbers of each checkpoint, one row each."""
    rows = []
    for name, r in reports.items():
        comp = r["composition"]
        rows.append({
            "checkpoint": name, "graph": r["graph"], "data": r["data"],
            "abduction_l1_encoder": r["abduction"]["l1_encoder"], "abduction_l1": r["abduction"]["l1"],
            "abduction_lpips": r["abduction"]["lpips"],
            "effectiveness_changed": r["effectiveness"]["summary"]["real"]["changed"],
            "effectiveness_kept": r["effectiveness"]["summary"]["real"]["kept"],
            "effectiveness_changed_generated": r["effectiveness"]["summary"]["generated"]["changed"],
            "effectiveness_kept_generated": r["effectiveness"]["summary"]["generated"]["kept"],
            "composition_l1_1": comp.get("1", {}).get("l1"), "composition_l1_10": comp.get("10", {}).get("l1"),
            "composition_lpips_10": comp.get("10", {}).get("lpips"),
            "fd_real": r["realism"]["fd"]["real"], "fd_generated": r["realism"]["fd"].get("generated"),
            "fd_counterfactual": r["realism"]["fd"].get("counterfactual"),
        })
    return rows


def compare(reports: Mapping[str, Mapping[str, Any]]) -> str:
    """A Markdown table comparing checkpoints on the headline numbers."""
    lines = ["# Counterfactual quality: comparison", "",
             ("Real test images; effectiveness = the intervened factor reads as asked (changed) / the others as "
             "before (kept), averaged over the intervenable labels; composition after 1 and 10 null interventions; "
             "FD in the predictors' feature space."), "",
             ("| checkpoint | abduction L1 enc / refined | changed | kept | changed (gen.) | kept (gen.) | "
             "comp. L1 m=1 | comp. L1 m=10 | comp. LPIPS m=10 | FD real (floor) | FD generated | FD counterfactual |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in comparison_rows(reports):
        lines.append(
            f"| {row['checkpoint']} | {_num(row['abduction_l1_encoder'])} / {_num(row['abduction_l1'])} | "
            f"{_pct(row['effectiveness_changed'])} | {_pct(row['effectiveness_kept'])} | "
            f"{_pct(row['effectiveness_changed_generated'])} | {_pct(row['effectiveness_kept_generated'])} | "
            f"{_num(row['composition_l1_1'])} | {_num(row['composition_l1_10'])} | "
            f"{_num(row['composition_lpips_10'])} | {_num(row['fd_real'], 2)} | "
            f"{_num(row['fd_generated'], 2)} | {_num(row['fd_counterfactual'], 2)} |")
    return "\n".join(lines) + "\n"


def write_comparison(out: str | Path, reports: Mapping[str, Mapping[str, Any]], device: Any = "cpu",
                     **extra: Any) -> dict[str, Path]:
    """OUT/comparison.md and OUT/comparison.json, replaced atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {**run_metadata(device, **extra), "rows": comparison_rows(reports)}
    atomic_write_text(out / "comparison.json", json.dumps(payload, indent=2, sort_keys=True) + "\n")
    atomic_write_text(out / "comparison.md", compare(reports))
    return {"json": out / "comparison.json", "markdown": out / "comparison.md"}

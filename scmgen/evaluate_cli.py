"""`scmgen evaluate`: measured counterfactual quality of one or more trained checkpoints
(effectiveness, minimality, composition, realism), as Markdown, JSON and a panel each, and a
comparison table when there are several."""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import click


def checkpoint_names(specs: list[Any], paths: list[str]) -> list[str]:
    """A folder name per checkpoint: the graph's name, plus its data set where graphs repeat
    (three cgan_mnist runs), plus a number where that still repeats."""
    names = [s.name for s in specs]
    names = [f"{n}-{s.data.plugin.split('.')[-1]}" if names.count(n) > 1 and s.data else n
             for n, s in zip(names, specs)]
    return [f"{n}-{i}" if names.count(n) > 1 else n for i, n in enumerate(names)]


@click.command("evaluate", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("checkpoints", nargs=-1, required=True)
@click.option("--out", default=Path("runs/evaluate"), show_default=True, type=click.Path(path_type=Path),
              help="Report folder: report.md/json and panel.png (with several checkpoints one subfolder each, "
                   "plus comparison.md/json).")
@click.option("--n", default=500, show_default=True, type=click.IntRange(2),
              help="Real test images abducted for effectiveness, minimality and realism.")
@click.option("--n-generated", default=1000, show_default=True, type=click.IntRange(2),
              help="Generated samples for effectiveness, minimality and realism.")
@click.option("--n-composition", default=32, show_default=True, type=click.IntRange(1),
              help="Real test images for composition (10 abductions in a row each).")
@click.option("--steps", default=10, show_default=True, type=click.IntRange(0),
              help="Optimisation steps of abduction after the encoder; 0 = encoder only.")
@click.option("--encoder-steps", default=600, show_default=True, type=click.IntRange(1),
              help="Training steps of the abduction encoder when a checkpoint has none yet.")
@click.option("--predictor-epochs", default=2, show_default=True, type=click.IntRange(1),
              help="Epochs of the anti-causal predictors when the data set has none cached yet.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", default="cpu", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def evaluate_command(checkpoints: tuple[str, ...], out: Path, n: int, n_generated: int, n_composition: int,
                     steps: int, encoder_steps: int, predictor_epochs: int, seed: int, device: str,
                     quiet: bool) -> None:
    """Measure the counterfactuals of trained CHECKPOINTs (model or training-run folders of graphs
    with a data section, e.g. the MNIST CGNs and the cGAN baseline):

    \b
    effectiveness  anti-causal predictors (trained once per data set on real images with the
                   factors decorrelated, cached) read every factor off counterfactuals of real
                   test images and of samples: the intervened one must change to the asked
                   value, the others must not
    minimality     mechanisms that do not descend from the intervened node keep their outputs
                   bit for bit; pixel change inside / outside the mask
    composition    the null intervention on real images, 1 and 10 times: L1 and LPIPS to the original
    realism        Frechet distance to real test images in the predictors' feature space (and FID
                   when Inception-v3 weights are cached)

    The abduction encoder is trained on first use and kept in CHECKPOINT/encoder.

    \b
    Examples:
      scmgen evaluate runs/cgn_double_colored_mnist --out runs/eval_dc
      scmgen evaluate runs/dc runs/colored runs/wild runs/cgan --steps 0 --out runs/eval_all
    """
    import time

    import torch

    from scmgen.cli import resolve_checkpoint
    from scmgen.evaluation import evaluate_model, write_comparison, write_report
    from scmgen.model import SCM
    from scmgen.spec import parse_spec, read_yaml

    dirs = [resolve_checkpoint(c) for c in checkpoints]  # every path is checked before any work
    specs = [parse_spec(read_yaml(d / "graph.yaml"), str(d / "graph.yaml")) for d in dirs]
    for d, spec in zip(dirs, specs):
        if spec.data is None:
            from scmgen.errors import SpecError

            raise SpecError(str(d / "graph.yaml"), "data",
                            "evaluation needs real images with known factors: the graph has no data section")
    names = checkpoint_names(specs, list(checkpoints))
    from scmgen.checkpoint import check_writable_parent

    check_writable_parent(out / "report")
    say = functools.partial(click.echo, err=True)
    reports: dict[str, Any] = {}
    for name, directory in zip(names, dirs):
        start = time.perf_counter()
        torch.manual_seed(seed)
        model = SCM.from_pretrained(directory, device=device)
        results, panel = evaluate_model(model, directory, n=n, n_generated=n_generated, n_composition=n_composition,
                                        steps=steps, seed=seed, encoder_steps=encoder_steps,
                                        predictor_epochs=predictor_epochs, progress=not quiet, say=say)
        results["seconds"]["total"] = round(time.perf_counter() - start, 2)
        folder = out if len(dirs) == 1 else out / name
        written = write_report(folder, results, panel, model.device, seed=seed)
        reports[name] = results
        eff = results["effectiveness"]["summary"]["real"]
        click.echo(f"{name}: effectiveness {_pct(eff['changed'])} changed / {_pct(eff['kept'])} kept, "
                   f"composition L1@10 {results['composition'].get('10', {}).get('l1', float('nan')):.3f}, "
                   f"FD counterfactual {results['realism']['fd']['counterfactual']:.2f}; "
                   f"wrote {written['markdown']} ({results['seconds']['total']:.0f} s)")
    if len(dirs) > 1:
        written = write_comparison(out, reports, device, seed=seed)
        click.echo(f"wrote {written['markdown']}")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"

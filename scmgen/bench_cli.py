"""`scmgen bench`: reproductions of published results through the engine (today: the CGN paper's Table 1)."""
from __future__ import annotations

import sys

import click

from scmgen.errors import UsageError
from scmgen.precision import PRECISIONS


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"--seeds {text}: expected comma-separated integers, e.g. 0,1,2") from None


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


@click.group("bench")
def bench_group() -> None:
    """Reproduce published results with the shipped graphs."""


@bench_group.command("table1")
@click.option("--datasets", default="colored,double_colored,wildlife", show_default=True,
              help="Comma-separated: colored, double_colored, wildlife.")
@click.option("--methods", default="original,gan,irm2,irm5,lntl,cgn,cgn_only,vrex,groupdro,oracle", show_default=True,
              help="Comma-separated rows of the table.")
@click.option("--seeds", default="0", show_default=True, help="Comma-separated seeds; mean and spread when several.")
@click.option("--out", default="results/table1", show_default=True, type=click.Path(),
              help="Writes table1.md, table1.json and a PNG per data set; stages are cached in OUT/cache.")
@click.option("--recipe", type=click.Choice(["auto", "full", "fast"]), default="auto", show_default=True,
              help="The training budget: full (CGN 4000 steps, the cGAN graph's 2500, classifier 3 epochs at "
                   "batch 64) or fast (2000, 500, 1 at batch 32; the rows that read counterfactuals 1 more), which "
                   "fits the hour on a 2-core CPU without bf16 units. auto: full on a GPU or a CPU with bf16 units, "
                   "else fast. The options --cgn-steps, --gan-steps, --epochs, --cf-extra-epochs and --batch-size "
                   "override it.")
@click.option("--cgn-steps", type=click.IntRange(1), default=None, help="CGN training steps (default: the recipe's).")
@click.option("--cgn-set", "cgn_overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a field of the CGN graphs, e.g. --cgn-set losses.gan.critic.plugin=mnist.conv "
                   "(repeatable; for ablations: the stages are cached per override).")
@click.option("--cgn-max-steps", type=click.IntRange(1), default=None,
              help="A CGN whose masks of some digit a classifier of MNIST's real masks cannot read trains on, half "
                   "its steps at a time, up to this many steps (default: twice --cgn-steps; as many: check only).")
@click.option("--gan-steps", type=click.IntRange(1), default=None, help="cGAN training steps (default: the recipe's).")
@click.option("--counterfactuals", "n_counterfactuals", type=click.IntRange(10), default=50_000, show_default=True,
              help="Images in each counterfactual set and each cGAN sample set (reference: 100000).")
@click.option("--per-shape", type=click.IntRange(1), default=10, show_default=True,
              help="Counterfactuals per mask: each mask drawn gets this many textures and backgrounds (reference: 10).")
@click.option("--epochs", type=click.IntRange(1), default=None,
              help="Classifier epochs (default: the recipe's; reference: 10).")
@click.option("--cf-extra-epochs", type=click.IntRange(0), default=None,
              help="Epochs the rows that read counterfactuals (the CGN rows, the ceiling) train beyond --epochs "
                   "(default: the recipe's).")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=3.0, show_default=True,
              help="The classifiers' Adadelta learning rate, decayed x0.7 per epoch (reference: 1.0 over 10 "
                   "epochs; 3.0 makes up for the shorter schedule, see results/ablations/classifier_lr). IRM rows keep 1.0.")
@click.option("--batch-size", type=click.IntRange(2), default=None,
              help="The classifiers' batch (default: the recipe's; reference: 64).")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="auto: bf16 where the device computes it natively (AMX / AVX512-BF16 CPUs, recent GPUs), else "
                   "fp32 (bf16 is emulated, many times slower, elsewhere).")
@click.option("--limit", type=click.IntRange(100), default=None,
              help="Use only the first N training and test images (smoke runs).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Parallel lanes, each a process on its share of the cores (default: one per core on CPU, "
                   "at most 4; 1 on a GPU). Results depend on the threads per lane (summation order).")
@click.option("--quiet", is_flag=True, help="No progress display.")
def table1_command(datasets: str, methods: str, seeds: str, out: str, recipe: str, cgn_steps: int | None,
                   cgn_max_steps: int | None, cgn_overrides: tuple[str, ...], gan_steps: int | None,
                   n_counterfactuals: int, per_shape: int, epochs: int | None, cf_extra_epochs: int | None, lr: float,
                   batch_size: int | None, precision: str, limit: int | None,
                   device: str, workers: int | None, quiet: bool) -> None:
    """Table 1 of the CGN paper: a classifier per method on colored, double-colored and Wildlife
    MNIST, tested on images whose colours / textures are independent of the digit.

    \b
    Examples:
      scmgen bench table1
      scmgen bench table1 --datasets wildlife --methods original,cgn --seeds 0,1,2
    """
    from scmgen.table1 import Settings, Table1
    from scmgen.table1_lanes import default_workers, run_lanes

    settings = Settings.from_recipe(recipe, datasets=_names(datasets), methods=_names(methods), seeds=_ints(seeds),
                                    cgn_steps=cgn_steps, cgn_max_steps=cgn_max_steps,
                                    cgn_overrides=list(cgn_overrides), gan_steps=gan_steps,
                                    counterfactuals=n_counterfactuals, per_shape=per_shape, epochs=epochs,
                                    cf_extra_epochs=cf_extra_epochs, lr=lr,
                                    batch_size=batch_size, precision=precision, limit=limit, device=device)
    if not quiet:
        why = {"full": "a GPU or bf16 units", "fast": "a CPU without bf16 units: fp32"}[settings.recipe]
        click.echo(f"recipe {settings.recipe}" + (f" (auto: {why})" if recipe == "auto" else "")
                   + f": CGN {settings.cgn_steps} steps (up to {settings.cgn_steps_at_most()} when a digit's masks are "
                   f"unreadable), cGAN {settings.gan_steps or 'its graph'} steps, classifiers "
                   f"{settings.epochs} epoch(s) at batch {settings.batch_size} (counterfactuals only and the ceiling: "
                   f"{settings.row_epochs('cgn_only')}, Original + CGN: {settings.row_epochs('cgn')})", err=True)
    workers = workers or default_workers(device)
    try:
        payload = run_lanes(settings, out, workers, progress=not quiet) if workers > 1 \
            else Table1(settings, out, progress=not quiet).run()
    except KeyboardInterrupt:
        click.echo(f"interrupted; finished stages are cached in {out}/cache: rerun the same command to go on",
                   err=True)
        sys.exit(130)
    click.echo(f"wrote {out}/table1.md, {out}/table1.json and a PNG per data set "
               f"({payload['wall_seconds'] / 60:.1f} min)")

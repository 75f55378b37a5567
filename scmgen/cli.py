"""The `scmgen` command line. Bad input ends in one line on stderr and exit code 2; a runtime
failure in one line and exit code 1; `--debug` shows the traceback instead."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from scmgen.bench_cli import bench_group
from scmgen.classify_cli import classify_command
from scmgen.counterfactual_cli import counterfactual_command
from scmgen.errors import ScmgenError, SpecError, UsageError
from scmgen.evaluate_cli import evaluate_command
from scmgen.precision import PRECISIONS
from scmgen.weights_cli import weights_group

REPO_ROOT = Path(__file__).resolve().parent.parent
GRAPHS_DIR = REPO_ROOT / "graphs"
DEFAULT_GRAPH = "cgn_double_colored_mnist"


def resolve_graph(name: str) -> Path:
    """A path, or the name of a shipped graph (`cgn_wildlife_mnist`)."""
    p = Path(name)
    if p.exists() or p.suffix in (".yaml", ".yml") or "/" in name:
        return p
    shipped = GRAPHS_DIR / f"{name}.yaml"
    if shipped.exists():
        return shipped
    known = ", ".join(sorted(q.stem for q in GRAPHS_DIR.glob("*.yaml")))
    raise SpecError(name, "", f"no such file or shipped graph; shipped graphs: {known}")


def resolve_checkpoint(path: str) -> Path:
    """A model directory, a training output directory (its model/ or latest checkpoint)."""
    p = Path(path)
    if (p / "graph.yaml").exists():
        return p
    if (p / "model" / "graph.yaml").exists():
        return p / "model"
    latest = p / "checkpoints" / "latest"
    if latest.exists():
        return p / "checkpoints" / latest.read_text().strip()
    if not p.exists():
        raise SpecError(path, "", "no such checkpoint directory")
    raise SpecError(path, "graph.yaml", "not a checkpoint: expected graph.yaml (or model/ or checkpoints/latest)")


def load_model(checkpoint: str, device: str) -> Any:
    """A trained checkpoint, or a graph file (its mechanisms from pretrained weights, as the
    ImageNet CGN is before fine-tuning). Says so when weights were replaced by random ones."""
    from scmgen.model import SCM

    p = Path(checkpoint)
    if p.suffix in (".yaml", ".yml") or (not p.exists() and (GRAPHS_DIR / f"{checkpoint}.yaml").exists()):
        model = SCM.from_yaml(resolve_graph(checkpoint)).to(device).eval()
    else:
        model = SCM.from_pretrained(resolve_checkpoint(checkpoint), device=device)
    note_random_init(model)
    return model


def note_random_init(model: Any) -> None:
    from scmgen.weights import used_random_init

    if used_random_init():
        click.echo(f"note: random weights for {', '.join(used_random_init())} (--random-init): "
                   "outputs show the pipeline, not a trained model", err=True)


class Main(click.Group):
    """Turns scmgen errors into one line and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        debug = bool(ctx.params.get("debug"))
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except ScmgenError as e:
            if debug:
                raise
            click.echo(f"error: {e}", err=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as e:  # noqa: BLE001 - the one place that turns surprises into a line
            if debug:
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            click.echo(f"error: {type(e).__name__}: {first} (run with --debug for the traceback)", err=True)
            sys.exit(1)


@click.group(cls=Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.option("--random-init", is_flag=True,
              help="Use random weights where pretrained ones are missing (outputs say so).")
@click.version_option(package_name="scmgen")
def cli(debug: bool, random_init: bool) -> None:
    """scmgen: causal generative models of images.

    \b
    Examples:
      scmgen train                                   # the default MNIST CGN: 2500 steps, ~9 min on 2 cores
      scmgen train graphs/cgn_wildlife_mnist.yaml --set train.batch_size=64 --out runs/wild
      scmgen intervene runs/wild --do shape=3 --do texture=7 --out grid.png
      scmgen generate runs/wild --n 100000 --per-shape 10 --out data/wild_cf
      scmgen validate graphs/*.yaml
    """
    from scmgen.weights import set_random_init

    set_random_init(random_init)


def _random_init(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        from scmgen.weights import set_random_init

        set_random_init(True)


random_init_option = click.option("--random-init", is_flag=True, expose_value=False, callback=_random_init,
                                  help="Use random weights where pretrained ones are missing (outputs say so).")
set_option = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                          help="Override a spec field, e.g. --set train.batch_size=64 (repeatable).")
device_option = click.option("--device", default=None, help="cpu, cuda, cuda:1 ... (default: the graph's train.device).")


@cli.command()
@click.argument("graph", required=False, default=DEFAULT_GRAPH)
@set_option
@click.option("--out", type=click.Path(), default=None, help="Output directory (default: runs/<graph name>).")
@click.option("--resume", is_flag=True, help="Continue from the latest checkpoint in --out.")
@device_option
@click.option("--quiet", is_flag=True, help="No progress bar.")
@random_init_option
def train(graph: str, overrides: tuple[str, ...], out: str | None, resume: bool, device: str | None, quiet: bool) -> None:
    """Train GRAPH (a YAML file or a shipped graph name; default: the double-colored MNIST CGN).

    Writes OUT/checkpoints/, OUT/model/ (safetensors + graph.yaml + meta.json),
    OUT/counterfactuals.png and TensorBoard logs in OUT/tensorboard.

    \b
    Examples:
      scmgen train
      scmgen train cgn_colored_mnist --set train.steps=2000 --out runs/colored
      scmgen train runs/colored/model/graph.yaml --out runs/colored --resume
    """
    from scmgen.distributed import cleanup, init_from_env
    from scmgen.model import SCM
    from scmgen.training_run import train_run

    path = resolve_graph(graph)
    model = SCM.from_yaml(path, overrides)
    out_dir = Path(out or f"runs/{model.spec.name}")
    info = init_from_env(device or model.spec.train.device)  # torchrun: one process per device
    note_random_init(model)
    result = train_run(model, path, out_dir, resume=resume, progress=not quiet, info=info,
                       on_resume=lambda step: click.echo(f"resumed from step {step}"))
    cleanup()
    if not info.is_main:
        return
    state = "interrupted at" if result.interrupted else "finished"
    where = f"model: {out_dir / 'model'}; counterfactual grid: {out_dir / 'counterfactuals.png'}"
    timed = f" ({result.steps_run} steps from step {result.start_step})" if result.start_step else ""
    click.echo(f"{state} step {result.step}/{result.total_steps} in {result.seconds:.1f} s{timed}; {where}")
    if result.interrupted:
        sys.exit(130)


def _sample_command(checkpoint: str, do_items: tuple[str, ...], n: int, seed: int, out: str | None,
                    device: str, default_name: str, strict: bool) -> None:
    from scmgen.images import save_image_atomic
    from scmgen.interventions import check_intervenable, parse_do, resolve_class
    from scmgen.sampling import sample_grid
    from scmgen.spec import LabelNode

    do: dict[str, Any] = dict(parse_do(list(do_items)))
    model = load_model(checkpoint, device)
    check_intervenable(model.spec, do)
    for node, value in do.items():
        if isinstance(model.spec.nodes[node], LabelNode):
            resolution = resolve_class(model.spec, node, value, strict=strict)
            if not value.strip().isdigit():
                click.echo(f"{node}: {resolution.describe()}")
            do[node] = resolution.index
    image = sample_grid(model, n, do, seed)
    path = save_image_atomic(image, out or default_name)
    click.echo(f"wrote {path}")


n_option = click.option("--n", default=64, show_default=True, type=click.IntRange(1, 4096), help="Number of images.")
seed_option = click.option("--seed", default=0, show_default=True, type=int)


@cli.command()
@click.argument("checkpoint")
@click.option("--do", "do_items", multiple=True, metavar="NODE=VALUE", help="Optional interventions.")
@random_init_option
@n_option
@seed_option
@click.option("--out", default=None, help="PNG path (default: samples.png).")
@click.option("--device", default="cpu", show_default=True)
def sample(checkpoint: str, do_items: tuple[str, ...], n: int, seed: int, out: str | None, device: str) -> None:
    """Draw N samples from a trained model into a PNG grid.

    \b
    Example: scmgen sample runs/cgn_double_colored_mnist --n 64 --out samples.png
    """
    _sample_command(checkpoint, do_items, n, seed, out, device, "samples.png", strict=False)


@cli.command()
@click.argument("checkpoint", required=False, default="cgn_imagenet")
@click.option("--do", "do_items", multiple=True, required=True, metavar="NODE=VALUE",
              help="Intervention, e.g. --do shape=3 --do texture=7 (class ids or names).")
@click.option("--n", default=8, show_default=True, type=click.IntRange(1, 4096), help="Number of images.")
@random_init_option
@seed_option
@click.option("--out", default=None, help="PNG path (default: intervention.png).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--strict", is_flag=True, help="An ambiguous class name is an error listing the candidates.")
def intervene(checkpoint: str, do_items: tuple[str, ...], n: int, seed: int, out: str | None, device: str,
              strict: bool) -> None:
    """Sample under do(NODE=VALUE) interventions into a PNG grid. CHECKPOINT is a trained model
    or a graph (default: the ImageNet CGN from pretrained BigGANs). Values are class ids or names
    (ImageNet names take synonyms: 'cat' resolves to a canonical class and says which).

    \b
    Examples:
      scmgen intervene runs/cgn_double_colored_mnist --do shape=3 --do background=7 --n 16
      scmgen intervene --do shape=cat --do texture=elephant --do background=beach --random-init
    """
    _sample_command(checkpoint, do_items, n, seed, out, device, "intervention.png", strict=strict)


@cli.command()
@click.argument("checkpoint")
@click.option("--n", default=100000, show_default=True, type=click.IntRange(1), help="Number of images.")
@click.option("--per-shape", default=10, show_default=True, type=click.IntRange(1),
              help="Counterfactuals per shape draw (same mask, new texture/background).")
@click.option("--out", required=True, type=click.Path(), help="Output directory (written atomically).")
@click.option("--format", "image_format", type=click.Choice(["png", "safetensors"]), default="png", show_default=True)
@seed_option
@click.option("--batch-size", default=100, show_default=True, type=click.IntRange(1),
              help="Images per generator pass (about 100 keeps the activations in the CPU caches).")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
              help="auto: bf16 where the device computes it natively (AMX / AVX512-BF16 CPUs, recent GPUs), else fp32.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--part-size", default=10000, show_default=True, type=click.IntRange(1),
              help="Images per part (a shard file; the unit a killed run resumes from).")
@click.option("--shard", default="0/1", show_default=True, metavar="I/K",
              help="Write only parts I, I+K, ... so K processes or machines can share one data set.")
@click.option("--truncation", default=None, metavar="PSI | NODE=PSI,...",
              help="Draw noise from PSI x N(0, 1) truncated to [-2, 2] (BigGAN's trick): PSI < 1 gives typical, "
                   "cleaner, less diverse images; up to 2 widens. A number applies to every normal noise node; "
                   "NODE=PSI to one. It adds to what a mechanism does itself (the BigGAN mechanism has its "
                   "own `truncation` param: set that one for ImageNet graphs).")
@random_init_option
def generate(checkpoint: str, n: int, per_shape: int, out: str, image_format: str, seed: int, batch_size: int,
             precision: str, device: str, part_size: int, shard: str, truncation: str | None) -> None:
    """Write a counterfactual data set: images plus every intervened label.

    \b
    Examples:
      scmgen generate runs/cgn_double_colored_mnist --n 100000 --out data/cf
      scmgen generate runs/cgn_double_colored_mnist --truncation u_shape=0.5 --out data/cf_typical
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from scmgen.noise import parse_truncation
    from scmgen.sampling import generate_dataset

    index, sep, count = shard.partition("/")
    if not sep or not index.isdigit() or not count.isdigit() or int(count) < 1:
        raise UsageError(f"--shard {shard}: expected I/K, e.g. --shard 0/4")
    model = load_model(checkpoint, device)
    truncated = parse_truncation(truncation, model.spec)
    with Progress(TextColumn("generate"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()) as bar:
        task = bar.add_task("generate", total=n)
        result = generate_dataset(model, n, out, per_shape, seed, batch_size, image_format, part_size, precision,
                                  progress=lambda k: bar.advance(task, k), shard=(int(index), int(count)),
                                  truncation=truncated)
    if not result.complete:
        click.echo(f"wrote shard {shard} of {out} in {result.seconds:.1f} s; the set appears when every shard is done")
        return
    resumed = f" (resumed: {result.resumed_parts} parts were already done)" if result.resumed_parts else ""
    click.echo(f"wrote {result.images} images to {result.out} in {result.seconds:.1f} s{resumed}")


@cli.command()
@click.argument("files", nargs=-1, required=True)
@set_option
@random_init_option
def validate(files: tuple[str, ...], overrides: tuple[str, ...]) -> None:
    """Check graph files: schema, references, cycles, plugins, and a dry run for shapes.
    Pretrained weights missing from the cache are listed, not an error: train and intervene
    need them (or --random-init).

    \b
    Example: scmgen validate graphs/*.yaml
    """
    from scmgen import weights
    from scmgen.model import SCM

    requested = weights.random_init_requested()
    weights.set_random_init(True)  # the structure can be checked without pretrained files
    try:
        for f in files:
            model = SCM.from_yaml(resolve_graph(f), overrides)
            n_params = sum(p.numel() for p in model.parameters())
            missing = "" if requested or not model.random_init else \
                f"; pretrained weights not in the cache yet: {', '.join(model.random_init)}"
            click.echo(f"ok: {f} ({model.spec.name}: {len(model.spec.nodes)} nodes, {n_params:,} parameters{missing})")
    finally:
        weights.set_random_init(requested)


@cli.command()
@click.argument("file")
@set_option
@click.option("--out", default=None, help="Write a picture: .png, .svg or .dot.")
def graph(file: str, overrides: tuple[str, ...], out: str | None) -> None:
    """Print the graph (nodes, parents, mechanisms, intervenable nodes); optionally draw it.

    \b
    Example: scmgen graph graphs/cgn_wildlife_mnist.yaml --out graph.png
    """
    from rich.console import Console
    from rich.table import Table

    from scmgen.drawing import draw_graph
    from scmgen.graph import parents_of
    from scmgen.model import SCM

    model = SCM.from_yaml(resolve_graph(file), overrides)
    spec = model.spec
    table = Table(title=f"{spec.name}: {spec.description}" if spec.description else spec.name)
    for col in ("node", "kind", "parents", "plugin / size", "intervenable"):
        table.add_column(col)
    for name in model.order:
        node = spec.nodes[name]
        detail = getattr(node, "plugin", None) or (f"dim {node.dim}" if node.kind == "noise" else f"{node.classes} classes")
        table.add_row(name, node.kind, ", ".join(parents_of(spec, name)), detail, "yes" if name in spec.intervenable else "")
    Console().print(table)
    click.echo(f"output: {spec.output}")
    if out:
        click.echo(f"wrote {draw_graph(model, out)}")


@cli.command()
def plugins() -> None:
    """List the registered plugins (mechanisms, critics, losses, data sets)."""
    from scmgen import registry

    for kind in registry.KINDS:
        click.echo(f"{kind}: {', '.join(registry.names(kind))}")


cli.add_command(weights_group)
cli.add_command(classify_command)
cli.add_command(counterfactual_command)
cli.add_command(evaluate_command)
cli.add_command(bench_group)


def main() -> None:
    cli(prog_name="scmgen")


if __name__ == "__main__":
    main()

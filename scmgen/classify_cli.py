"""`scmgen classify`: train the invariant classifier on real and counterfactual images, evaluate
it, and write OUT/model/, OUT/results.json and OUT/results.md. Runs alone or under torchrun."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from scmgen.classifier import BACKBONES
from scmgen.precision import PRECISIONS
from scmgen.precision import resolve as resolve_precision

folder = click.Path(path_type=Path)  # bad folders get one line from the loaders, not a usage screen


@click.command("classify", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--real", type=folder, default=None,
              help="Real training images: an ImageFolder root (<root>/<class>/<image>).")
@click.option("--counterfactuals", type=folder, default=None,
              help="A counterfactual set from `scmgen generate` (PNG + labels.csv, or safetensors shards).")
@click.option("--backbone", type=click.Choice(BACKBONES), default="resnet50", show_default=True,
              help="ResNets start from ImageNet weights (weights cache), or random ones under --random-init.")
@click.option("--heads-from", default=None, metavar="CHECKPOINT",
              help="One head per intervenable label of this SCM (model dir, training run dir or graph YAML).")
@click.option("--heads", default=None, metavar="A,B,...",
              help="Head names, as wide as there are real classes (default: the counterfactual set's label columns).")
@click.option("--target-head", default="shape", show_default=True, help="The head reported as the classifier's answer.")
@click.option("--real-fraction", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Share of real images in every batch; 0 = counterfactuals only (what the reference code ran).")
@click.option("--recipe", type=click.Choice(["imagenet", "mnist"]), default=None,
              help="imagenet: SGD 0.9 momentum, 1e-4 decay, x0.1 every 15 epochs; mnist: Adadelta 1.0, x0.7 per epoch. "
                   "Default: mnist for mnist.cnn, else imagenet.")
@click.option("--epochs", type=click.IntRange(1), default=None, help="Default: 45 (imagenet) or 10 (mnist).")
@click.option("--batch-size", type=click.IntRange(1), default=None,
              help="Global batch, split over torchrun processes. Default: 256 (imagenet) or 64 (mnist).")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=None,
              help="Default: 0.1 per 256 images (imagenet) or 1.0 (mnist).")
@click.option("--image-size", type=click.IntRange(8), default=None,
              help="Side of the images fed to the network. Default: 224 (imagenet) or 32 (mnist) for image folders.")
@click.option("--val", type=folder, default=None, help="Real validation images (ImageFolder root): top-1.")
@click.option("--cf-val", type=folder, default=None, help="A held-out counterfactual set: per-head accuracy.")
@click.option("--cue-conflict", type=folder, default=None,
              help="Cue-conflict stimuli (<root>/<shape>/<shape>N-<texture>M.png): shape bias.")
@click.option("--in9", type=folder, default=None,
              help="ImageNet-9 backgrounds challenge (<root>/<variant>/val/<NN_class>/): mixed-same, mixed-rand, gap.")
@click.option("--in9-mapping", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The release's in_to_in9.json (default: <in9>/in_to_in9.json if present, else built-in lists).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/classify"), show_default=True)
@click.option("--device", default=None, help="cpu, cuda, ... (default: cuda if available; torchrun: cuda:LOCAL_RANK).")
@click.option("--precision", type=click.Choice(PRECISIONS), default="fp32", show_default=True,
              help="auto: bf16 where the device computes it natively (AMX / AVX512-BF16 CPUs, recent GPUs), else fp32.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--workers", type=click.IntRange(0), default=4, show_default=True,
              help="Processes decoding image files, per data stream and process.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def classify_command(real: Path | None, counterfactuals: Path | None, backbone: str, heads_from: str | None,
                     heads: str | None, target_head: str, real_fraction: float, recipe: str | None, epochs: int | None,
                     batch_size: int | None, lr: float | None, image_size: int | None, val: Path | None,
                     cf_val: Path | None, cue_conflict: Path | None, in9: Path | None, in9_mapping: Path | None,
                     out: Path, device: str | None, precision: str, seed: int, workers: int, quiet: bool) -> None:
    """Train the invariant classifier (a head per intervenable label) on real and counterfactual
    images, then evaluate it. Writes OUT/model/ (safetensors + config.json + meta.json),
    OUT/results.json and OUT/results.md. Under torchrun every process trains on its own shard and
    only rank 0 writes.

    \b
    Examples:
      scmgen classify --real data/imagenet/train --counterfactuals data/cf_imagenet \\
          --val data/imagenet/val --cue-conflict data/cue-conflict --in9 data/bg_challenge --out runs/inv
      scmgen classify --real data/shapes --counterfactuals data/shapes_cf --backbone mnist.cnn \\
          --image-size 16 --epochs 5 --real-fraction 0
      torchrun --nproc_per_node=8 -m scmgen classify --real data/imagenet/train \\
          --counterfactuals data/cf_imagenet --heads-from runs/cgn_imagenet --device cuda --precision bf16
    """
    import torch

    from scmgen.checkpoint import check_writable_parent
    from scmgen.classifier import InvariantClassifier
    from scmgen.classify import (
        EvalSets,
        as_source,
        counterfactual_set,
        evaluate,
        get_recipe,
        image_size_of,
        train_classifier,
    )
    from scmgen.distributed import cleanup, init_from_env, on_main
    from scmgen.errors import UsageError

    if heads and heads_from:
        raise UsageError("--heads and --heads-from exclude each other")
    if real_fraction > 0 and real is None:
        raise UsageError("--real DIR is needed (or --real-fraction 0 to train on counterfactuals only)")
    if real_fraction < 1 and counterfactuals is None:
        raise UsageError("--counterfactuals DIR is needed (or --real-fraction 1 to train on real images only)")
    recipe = recipe or ("mnist" if backbone == "mnist.cnn" else "imagenet")
    rec = get_recipe(recipe)
    check_writable_parent(out / "model")
    sets = EvalSets.load(val=val, counterfactuals=cf_val, cue_conflict=cue_conflict, in9=in9,
                         in9_mapping_file=in9_mapping, recipe=recipe,
                         image_size=image_size)  # bad folders fail now, not after training
    info = init_from_env(device)
    precision = resolve_precision(precision, info.device)
    try:
        torch.manual_seed(seed)
        real_src = as_source(real, image_size, rec.train_mode, rec.image_size) if real else None
        size = image_size or (image_size_of(real_src) if real_src else None)
        cf_src = counterfactual_set(counterfactuals, size, rec.train_mode) if counterfactuals else None
        head_sizes = _head_sizes(heads_from, heads, target_head, real_src, cf_src)
        model = InvariantClassifier(backbone, head_sizes, target_head)
        sets.check_heads(model.head_sizes)
        if backbone != "mnist.cnn":
            model.load_imagenet_weights()
        training = train_classifier(model, real_src, cf_src, real_fraction=real_fraction, recipe=recipe, epochs=epochs,
                                    batch_size=batch_size, lr=lr, image_size=size, seed=seed, precision=precision,
                                    workers=workers, progress=not quiet, dist_info=info)
        results = evaluate(model, sets, batch_size=batch_size or rec.batch_size, precision=precision, workers=workers,
                           dist_info=info)
        on_main(info, lambda: _write(out, model, results, training, info.device, real_fraction=real_fraction,
                                     recipe=recipe, seed=seed))
    finally:
        cleanup()
    if info.is_main:
        summary = ", ".join(f"{k} {v:.3f}" for k, v in results["summary"].items() if isinstance(v, float))
        click.echo(f"trained {training.epochs} epochs ({training.images_per_second:.0f} images/s on "
                   f"{training.world_size} process(es)); {summary or 'no evaluation set given'}; wrote {out}")


def _head_sizes(heads_from: str | None, heads: str | None, target_head: str, real: Any, cf: Any) -> dict[str, int]:
    """From an SCM's graph; else the named heads (default: the counterfactual set's columns, or
    the target head alone), each as wide as the real classes or the largest label seen."""
    from scmgen.classifier import heads_from_checkpoint, heads_from_columns

    if heads_from:
        return heads_from_checkpoint(heads_from)
    names = [h.strip() for h in heads.split(",") if h.strip()] if heads else (list(cf.labels) if cf else [target_head])
    widths = [len(real.class_names)] if real is not None and getattr(real, "class_names", None) else []
    widths += [int(t.max()) + 1 for src in (real, cf) if src is not None for t in src.labels.values() if len(t)]
    return heads_from_columns(names, max(widths))


def _write(out: Path, model: Any, results: dict[str, Any], training: Any, device: Any, **extra: Any) -> None:
    from scmgen.classify import write_results

    model.save_pretrained(out / "model", {"training": {"epochs": training.epochs, "steps": training.steps,
                                                       "world_size": training.world_size}, **extra})
    write_results(out, results, training, device, backbone=model.backbone_name, heads=model.head_sizes,
                  random_init=model.random_init, **extra)

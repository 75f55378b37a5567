"""`scmgen counterfactual`: counterfactuals of observed images. Abduct each image's noise and
labels (encoder, then optionally N optimisation steps), intervene, recompute the descendants, and
write the counterfactual PNGs, a panel and the reconstruction errors as JSON."""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import click
import torch

from scmgen.errors import UsageError


def _random_init(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        from scmgen.weights import set_random_init

        set_random_init(True)


random_init_option = click.option("--random-init", is_flag=True, expose_value=False, callback=_random_init,
                                  help="Use random weights where pretrained ones are missing (outputs say so).")


def parse_interventions(items: tuple[str, ...]) -> list[dict[str, str]]:
    """Each --do is one counterfactual; commas join a joint one: 'shape=3,background=7'."""
    from scmgen.interventions import parse_do

    return [parse_do([part.strip() for part in item.split(",") if part.strip()] or [item]) for item in items]


def check_image_path(path: Path) -> None:
    if not path.is_file():
        raise UsageError(f"--image {path}: {'is a directory, expected an image file' if path.is_dir() else 'no such file'}")


def read_image(path: Path, channels: int, size: int) -> tuple[torch.Tensor, str | None]:
    """An image file as float (C, size, size) in [-1, 1], and a note when it had to be converted
    (grey to RGB, cropped to a square, resized)."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    check_image_path(path)
    try:
        with Image.open(path) as opened:
            opened.load()
            image = opened.copy()
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UsageError(f"--image {path}: not a readable image ({str(e).splitlines()[0] if str(e) else e})") from None
    notes = []
    mode = "RGB" if channels == 3 else "L"
    if image.mode != mode:
        notes.append(f"{image.mode} converted to {mode}")
        image = image.convert(mode)
    if image.width != image.height:
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side))
        notes.append(f"centre-cropped to {side}x{side}")
    if image.width != size:
        notes.append(f"resized from {image.width}x{image.height} to {size}x{size}")
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    pixels = torch.from_numpy(np.asarray(image).copy())
    pixels = pixels.permute(2, 0, 1) if pixels.dim() == 3 else pixels[None]
    return pixels.float() / 127.5 - 1, "; ".join(notes) or None


def _file_label(model: Any, do: dict[str, Any]) -> str:
    """'do_shape-disk_background-7': class names where the graph has them, safe as a file name."""
    from scmgen.abduction import describe

    text = describe(model, do).replace(", ", "_").replace("=", "-")
    return "do_" + "".join(c if c.isalnum() or c in "-_." else "-" for c in text)


def _stems(paths: list[Path]) -> list[str]:
    stems = [p.stem for p in paths]
    return [f"{i:03d}_{s}" if stems.count(s) > 1 else s for i, s in enumerate(stems)]


@click.command("counterfactual", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("checkpoint")
@click.option("--image", "images", multiple=True, required=True, type=click.Path(path_type=Path), metavar="PATH",
              help="An observed image (repeatable). Other sizes are centre-cropped and resized, with a note.")
@click.option("--do", "do_items", multiple=True, required=True, metavar="NODE=VALUE[,NODE=VALUE]",
              help="One counterfactual per --do (repeatable); commas make a joint intervention.")
@click.option("--steps", default=50, show_default=True, type=click.IntRange(0),
              help="Optimisation steps of the noise after the encoder (L1 + LPIPS); 0 = encoder only (fast).")
@click.option("--top-k", default=3, show_default=True, type=click.IntRange(1),
              help="Try each label node's k most likely classes and keep the best reconstruction.")
@click.option("--out", default=Path("counterfactuals"), show_default=True, type=click.Path(path_type=Path),
              help="Output folder (files in it are replaced atomically).")
@click.option("--encoder", "encoder_dir", default=None, type=click.Path(path_type=Path),
              help="Where the abduction encoder is kept (default: CHECKPOINT/encoder; for a graph file, "
                   "$SCMGEN_CACHE/encoders/<graph>-<weights digest>). Trained there on first use.")
@click.option("--encoder-steps", default=600, show_default=True, type=click.IntRange(1),
              help="Training steps when the encoder has to be trained.")
@click.option("--retrain-encoder", is_flag=True, help="Train the encoder again even if one is saved.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@random_init_option
def counterfactual_command(checkpoint: str, images: tuple[Path, ...], do_items: tuple[str, ...], steps: int,
                           top_k: int, out: Path, encoder_dir: Path | None, encoder_steps: int,
                           retrain_encoder: bool, device: str, quiet: bool) -> None:
    """Counterfactuals of observed images: infer each image's noise and labels (abduction), apply
    every --do with that noise, and recompute only what depends on the intervened nodes.

    Writes OUT/<image>_reconstruction.png, OUT/<image>_do_<node>-<value>.png per --do,
    OUT/panel.png (rows: real, reconstruction, one per --do) and OUT/counterfactuals.json with the
    inferred labels and the reconstruction errors (L1 and LPIPS, encoder only and refined).

    \b
    Examples:
      scmgen counterfactual runs/cgn_double_colored_mnist --image digit.png --do background=3 --do shape=7
      scmgen counterfactual runs/wild --image a.png --image b.png --do shape=1,texture=4 --steps 0
      scmgen counterfactual tiny_imagenet --random-init --image cat.png --do background=3 --steps 5
    """
    from scmgen.abduction import (
        ImageDistance,
        abduct,
        counterfactual_of,
        counterfactual_panel,
        describe,
        load_or_train_encoder,
        output_shape,
    )
    from scmgen.checkpoint import atomic_write_text, check_writable_parent
    from scmgen.cli import load_model
    from scmgen.images import save_image_atomic
    from scmgen.interventions import check_intervenable, resolve_class
    from scmgen.provenance import run_metadata
    from scmgen.spec import LabelNode

    interventions: list[dict[str, Any]] = [dict(d) for d in parse_interventions(do_items)]
    for path in images:
        check_image_path(path)  # before the model is loaded: a typo costs nothing
    check_writable_parent(out)
    model = load_model(checkpoint, device)
    for do in interventions:
        check_intervenable(model.spec, do)
        for node, value in do.items():
            if isinstance(model.spec.nodes[node], LabelNode):
                do[node] = resolve_class(model.spec, node, value).index
    channels, size, _ = output_shape(model)
    batch, notes = [], {}
    for path in images:
        pixels, note = read_image(path, channels, size)
        batch.append(pixels)
        if note:
            notes[str(path)] = note
            click.echo(f"note: {path}: {note}", err=True)
    say = functools.partial(click.echo, err=True)
    directory = encoder_dir or _default_encoder_dir(checkpoint, model)
    encoder = load_or_train_encoder(model, directory, encoder_steps, retrain_encoder, progress=not quiet, say=say)
    distance = ImageDistance().to(model.device)
    real = torch.stack(batch).to(model.device)
    found = abduct(model, encoder, real, steps, distance=distance, top_k=top_k)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for i, (path, stem) in enumerate(zip(images, _stems(list(images)))):
        record: dict[str, Any] = {
            "image": str(path), "note": notes.get(str(path)),
            "labels": {k: _label(model, k, int(v[i])) for k, v in found.labels.items()},
            "reconstruction": {"file": f"{stem}_reconstruction.png", "l1": float(found.l1[i]),
                               "lpips": float(found.lpips[i]), "l1_encoder": float(found.l1_encoder[i]),
                               "lpips_encoder": float(found.lpips_encoder[i])},
            "counterfactuals": {}}
        _save_png(found.reconstruction[i], out / record["reconstruction"]["file"])
        records.append(record)
    for do in interventions:
        made = counterfactual_of(model, found, do)[model.spec.output]
        for i, stem in enumerate(_stems(list(images))):
            name = f"{stem}_{_file_label(model, do)}.png"
            _save_png(made[i], out / name)
            records[i]["counterfactuals"][describe(model, do)] = name
    save_image_atomic(counterfactual_panel(model, real, found, interventions), out / "panel.png")
    payload = {**run_metadata(model.device, checkpoint=checkpoint, graph=model.spec.name, steps=steps, top_k=top_k,
                              encoder=str(directory), lpips=distance.lpips_note), "images": records,
               "mean": found.summary()}
    atomic_write_text(out / "counterfactuals.json", json.dumps(payload, indent=2, sort_keys=True) + "\n")
    for r in records:
        rec = r["reconstruction"]
        labels = ", ".join(f"{k} {v['name']}" for k, v in r["labels"].items())
        click.echo(f"{r['image']}: {labels}; reconstruction L1 {rec['l1_encoder']:.3f} -> {rec['l1']:.3f}, "
                   f"LPIPS {rec['lpips_encoder']:.3f} -> {rec['lpips']:.3f}")
    click.echo(f"wrote {len(images) * len(interventions)} counterfactual(s), {out / 'panel.png'} and "
               f"{out / 'counterfactuals.json'} ({distance.lpips_note})")


def _label(model: Any, node: str, index: int) -> dict[str, Any]:
    names = model.spec.nodes[node].names
    return {"index": index, "name": names[index] if names else str(index)}


def _save_png(image: torch.Tensor, path: Path) -> None:
    """One image in [-1, 1] at its own size, written atomically."""
    from PIL import Image

    from scmgen.data import to_uint8
    from scmgen.images import save_image_atomic

    pixels = to_uint8(image.cpu())
    array = pixels.permute(1, 2, 0).numpy() if pixels.shape[0] == 3 else pixels[0].numpy()
    save_image_atomic(Image.fromarray(array), path)


def _default_encoder_dir(checkpoint: str, model: Any) -> Path:
    """Beside the weights for a checkpoint; in the cache, keyed by weights, for a graph file."""
    import os

    from scmgen.abduction import encoder_directory, weights_digest
    from scmgen.cli import resolve_checkpoint

    p = Path(checkpoint)
    if p.is_dir():
        return encoder_directory(resolve_checkpoint(checkpoint))
    cache = Path(os.environ.get("SCMGEN_CACHE") or Path.home() / ".cache" / "scmgen")
    return cache / "encoders" / f"{model.spec.name}-{weights_digest(model)[:12]}"

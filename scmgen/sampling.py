"""What a trained SCM is for: counterfactual grids and counterfactual data sets on disk."""
from __future__ import annotations

import csv
import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import networkx as nx
import torch
from PIL import Image
from safetensors.torch import save_file

from scmgen.checkpoint import check_writable_parent, fsync_dir, fsync_tree, write_json
from scmgen.data import to_uint8
from scmgen.errors import UsageError
from scmgen.graph import descendants
from scmgen.images import grid_image
from scmgen.interventions import DoValue
from scmgen.model import SCM
from scmgen.precision import autocast
from scmgen.precision import resolve as resolve_precision
from scmgen.provenance import run_metadata
from scmgen.spec import LabelNode, dump_spec
from scmgen.weights import used_random_init


def intervenable_labels(model: SCM) -> list[str]:
    return [n for n in model.spec.intervenable if isinstance(model.spec.nodes[n], LabelNode)]


def class_names(model: SCM, node: str) -> list[str]:
    label = model.spec.nodes[node]
    assert isinstance(label, LabelNode)
    return label.names or [str(i) for i in range(label.classes)]


def random_weights_note(model: SCM) -> str:
    """' [RANDOM WEIGHTS: ...]' when pretrained weights were replaced by random ones, else ''."""
    random = sorted(set(model.random_init) | set(used_random_init()))
    return f" [RANDOM WEIGHTS: {', '.join(random)}]" if random else ""


def shown_classes(classes: int, at_most: int) -> torch.Tensor:
    """All classes when they fit, else `at_most` evenly spaced ones (ImageNet's 1000 do not)."""
    return torch.arange(classes) if classes <= at_most else torch.linspace(0, classes - 1, at_most).round().long()


@torch.inference_mode()
def counterfactual_grid(model: SCM, seed: int = 0, columns: int = 8, at_most: int | None = None) -> Image.Image:
    """Rows: the first intervenable label (the shape); columns: the other intervenable labels set
    together (texture and background). Every cell shares one draw of the noise, so all that
    changes across the grid is what was intervened on. Up to 10 classes all show; of more (ImageNet)
    4 evenly spaced ones, since each cell is a full generator pass."""
    labels = intervenable_labels(model)
    if not labels:
        raise UsageError(f"graph '{model.spec.name}' has no intervenable label node to lay out a grid")
    row, cols = labels[0], labels[1:]
    at_most = at_most or (10 if model.spec.nodes[row].classes <= 10 else 4)
    row_ids = shown_classes(model.spec.nodes[row].classes, at_most)
    col_ids = shown_classes(min(model.spec.nodes[c].classes for c in cols), at_most) if cols else None
    n_cols = len(col_ids) if col_ids is not None else columns
    cells = len(row_ids) * n_cols
    exo = model.sample_exogenous(1 if cols else n_cols, torch.Generator().manual_seed(seed))
    exo = {k: v.repeat(cells // v.shape[0], *[1] * (v.dim() - 1)) for k, v in exo.items()}
    do: dict[str, DoValue] = {row: row_ids.repeat_interleave(n_cols)}
    for c in cols:
        do[c] = col_ids.repeat(len(row_ids))
    images = model(exo, do, [model.spec.output])[model.spec.output]
    row_names, col_names = class_names(model, row), class_names(model, cols[0]) if cols else []
    col_labels = [col_names[i] for i in col_ids.tolist()] if cols else None
    title = f"{model.spec.name}: rows do({row}), columns " + (f"do({', '.join(cols)})" if cols else "noise samples") \
        + random_weights_note(model)
    return grid_image(images, n_cols, [row_names[i] for i in row_ids.tolist()], col_labels, title)


@torch.inference_mode()
def sample_grid(model: SCM, n: int, do: Mapping[str, DoValue], seed: int) -> Image.Image:
    """n samples under `do`, titled with what was intervened on (class names where known) and a
    warning when any weights were random."""
    images = model.sample(n, do=do, seed=seed, targets=[model.spec.output])[model.spec.output]
    shown = []
    for node, value in do.items():
        if isinstance(value, int) and isinstance(model.spec.nodes[node], LabelNode):
            shown.append(f"{node}={value} {class_names(model, node)[value]}")
        else:
            shown.append(f"{node}={value}")
    title = f"{model.spec.name}: {', '.join(shown) or 'observational'}, seed {seed}{random_weights_note(model)}"
    return grid_image(images, nrow=min(n, 8), title=title)


@dataclass
class GenerateResult:
    out: Path
    images: int
    seconds: float
    resumed_parts: int = 0
    complete: bool = True  # False: this shard's parts are written, other shards' are not yet


def resampled_noise(model: SCM, keep: str) -> list[str]:
    """Noise nodes that do not feed the mechanisms of label `keep`: a counterfactual that keeps
    the shape redraws exactly these."""
    kept: set[str] = {keep}
    for child in model.graph.successors(keep):
        kept |= nx.ancestors(model.graph, child)
    return [x for x in model.exogenous if x not in kept and model.spec.nodes[x].kind == "noise"]


@torch.inference_mode()
def counterfactual_batch(model: SCM, groups: int, per_shape: int, generator: torch.Generator,
                         precision: str = "fp32", truncation: Mapping[str, float] | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """groups * per_shape images as uint8, and their intervenable labels (one column each).
    Each factual draw keeps its first label's mechanism (the mask, computed once per group) and
    gets new labels and new noise for every other mechanism. The factual pass computes only what
    the counterfactual keeps, so nothing is computed twice or thrown away. `truncation`: see
    `scmgen.noise` (for factual and fresh noise alike)."""
    labels = intervenable_labels(model)
    keep, others = labels[0], labels[1:]
    m = groups * per_shape
    exogenous = model.sample_exogenous(groups, generator, truncation)
    do = {c: torch.randint(model.spec.nodes[c].classes, (m,), generator=generator) for c in others}
    fresh = model.sample_exogenous(m, generator, truncation)
    resample = {k: fresh[k] for k in resampled_noise(model, keep)}
    recomputed = descendants(model.graph, set(do) | set(resample))
    with autocast(model.device, precision):
        factual = model(exogenous, targets=[n for n in model.order if n not in recomputed])
        factual = {k: v.repeat_interleave(per_shape, 0) for k, v in factual.items()}
        values = model.counterfactual(factual, do, resample)
    return to_uint8(values[model.spec.output]).cpu(), torch.stack([values[c].cpu() for c in labels], 1)


def _write_png_part(folder: Path, part: int, first: int, images: torch.Tensor, table: torch.Tensor) -> None:
    rows = []
    for i in range(images.shape[0]):
        name = f"images/{first + i:07d}.png"
        Image.fromarray(images[i].permute(1, 2, 0).numpy()).save(folder / name)
        rows.append([name, *table[i].tolist()])
    tmp = folder / "parts" / f".part_{part:05d}.csv.tmp"
    with open(tmp, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    tmp.replace(folder / "parts" / f"part_{part:05d}.csv")  # the part's completion marker


def _write_shard(folder: Path, part: int, images: torch.Tensor, table: torch.Tensor) -> None:
    tmp = folder / f".shard_{part:05d}.tmp"
    save_file({"images": images.contiguous(), "labels": table.contiguous()}, str(tmp))
    tmp.replace(folder / f"shard_{part:05d}.safetensors")


def _part_done(folder: Path, part: int, image_format: str) -> bool:
    marker = f"parts/part_{part:05d}.csv" if image_format == "png" else f"shard_{part:05d}.safetensors"
    return (folder / marker).exists()


def generate_dataset(model: SCM, n: int, out: str | Path, per_shape: int = 10, seed: int = 0,
                     batch_size: int = 100, image_format: str = "png", part_size: int = 10000,
                     precision: str = "fp32", progress: Callable[[int], Any] | None = None,
                     shard: tuple[int, int] = (0, 1), truncation: Mapping[str, float] | None = None) -> GenerateResult:
    """Write `n` counterfactual images (see `counterfactual_batch`) to `out`: PNG files +
    labels.csv, or uint8 safetensors shards of `part_size` images; plus meta.json.

    The set is made in parts, each from its own generator seeded by (seed, part), under a hidden
    `.NAME.partial` folder; a killed run resumes from its finished parts and the result is
    byte-identical to an uninterrupted run. Only the final rename makes `out` appear.

    `shard=(i, k)`: this process writes parts i, i+k, i+2k, ... of the same set (k processes or
    machines sharing a file system); whichever finishes the last part assembles the set.
    `truncation` {noise node: value} (`scmgen.noise`) is recorded in meta.json."""
    if image_format not in ("png", "safetensors"):
        raise UsageError(f"--format {image_format}: expected png or safetensors")
    if n <= 0 or per_shape <= 0 or batch_size <= 0:
        raise UsageError("--n, --per-shape and --batch-size must be positive")
    index, shards = shard
    if not 0 <= index < shards:
        raise UsageError(f"--shard {index}/{shards}: expected I/K with 0 <= I < K")
    if not intervenable_labels(model):
        raise UsageError(f"graph '{model.spec.name}' has no intervenable label node")
    out = Path(out)
    check_writable_parent(out)
    if out.exists():
        raise UsageError(f"{out} already exists: remove it or choose another --out")
    precision = resolve_precision(precision, model.device)  # meta.json records what ran, not "auto"
    part_size = max(per_shape, part_size - part_size % per_shape)  # groups never straddle parts
    step = max(per_shape, batch_size - batch_size % per_shape)
    params = {"graph": dump_spec(model.spec), "weights": _weights_digest(model), "n": n, "per_shape": per_shape,
              "seed": seed, "format": image_format, "part_size": part_size, "precision": precision,
              "truncation": dict(truncation or {})}
    partial = out.parent / f".{out.name}.partial"
    if partial.exists() and _read_params(partial) not in (params, None) and shards == 1:
        shutil.rmtree(partial)  # a partial set of other settings (with shards, others may be writing)
    (partial / ("parts" if image_format == "png" else "")).mkdir(parents=True, exist_ok=True)
    if image_format == "png":
        (partial / "images").mkdir(exist_ok=True)
    write_json(partial / "params.json", params)
    start = time.perf_counter()
    parts = -(-n // part_size)
    resumed = 0
    for part in range(index, parts, shards):
        size = min(part_size, n - part * part_size)
        if _part_done(partial, part, image_format):
            resumed += 1
            if progress:
                progress(size)
            continue
        generator = torch.Generator().manual_seed(seed * 1_000_003 + part)
        chunks = []
        for first in range(0, size, step):
            groups = -(-min(step, size - first) // per_shape)
            images, table = counterfactual_batch(model, groups, per_shape, generator, precision, truncation)
            take = min(images.shape[0], size - first)
            chunks.append((images[:take], table[:take]))
            if progress:
                progress(take)
        images, table = torch.cat([c[0] for c in chunks]), torch.cat([c[1] for c in chunks])
        if image_format == "png":
            _write_png_part(partial, part, part * part_size, images, table)
        else:
            _write_shard(partial, part, images, table)
    seconds = time.perf_counter() - start
    if not all(_part_done(partial, p, image_format) for p in range(parts)):
        return GenerateResult(out, n, seconds, resumed, complete=False)
    try:
        (partial / ".assembling").mkdir()  # one process assembles, even if several finish at once
    except FileExistsError:
        return GenerateResult(out, n, seconds, resumed, complete=False)
    (partial / ".assembling").rmdir()
    _finish(model, partial, out, params, parts, seconds)
    return GenerateResult(out, n, seconds, resumed)


def _finish(model: SCM, partial: Path, out: Path, params: dict[str, Any], parts: int, seconds: float) -> None:
    columns = intervenable_labels(model)
    if params["format"] == "png":
        with open(partial / "labels.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", *columns])
            for part in range(parts):
                with open(partial / "parts" / f"part_{part:05d}.csv", newline="") as rows:
                    writer.writerows(csv.reader(rows))
        shutil.rmtree(partial / "parts")
    (partial / "params.json").unlink()
    meta = {k: v for k, v in params.items() if k not in ("graph", "weights")}
    write_json(partial / "meta.json", run_metadata(model.device, graph=model.spec.name, columns=columns,
                                                   images=params["n"], **meta))
    fsync_tree(partial)
    partial.rename(out)
    fsync_dir(out.parent)


def _read_params(partial: Path) -> dict[str, Any] | None:
    try:
        return json.loads((partial / "params.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _weights_digest(model: SCM) -> str:
    """A fingerprint of the weights, so a partial set of another model is never resumed."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes()
                 if v.is_floating_point() else v.cpu().numpy().tobytes())
    return h.hexdigest()

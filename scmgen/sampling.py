"""What a trained SCM is for: counterfactual grids and counterfactual data sets on disk."""
from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import networkx as nx
import torch
from PIL import Image
from safetensors.torch import save_file

from scmgen.checkpoint import atomic_directory, write_json
from scmgen.data import to_uint8
from scmgen.errors import UsageError
from scmgen.images import grid_image
from scmgen.interventions import DoValue
from scmgen.model import SCM
from scmgen.provenance import run_metadata
from scmgen.spec import LabelNode
from scmgen.trainer import autocast


def intervenable_labels(model: SCM) -> list[str]:
    return [n for n in model.spec.intervenable if isinstance(model.spec.nodes[n], LabelNode)]


def class_names(model: SCM, node: str) -> list[str]:
    label = model.spec.nodes[node]
    assert isinstance(label, LabelNode)
    return label.names or [str(i) for i in range(label.classes)]


@torch.inference_mode()
def counterfactual_grid(model: SCM, seed: int = 0, columns: int | None = None) -> Image.Image:
    """Rows: the first intervenable label (the shape); columns: the other intervenable labels set
    together (texture and background). Every cell shares one draw of the noise, so all that
    changes across the grid is what was intervened on."""
    labels = intervenable_labels(model)
    if not labels:
        raise UsageError(f"graph '{model.spec.name}' has no intervenable label node to lay out a grid")
    row, cols = labels[0], labels[1:]
    rows_n = model.spec.nodes[row].classes
    cols_n = min(model.spec.nodes[c].classes for c in cols) if cols else (columns or 8)
    exo = model.sample_exogenous(1 if cols else cols_n, torch.Generator().manual_seed(seed))
    reps = rows_n * cols_n
    exo = {k: v.repeat(rows_n * cols_n // v.shape[0], *[1] * (v.dim() - 1)) for k, v in exo.items()}
    do: dict[str, DoValue] = {row: torch.arange(rows_n).repeat_interleave(cols_n)}
    for c in cols:
        do[c] = torch.arange(cols_n).repeat(rows_n)
    images = model(exo, do)[model.spec.output]
    assert images.shape[0] == reps
    col_labels = [f"{i}" for i in range(cols_n)] if cols else None
    if cols:
        col_labels = class_names(model, cols[0])[:cols_n]
    title = f"{model.spec.name}: rows do({row}), columns " + (f"do({', '.join(cols)})" if cols else "noise samples")
    return grid_image(images, cols_n, class_names(model, row), col_labels, title)


@torch.inference_mode()
def sample_grid(model: SCM, n: int, do: Mapping[str, DoValue], seed: int) -> Image.Image:
    images = model.sample(n, do=do, seed=seed)[model.spec.output]
    what = ", ".join(f"{k}={v}" for k, v in do.items()) or "observational"
    return grid_image(images, nrow=min(n, 8), title=f"{model.spec.name}: {what}, seed {seed}")


@dataclass
class GenerateResult:
    out: Path
    images: int
    seconds: float


def resampled_noise(model: SCM, keep: str) -> list[str]:
    """Noise nodes that do not feed the mechanisms of label `keep`: a counterfactual that keeps
    the shape redraws exactly these."""
    kept: set[str] = {keep}
    for child in model.graph.successors(keep):
        kept |= nx.ancestors(model.graph, child)
    return [x for x in model.exogenous if x not in kept and model.spec.nodes[x].kind == "noise"]


def generate_dataset(model: SCM, n: int, out: str | Path, per_shape: int = 10, seed: int = 0,
                     batch_size: int = 500, image_format: str = "png", shard_size: int = 10000,
                     precision: str = "fp32", progress: Callable[[int], Any] | None = None) -> GenerateResult:
    """`n` counterfactual images: each draw of the first intervenable label's mechanism (the
    mask) is reused `per_shape` times with new labels and new noise for the other mechanisms,
    so the mask is computed once per group. Written to `out` atomically: PNG files + labels.csv,
    or uint8 safetensors shards; plus meta.json."""
    if image_format not in ("png", "safetensors"):
        raise UsageError(f"--format {image_format}: expected png or safetensors")
    if n <= 0 or per_shape <= 0:
        raise UsageError("--n and --per-shape must be positive")
    labels = intervenable_labels(model)
    if not labels:
        raise UsageError(f"graph '{model.spec.name}' has no intervenable label node")
    keep, others = labels[0], labels[1:]
    resample = resampled_noise(model, keep)
    generator = torch.Generator().manual_seed(seed)
    groups_per_batch = max(1, batch_size // per_shape)
    start = time.perf_counter()
    done = 0
    pending: list[tuple[torch.Tensor, torch.Tensor]] = []
    rows: list[list[Any]] = []
    with atomic_directory(out) as tmp, torch.inference_mode():
        if image_format == "png":
            (tmp / "images").mkdir()
        while done < n:
            groups = min(groups_per_batch, -(-(n - done) // per_shape))
            m = groups * per_shape
            factual = model(model.sample_exogenous(groups, generator))
            factual = {k: v.repeat_interleave(per_shape, 0) for k, v in factual.items()}
            do = {c: torch.randint(model.spec.nodes[c].classes, (m,), generator=generator) for c in others}
            fresh = model.sample_exogenous(m, generator)
            with autocast(model.device, precision):
                values = model.counterfactual(factual, do, {k: fresh[k] for k in resample})
            take = min(m, n - done)
            images = to_uint8(values[model.spec.output][:take]).cpu()
            table = torch.stack([values[c][:take].cpu() for c in labels], 1)
            if image_format == "png":
                for i in range(take):
                    name = f"images/{done + i:07d}.png"
                    Image.fromarray(images[i].permute(1, 2, 0).numpy()).save(tmp / name)
                    rows.append([name, *table[i].tolist()])
            else:
                pending.append((images, table))
                if sum(p[0].shape[0] for p in pending) >= shard_size or done + take >= n:
                    shard = len(list(tmp.glob("shard_*.safetensors")))
                    save_file({"images": torch.cat([p[0] for p in pending]), "labels": torch.cat([p[1] for p in pending])},
                              str(tmp / f"shard_{shard:05d}.safetensors"))
                    pending = []
            done += take
            if progress:
                progress(take)
        if image_format == "png":
            with open(tmp / "labels.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["file", *labels])
                w.writerows(rows)
        seconds = time.perf_counter() - start
        write_json(tmp / "meta.json", run_metadata(model.device, graph=model.spec.name, images=n, per_shape=per_shape,
                                                   seed=seed, format=image_format, columns=labels,
                                                   seconds=round(seconds, 3)))
    return GenerateResult(Path(out), n, seconds)

"""Training the invariant classifier on real and counterfactual images, and evaluating it.

Data: real images come from an ImageFolder root or an in-memory `ImageSet` (the MNIST variants);
a counterfactual set is what `scmgen generate` writes (PNG files + labels.csv, or uint8
safetensors shards, with meta.json naming the label columns). Every step sees a fixed mix:
`real_fraction` of the batch real images (trained through the averaged logits), the rest
counterfactuals (each head on its own label), in one forward pass. `real_fraction=0` trains on
counterfactuals only, which is what the reference code ran (the paper describes real + counterfactual).
An epoch is one pass over the real images (over the counterfactuals when there are none).

Recipes: "imagenet": SGD, momentum 0.9, weight decay 1e-4, lr 0.1 per 256 images, x0.1 every 15
epochs, 45 epochs of random-resized crops and flips, batch-norm statistics kept fixed when the
backbone starts from ImageNet weights (as the reference fine-tunes); "mnist": Adadelta lr 1.0,
x0.7 every epoch, 10 epochs, batch 64, no augmentation.

Under torchrun each rank trains on its own shard (`scmgen.distributed`), DDP averages the
gradients, metrics are summed over the ranks, and the caller writes on rank 0 alone. The batch size
is the global one: each of W processes takes batch_size // W images per step.
"""
from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, Union

import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, Dataset

from scmgen.checkpoint import atomic_write_text, read_json
from scmgen.classifier import (
    AVERAGE,
    InvariantClassifier,
    average_logits,
    counterfactual_loss,
    freeze_batchnorm,
    real_loss,
)
from scmgen.data import ImageSet, to_float
from scmgen.distributed import DistInfo, ShardSampler, all_reduce_sum, default_device, unwrap, wrap_ddp
from scmgen.errors import SpecError, UsageError
from scmgen.evalsets import FileImages, image_folder, imagenet9, in9_decision, in9_mapping, sixteen_class_decision
from scmgen.evalsets import cue_conflict as load_cue_conflict
from scmgen.objectives import EnvBatch, Objective
from scmgen.paths import inside
from scmgen.precision import autocast
from scmgen.progress import progress_bar
from scmgen.provenance import run_metadata

IN9_VARIANTS = ("mixed_same", "mixed_rand")


@dataclass(frozen=True)
class Recipe:
    optimizer: str  # "sgd" | "adadelta"
    lr: float
    lr_batch: int | None  # lr is per this many images (scaled linearly with the batch size); None: fixed
    step_epochs: int  # multiply the lr by `gamma` every this many epochs
    gamma: float
    epochs: int
    batch_size: int
    image_size: int  # for image files; in-memory images keep their size
    train_mode: str  # scmgen.evalsets.make_transform mode for training files
    eval_mode: str
    freeze_pretrained_bn: bool


RECIPES = {
    "imagenet": Recipe("sgd", 0.1, 256, 15, 0.1, 45, 256, 224, "train", "center", True),
    "mnist": Recipe("adadelta", 1.0, None, 1, 0.7, 10, 64, 32, "resize", "resize", False),
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise UsageError(f"unknown recipe '{name}', expected one of {', '.join(RECIPES)}")
    return RECIPES[name]


# -- data ------------------------------------------------------------------------------------
class TensorImages:
    """In-memory uint8 (N, 3, H, W) images with one label tensor per column."""

    def __init__(self, images: torch.Tensor, labels: dict[str, torch.Tensor], size: int | None = None) -> None:
        if size is not None and images.shape[-1] != size:
            images = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bilinear",
                                                     antialias=True).round().clamp(0, 255).to(torch.uint8)
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.images[index], {k: v[index] for k, v in self.labels.items()}


Source = Union[TensorImages, FileImages]
DataArg = Union[Source, ImageSet, str, Path]


def as_source(data: DataArg, size: int | None, mode: str, folder_size: int = 224) -> Source:
    """Real images: an ImageSet (label column "label"; keeps its size unless `size` is given), an
    ImageFolder root (read at `size`, else `folder_size`), or a ready source."""
    if isinstance(data, ImageSet):
        return TensorImages(data.images, {"label": data.labels, **data.factors}, size)
    if isinstance(data, (str, Path)):
        return image_folder(data, size or folder_size, mode)
    return data


def image_size_of(source: Source) -> int:
    return source.size if isinstance(source, FileImages) else source.images.shape[-1]


COUNTERFACTUALS = ("a counterfactual set from `scmgen generate`: meta.json (with `columns`) and labels.csv + "
                   "images/, or shard_*.safetensors")


def counterfactual_set(root: str | Path, size: int | None = None, mode: str = "resize") -> Source:
    """A counterfactual set in either layout, one label column per intervened label node, at
    `size` or else at its own (square) size. PNG sets are read on demand; shards are read into
    memory, so use PNG for sets larger than memory."""
    path = Path(root)
    if not path.is_dir() or not (path / "meta.json").is_file():
        state = "no such folder" if not path.exists() else "no meta.json"
        raise SpecError(str(path), "", f"{state}; expected {COUNTERFACTUALS}")
    columns = read_json(path / "meta.json", str(path)).get("columns")
    if not isinstance(columns, list) or not columns or not all(isinstance(c, str) for c in columns):
        raise SpecError(str(path), "meta.json", f"expected a non-empty list `columns`; expected {COUNTERFACTUALS}")
    if (path / "labels.csv").is_file():
        with open(path / "labels.csv", newline="") as f:
            rows = list(csv.reader(f))
        if not rows or rows[0] != ["file", *columns] or len(rows) < 2:
            raise SpecError(str(path / "labels.csv"), "", f"expected a header file,{','.join(columns)} and rows")
        try:
            table = torch.tensor([[int(v) for v in r[1:]] for r in rows[1:]])
        except (ValueError, TypeError) as e:
            raise SpecError(str(path / "labels.csv"), "", f"expected integer labels in every row ({e})") from None
        files = [inside(path, r[0], str(path / "labels.csv"), f"row {i}") for i, r in enumerate(rows[1:], start=2)]
        if size is None:
            with Image.open(files[0]) as first:
                size = first.width
        return FileImages(files, {c: table[:, j] for j, c in enumerate(columns)}, size, mode)
    shards = sorted(path.glob("shard_*.safetensors"))
    if not shards:
        raise SpecError(str(path), "", f"neither labels.csv nor shard_*.safetensors; expected {COUNTERFACTUALS}")
    try:
        parts = [load_file(str(s)) for s in shards]
    except (SafetensorError, OSError) as e:
        raise SpecError(str(path), "", f"unreadable shard ({e})") from None
    images, table = torch.cat([p["images"] for p in parts]), torch.cat([p["labels"] for p in parts]).long()
    if table.shape[1] != len(columns):
        raise SpecError(str(path), "", f"shards hold {table.shape[1]} label columns, meta.json names {len(columns)}")
    return TensorImages(images, {c: table[:, j] for j, c in enumerate(columns)}, size)


class _BatchDataset(Dataset):
    """Item i of the loader is a whole batch, so file decoding can run in worker processes."""

    def __init__(self, source: Source) -> None:
        self.source = source

    def __getitem__(self, index: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.source.batch(index)


def _batches(source: Source, index_batches: Iterable[torch.Tensor], workers: int,
             device: torch.device) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    workers = workers if isinstance(source, FileImages) else 0  # in-memory slices need no workers
    return iter(DataLoader(_BatchDataset(source), sampler=index_batches, batch_size=None, num_workers=workers,
                           pin_memory=device.type == "cuda"))


def _check_labels(source: Source, heads: dict[str, int], where: str) -> None:
    for column, t in source.labels.items():
        limit = heads.get(column, next(iter(heads.values())) if column == "label" else None)
        if limit is not None and len(t) and int(t.max()) >= limit:
            raise SpecError(where, column, f"label {int(t.max())} does not fit a head of {limit} classes")


def _check_columns(source: Source, heads: dict[str, int], where: str) -> None:
    missing = [h for h in heads if h not in source.labels]
    if missing:
        raise UsageError(f"{where}: its label columns {', '.join(source.labels)} lack the classifier's head(s) "
                         f"{', '.join(missing)}")


def network_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> [-1, 1] floats in channels-last layout, which the convolutions of every
    backbone run faster in (measured on this 2-core CPU with the MNIST CNN: 1.3x in bf16, up to
    1.7x in fp32; models are moved to channels-last with it)."""
    return to_float(images).contiguous(memory_format=torch.channels_last)


@torch.inference_mode()
def predictions(model: InvariantClassifier, images: torch.Tensor, precision: str = "auto", device: str = "cpu",
                batch_size: int = 1000) -> torch.Tensor:
    """The target head's class for each uint8 image (for one-head classifiers: that head's)."""
    model.eval().to(device, memory_format=torch.channels_last)
    out = []
    for start in range(0, len(images), batch_size):
        batch = network_input(images[start:start + batch_size].to(device))
        with autocast(device, precision):
            out.append(model(batch)[model.target_head].argmax(1).cpu())
    return torch.cat(out)


def accuracy(model: InvariantClassifier, data: ImageSet, precision: str = "auto", device: str = "cpu") -> float:
    """Top-1 of the target head on `data`."""
    return int((predictions(model, data.images, precision, device) == data.labels).sum()) / len(data)


def per_class_rate(hits: torch.Tensor, labels: torch.Tensor, classes: int = 10) -> list[float]:
    """The share of hits within each true class: a class whose counterfactuals are unreadable (a
    collapsed mask) shows up here while the mean hides it."""
    return [round(float(hits[labels == c].float().mean()), 4) if (labels == c).any() else float("nan")
            for c in range(classes)]


# -- training --------------------------------------------------------------------------------
@dataclass
class TrainResult:
    epochs: int
    steps: int
    seconds: float
    images: int  # images seen, all ranks together
    world_size: int
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def split_batch(batch_size: int, world_size: int, real_fraction: float) -> tuple[int, int]:
    """Real and counterfactual images per process and step; a mixed batch keeps at least one of each."""
    if not 0.0 <= real_fraction <= 1.0:
        raise UsageError(f"--real-fraction {real_fraction}: expected a value in [0, 1]")
    per_rank = batch_size // world_size
    mixed = 0.0 < real_fraction < 1.0
    if per_rank < (2 if mixed else 1):
        raise UsageError(f"--batch-size {batch_size} is too small to split over {world_size} process(es)")
    n_real = round(per_rank * real_fraction)
    if mixed:
        n_real = min(max(n_real, 1), per_rank - 1)
    return n_real, per_rank - n_real


def _optimizer(model: nn.Module, recipe: Recipe, lr: float | None, batch_size: int) -> tuple[Any, Any]:
    if lr is None:
        lr = recipe.lr * batch_size / recipe.lr_batch if recipe.lr_batch else recipe.lr
    if recipe.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    else:
        opt = torch.optim.Adadelta(model.parameters(), lr=lr)
    return opt, torch.optim.lr_scheduler.StepLR(opt, recipe.step_epochs, recipe.gamma)


def train_classifier(model: InvariantClassifier, real: DataArg | None = None, counterfactuals: DataArg | None = None,
                     *, real_fraction: float = 0.5, recipe: str = "imagenet", epochs: int | None = None,
                     batch_size: int | None = None, lr: float | None = None, image_size: int | None = None,
                     seed: int = 0, device: str | None = None, precision: str = "fp32", workers: int = 0,
                     progress: bool = True, dist_info: DistInfo | None = None,
                     environments: Sequence[DataArg] = (), objective: Objective | None = None) -> TrainResult:
    """Train `model` in place on real images and/or a counterfactual set (see the module
    docstring), or on `environments` under `objective` (`scmgen.objectives`: each step takes a
    whole batch from every environment); returns per-epoch losses and training accuracies summed
    over all ranks."""
    rec = get_recipe(recipe)
    info = dist_info or DistInfo(device=torch.device(device) if device else default_device())
    epochs, batch_size = epochs or rec.epochs, batch_size or rec.batch_size
    if environments:
        if real is not None or counterfactuals is not None:
            raise UsageError("train on environments or on real/counterfactual images, not both")
        objective = objective or Objective()
        plan = [(env, batch_size // info.world_size, f"environment {i}") for i, env in enumerate(environments)]
    else:
        n_real, n_cf = split_batch(batch_size, info.world_size, real_fraction)
        plan = [(data, n, name) for n, data, name in
                ((n_real, real, "real"), (n_cf, counterfactuals, "counterfactuals")) if n]
    heads = model.head_sizes
    streams: list[Iterator[Any]] = []
    steps = 0
    for data, n, name in plan:
        if data is None:
            raise UsageError(f"--real-fraction {real_fraction} needs {name} images")
        source = counterfactual_set(data, image_size, rec.train_mode) if name == "counterfactuals" and isinstance(
            data, (str, Path)) else as_source(data, image_size, rec.train_mode, rec.image_size)
        image_size = image_size or image_size_of(source)  # all streams share one size
        where = str(data) if isinstance(data, (str, Path)) else name
        if name == "counterfactuals":
            _check_columns(source, heads, where)
        missing = [f for f in getattr(objective, "factors", ()) if f not in source.labels]
        if missing:
            raise UsageError(f"{where}: objective {objective.name} needs the label column(s) {', '.join(missing)}")
        _check_labels(source, heads, where)
        sampler = ShardSampler(len(source), info.rank, info.world_size, seed=seed * 2 + len(streams))
        if len(sampler) < n:
            raise UsageError(f"{where}: {len(source)} images cannot fill {n} per step on {info.world_size} process(es)")
        steps = steps or len(sampler) // n  # an epoch is one pass over the first stream
        streams.append(_batches(source, sampler.batches(n), workers, info.device))

    model.to(info.device, memory_format=torch.channels_last)
    ddp = wrap_ddp(model, info)
    if objective is not None:
        objective.to(info.device).attach(unwrap(model))
    trained = nn.ModuleList([model, objective]) if objective is not None else model
    opt, schedule = _optimizer(trained, rec, lr, batch_size)
    history: list[dict[str, Any]] = []
    start = time.perf_counter()
    with progress_bar(progress and info.is_main) as bar:
        task = bar.add_task("classify", total=epochs * steps, status="")
        for epoch in range(epochs):
            model.train()
            if rec.freeze_pretrained_bn and model.pretrained:
                freeze_batchnorm(model)
            sums: dict[str, Any] = {}
            for step in range(steps):
                position = epoch + step / steps  # in epochs: a penalty may switch on within one
                if objective is not None and objective.anneal_epochs > 0 and objective.penalised(position) \
                        and not objective.penalised(position - 1 / steps):
                    opt.state.clear()  # the penalty changes the loss's scale: start the step sizes afresh
                parts = [next(stream) for stream in streams]
                images = network_input(torch.cat([p[0] for p in parts]).to(info.device, non_blocking=True))
                labels = [{k: v.to(info.device) for k, v in p[1].items()} for p in parts]
                with autocast(info.device, precision):
                    outputs = ddp(images)
                outputs = {k: v.float() for k, v in outputs.items()}
                if objective is not None:
                    loss, stats = _environment_losses(objective, outputs, labels, position)
                else:
                    loss, stats = _losses(outputs, labels[0] if n_real else None, labels[-1] if n_cf else None, n_real)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
                bar.advance(task)
            sums = all_reduce_sum({k: float(v) for k, v in sums.items()}, info)
            history.append(_epoch_summary(epoch, schedule.get_last_lr()[0], sums))
            bar.update(task, status=" ".join(f"{k}={v:.3f}" for k, v in history[-1].items()
                                              if isinstance(v, float) and k != "lr"))
            schedule.step()
    model.eval()
    seconds = time.perf_counter() - start
    per_step = sum(n for _, n, _ in plan)
    return TrainResult(epochs, epochs * steps, seconds, epochs * steps * per_step * info.world_size,
                       info.world_size, history)


def _environment_losses(objective: Objective, outputs: dict[str, torch.Tensor], labels: list[dict[str, torch.Tensor]],
                        epoch: float) -> tuple[torch.Tensor, dict[str, Any]]:
    """Split the step's logits back into its environments and let the objective weigh them."""
    sizes = [len(lab["label"]) for lab in labels]
    batches = [EnvBatch({k: v for k, v in zip(outputs, chunk)}, lab)
               for *chunk, lab in zip(*(v.split(sizes) for v in outputs.values()), labels)]
    loss, extra = objective(batches, epoch)
    logits, target = average_logits(outputs), torch.cat([lab["label"] for lab in labels])
    n = len(target)
    return loss, {"n_real": n, "loss_real": loss.detach() * n, "correct_real": (logits.argmax(1) == target).sum(),
                  "penalty": extra["penalty"] * n}


def _losses(outputs: dict[str, torch.Tensor], real_labels: dict[str, torch.Tensor] | None,
            cf_labels: dict[str, torch.Tensor] | None, n_real: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """The step's loss (real loss + counterfactual loss) and its sums for the epoch's statistics,
    kept as tensors so that a GPU is not synchronised every step."""
    total = torch.zeros((), device=next(iter(outputs.values())).device)
    stats: dict[str, Any] = {}
    if real_labels is not None:
        part = {k: v[:n_real] for k, v in outputs.items()}
        loss = real_loss(part, real_labels["label"])
        total = total + loss
        stats.update(n_real=n_real, loss_real=loss.detach() * n_real,
                     correct_real=(average_logits(part).argmax(1) == real_labels["label"]).sum())
    if cf_labels is not None:
        part = {k: v[n_real:] for k, v in outputs.items()}
        loss = counterfactual_loss(part, cf_labels)
        total = total + loss
        n_cf = next(iter(part.values())).shape[0]
        stats.update(n_cf=n_cf, loss_cf=loss.detach() * n_cf)
        stats.update({f"correct_cf.{h}": (v.argmax(1) == cf_labels[h]).sum() for h, v in part.items()})
    return total, stats


def _epoch_summary(epoch: int, lr: float, sums: dict[str, float]) -> dict[str, Any]:
    out: dict[str, Any] = {"epoch": epoch + 1, "lr": lr}
    if sums.get("n_real"):
        out["loss_real"] = sums["loss_real"] / sums["n_real"]
        out["accuracy_real"] = sums["correct_real"] / sums["n_real"]
        if "penalty" in sums:
            out["penalty"] = sums["penalty"] / sums["n_real"]
    if sums.get("n_cf"):
        out["loss_cf"] = sums["loss_cf"] / sums["n_cf"]
        out["accuracy_cf"] = {k.split(".", 1)[1]: v / sums["n_cf"] for k, v in sums.items()
                              if k.startswith("correct_cf.")}
    return out


# -- evaluation ------------------------------------------------------------------------------
Score = Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor]], dict[str, Any]]


@torch.no_grad()
def _tally(model: nn.Module, source: Source, info: DistInfo, batch_size: int, precision: str, workers: int,
           score: Score) -> dict[str, float]:
    """Sum `score(logits per key, labels)` over this rank's share of `source`, then over the ranks.
    The keys are the model's heads plus "average" (the mean of the heads' logits)."""
    if len(source) < info.world_size:
        raise UsageError(f"an evaluation set of {len(source)} images cannot be shared by {info.world_size} processes")
    sampler = ShardSampler(len(source), info.rank, info.world_size, shuffle=False, drop_last=False)
    model = unwrap(model).to(info.device, memory_format=torch.channels_last).eval()
    sums: dict[str, float] = {}
    for images, labels in _batches(source, sampler.indices().split(batch_size), workers, info.device):
        with autocast(info.device, precision):
            outputs = model(network_input(images.to(info.device)))
        outputs = {k: v.float() for k, v in outputs.items()}
        outputs[AVERAGE] = average_logits(outputs)
        scored = score(outputs, {k: v.to(info.device) for k, v in labels.items()})
        for k, v in {"n": images.shape[0], **scored}.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    return all_reduce_sum(sums, info)


def _score_accuracy(decide: Callable[[torch.Tensor], torch.Tensor]) -> Score:
    return lambda outputs, labels: {k: (decide(v) == labels["label"]).sum() for k, v in outputs.items()}


def _score_heads(outputs: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> dict[str, Any]:
    return {h: (v.argmax(1) == labels[h]).sum() for h, v in outputs.items() if h != AVERAGE}


def _score_cue_conflict(outputs: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> dict[str, Any]:
    out = {}
    for k, v in outputs.items():
        decision = sixteen_class_decision(v)
        out[f"{k}/shape"] = (decision == labels["shape"]).sum()
        out[f"{k}/texture"] = (decision == labels["texture"]).sum()
    return out


def _keys(sums: dict[str, float]) -> list[str]:
    """The heads and "average" that a tally counted for (its keys are KEY or KEY/what)."""
    return list(dict.fromkeys(k.split("/")[0] for k in sums if k != "n"))


@dataclass
class EvalSets:
    """The evaluation sets, loaded (and so checked) before any training starts."""

    val: Source | None = None
    counterfactuals: Source | None = None
    cue_conflict: Source | None = None
    in9: dict[str, Source] = field(default_factory=dict)
    in9_mapping: torch.Tensor | None = None
    in9_mapping_origin: str = ""

    @classmethod
    def load(cls, *, val: DataArg | None = None, counterfactuals: DataArg | None = None,
             cue_conflict: str | Path | None = None, in9: str | Path | None = None,
             in9_mapping_file: str | Path | None = None, recipe: str = "imagenet",
             image_size: int | None = None) -> "EvalSets":
        """Real validation images (ImageFolder root or ImageSet), a counterfactual set (either
        layout), the cue-conflict stimuli root and the IN-9 root (its mixed_same and mixed_rand
        variants). Folders are read at `image_size`, else the recipe's size; in-memory sets and
        counterfactual sets keep their own size unless `image_size` is given."""
        rec = get_recipe(recipe)
        size = image_size or rec.image_size
        sets = cls()
        if val is not None:
            sets.val = as_source(val, image_size, rec.eval_mode, rec.image_size)
        if counterfactuals is not None:
            sets.counterfactuals = counterfactual_set(counterfactuals, image_size, rec.eval_mode) \
                if isinstance(counterfactuals, (str, Path)) else as_source(counterfactuals, image_size, rec.eval_mode)
        if cue_conflict is not None:
            sets.cue_conflict = load_cue_conflict(cue_conflict, size)
        if in9 is not None:
            sets.in9 = {variant: imagenet9(in9, variant, size) for variant in IN9_VARIANTS}
            sets.in9_mapping, sets.in9_mapping_origin = in9_mapping(in9, in9_mapping_file)
        return sets

    def check_heads(self, heads: dict[str, int]) -> None:
        """The counterfactual set must label every head the classifier has."""
        if self.counterfactuals is not None:
            _check_columns(self.counterfactuals, heads, "the evaluation counterfactual set")


def evaluate(model: nn.Module, sets: EvalSets, *, batch_size: int = 256, precision: str = "fp32", workers: int = 0,
             dist_info: DistInfo | None = None) -> dict[str, Any]:
    """Top-1 on real validation images, per-head accuracy on a counterfactual set, shape bias on
    the cue-conflict stimuli and IN-9 mixed-same / mixed-rand accuracy with their gap, each for
    every head and for "average". Shape bias = shape decisions / (shape + texture decisions).
    `summary` holds the headline numbers: the target head's, and the average's on real images."""
    info = dist_info or DistInfo(device=default_device())
    target = getattr(unwrap(model), "target_head", AVERAGE)
    sets.check_heads(getattr(unwrap(model), "head_sizes", {}))

    def tally(source: Source, score: Score) -> dict[str, float]:
        return _tally(model, source, info, batch_size, precision, workers, score)

    results: dict[str, Any] = {}
    if sets.val is not None:
        s = tally(sets.val, _score_accuracy(lambda v: v.argmax(1)))
        results["real"] = {"images": int(s["n"]), "top1": {k: s[k] / s["n"] for k in _keys(s)}}
    if sets.counterfactuals is not None:
        s = tally(sets.counterfactuals, _score_heads)
        results["counterfactual"] = {"images": int(s["n"]), "accuracy": {k: s[k] / s["n"] for k in _keys(s)}}
    if sets.cue_conflict is not None:
        s = tally(sets.cue_conflict, _score_cue_conflict)
        shape, texture = ({k: s[f"{k}/{cue}"] for k in _keys(s)} for cue in ("shape", "texture"))
        results["cue_conflict"] = {
            "images": int(s["n"]),
            "shape_bias": {k: shape[k] / (shape[k] + texture[k]) if shape[k] + texture[k] else None for k in shape},
            "shape_match": {k: shape[k] / s["n"] for k in shape},
            "texture_match": {k: texture[k] / s["n"] for k in texture}}
    if sets.in9:
        in9: dict[str, Any] = {"mapping": sets.in9_mapping_origin}
        for variant, source in sets.in9.items():
            s = tally(source, _score_accuracy(in9_decision(sets.in9_mapping)))
            in9[variant] = {k: s[k] / s["n"] for k in _keys(s)}
            in9[f"{variant}_images"] = int(s["n"])
        in9["gap"] = {k: in9["mixed_same"][k] - in9["mixed_rand"][k] for k in in9["mixed_same"]}
        results["in9"] = in9
    results["summary"] = _summary(results, target)
    return results


def _summary(results: dict[str, Any], target: str) -> dict[str, Any]:
    picks = {"real_top1": ("real", "top1", AVERAGE), "counterfactual_accuracy": ("counterfactual", "accuracy", target),
             "shape_bias": ("cue_conflict", "shape_bias", target), "in9_mixed_same": ("in9", "mixed_same", target),
             "in9_mixed_rand": ("in9", "mixed_rand", target), "in9_bg_gap": ("in9", "gap", target)}
    out: dict[str, Any] = {"target_head": target}
    for name, (section, metric, key) in picks.items():
        if section in results:
            out[name] = results[section][metric].get(key)
    return out


# -- reports ---------------------------------------------------------------------------------
def write_results(out: str | Path, results: dict[str, Any], training: TrainResult | None = None,
                  device: str | torch.device = "cpu", **extra: Any) -> tuple[Path, Path]:
    """OUT/results.json (results, training history and run metadata) and OUT/results.md, each
    replaced atomically. Call it on rank 0 only (`scmgen.distributed.on_main`)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train = None if training is None else {**asdict(training), "images_per_second": training.images_per_second}
    payload = {**run_metadata(device, **extra), "results": results, "training": train}
    atomic_write_text(out / "results.json", json.dumps(payload, indent=2, sort_keys=True) + "\n")
    atomic_write_text(out / "results.md", markdown_summary(results, training))
    return out / "results.json", out / "results.md"


def markdown_summary(results: dict[str, Any], training: TrainResult | None = None) -> str:
    """One table: a row per evaluation, a column per head and for the averaged logits."""
    rows: list[tuple[str, dict[str, Any]]] = []
    if "real" in results:
        rows.append((f"real top-1 ({results['real']['images']} images)", results["real"]["top1"]))
    if "counterfactual" in results:
        rows.append((f"counterfactual accuracy, own label ({results['counterfactual']['images']})",
                     results["counterfactual"]["accuracy"]))
    if "cue_conflict" in results:
        rows.append((f"cue-conflict shape bias ({results['cue_conflict']['images']} stimuli)",
                     results["cue_conflict"]["shape_bias"]))
    if "in9" in results:
        in9 = results["in9"]
        rows += [("IN-9 mixed-same", in9["mixed_same"]), ("IN-9 mixed-rand", in9["mixed_rand"]),
                 ("IN-9 BG-gap (same - rand)", in9["gap"])]
    target = results.get("summary", {}).get("target_head", AVERAGE)
    keys = list(dict.fromkeys(k for _, values in rows for k in values))
    keys = [AVERAGE, *[k for k in keys if k != AVERAGE]] if AVERAGE in keys else keys
    lines = ["# Invariant classifier", "",
             f"Target head: **{target}** (the classifier's answer to the main task). `{AVERAGE}`: the mean of the "
             "heads' logits, the prediction on real images.", ""]
    if rows:
        lines += ["| evaluation | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        lines += [f"| {label} | " + " | ".join(_fmt(values.get(k)) for k in keys) + " |" for label, values in rows]
    if "in9" in results:
        lines += ["", f"IN-9 ImageNet mapping: {results['in9']['mapping']}."]
    if training is not None:
        lines += ["", f"Training: {training.epochs} epochs, {training.steps} steps, {training.images} images in "
                  f"{training.seconds:.1f} s ({training.images_per_second:.0f} images/s) on {training.world_size} "
                  "process(es)."]
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"

"""One training run of a graph into a folder: what `scmgen train` and `scmgen bench table1` share.

The folder gets checkpoints/, samples/step_N.png (counterfactual grids while training), model/
(safetensors + graph.yaml + meta.json) and counterfactuals.png; a run found half done there is
resumed from its latest checkpoint when `resume` is set.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from scmgen.checkpoint import check_writable_parent
from scmgen.data import load_dataset
from scmgen.distributed import DistInfo
from scmgen.errors import UsageError
from scmgen.images import save_image_atomic
from scmgen.model import SCM
from scmgen.plugins import Mechanism
from scmgen.sampling import counterfactual_grid
from scmgen.trainer import Trainer, TrainResult


def has_checkpoint(out_dir: Path) -> bool:
    return (out_dir / "checkpoints" / "latest").exists()


def train_run(model: SCM, graph_path: Path, out_dir: Path, *, resume: bool = False, progress: bool = True,
              info: DistInfo | None = None, on_resume: Any = None) -> TrainResult:
    """Train `model` (built from `graph_path`, whose data section names the data) into `out_dir`;
    rank 0 saves model/ (its meta.json holds the step reached, also when interrupted) and
    counterfactuals.png at the end."""
    if not resume and has_checkpoint(out_dir):
        raise UsageError(f"{out_dir} already holds a training run: pass --resume to continue it or choose another --out")
    if resume and not has_checkpoint(out_dir):
        raise UsageError(f"--resume: no checkpoint in {out_dir}/checkpoints")
    check_writable_parent(out_dir / "model")
    data = load_dataset(model.spec, str(graph_path)) if model.spec.data else None
    trainer = Trainer(model, data, out_dir, progress=progress, info=info)
    if resume:
        step = trainer.resume()
        if on_resume:
            on_resume(step)

    def on_sample(tr: Trainer, writer: Any) -> None:
        tr.model.eval()
        image = counterfactual_grid(tr.model, seed=0)
        tr.model.train()
        save_image_atomic(image, out_dir / "samples" / f"step_{tr.step:07d}.png")
        if writer is not None:
            import numpy as np

            writer.add_image("counterfactuals", np.asarray(image), tr.step, dataformats="HWC")

    result = trainer.fit(on_sample=on_sample)
    for mechanism in model.mechanisms.values():
        if isinstance(mechanism, Mechanism):
            mechanism.after_training()
    if trainer.info.is_main:
        model.eval()
        model.save_pretrained(out_dir / "model", {"step": result.step, "seed": model.spec.train.seed,
                                                  "train_seconds": round(result.seconds, 2),
                                                  "trained_from_step": result.start_step,
                                                  "precision": trainer.precision})
        save_image_atomic(counterfactual_grid(model, seed=0), out_dir / "counterfactuals.png")
    return result

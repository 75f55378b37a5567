"""The counterfactual metrics: effectiveness, minimality, composition and realism.

Effectiveness: anti-causal predictors read every factor off the counterfactual; the intervened
factor must read as the asked value, the others as before. Minimality: mechanisms that do not
descend from the intervened node keep their outputs (exactly, for an SCM), and pixels change where
the intervened mechanism paints (inside the mask for the object's texture, outside for the
background). Composition: the null intervention (abduct, then regenerate) repeated m times must
stay close to the original. Realism: the Frechet distance between real and generated images in
the predictors' feature space (and standard FID where Inception weights exist).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scmgen.abduction import Abduction, Encoder, ImageDistance, abduct, frozen
from scmgen.evaluation.predictors import Predictors
from scmgen.model import SCM, Values
from scmgen.sampling import intervenable_labels
from scmgen.spec import LabelNode, MechanismNode


# -- Frechet distance -----------------------------------------------------------------------
def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between two feature sets (N, D).

    Tr((S_a S_b)^(1/2)) is computed as the sum of the square roots of the eigenvalues of the
    symmetric S_a^(1/2) S_b S_a^(1/2) (the same value as scipy.linalg.sqrtm's trace), in float64
    torch: it stays on torch's threads, where scipy's OpenBLAS ran 100x slower on a busy machine."""
    x, y = a.double(), b.double()
    s_x, s_y = torch.atleast_2d(torch.cov(x.T)), torch.atleast_2d(torch.cov(y.T))
    w, v = torch.linalg.eigh(s_x)
    root_x = (v * w.clamp_min(0).sqrt()) @ v.T
    cross = torch.linalg.eigvalsh(root_x @ s_y @ root_x).clamp_min(0).sqrt().sum()
    value = ((x.mean(0) - y.mean(0)) ** 2).sum() + s_x.trace() + s_y.trace() - 2 * cross
    return float(value.clamp_min(0))


INCEPTION_FILE = "inception_v3_google-0cc3c7bd.pth"


def inception_weights() -> Path | None:
    """torchvision's Inception-v3 ImageNet weights, if cached (scmgen cache or torch.hub's)."""
    from scmgen import weights

    for path in (weights.entry_dir("inception_v3") / INCEPTION_FILE,
                 Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE):
        if path.is_file():
            return path
    return None


@torch.no_grad()
def inception_features(images: torch.Tensor, path: Path, batch_size: int = 64) -> torch.Tensor:
    """2048 pool features of torchvision's Inception-v3 (not the TF-FID network: close, not equal)."""
    import torch.nn.functional as F
    import torchvision

    net = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    net.fc = torch.nn.Identity()
    net.eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    out = []
    for i in range(0, len(images), batch_size):
        x = F.interpolate(images[i:i + batch_size].float().cpu(), size=(299, 299), mode="bilinear")
        out.append(net(((x + 1) / 2 - mean) / std))
    return torch.cat(out)


# -- effectiveness --------------------------------------------------------------------------
def factor_of(model: SCM, node: str, factors: list[str], class_factor: str | None) -> str | None:
    """The data set factor a label node sets: its namesake, or for the class label the training
    conditioned on (a cGAN's y), the factor equal to the class label (the digit's shape)."""
    if node in factors:
        return node
    if node in model.spec.train.condition:
        return class_factor
    return None


def shifted(values: torch.Tensor, classes: int, generator: torch.Generator) -> torch.Tensor:
    """Per element a class other than `values`' own, uniformly: the value an intervention asks for."""
    step = torch.randint(1, classes, values.shape, generator=generator)
    return (values.cpu() + step) % classes


@torch.no_grad()
def effectiveness(model: SCM, predictors: Predictors, factual: Values, original: Mapping[str, torch.Tensor],
                  class_factor: str | None, generator: torch.Generator
                  ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Per intervenable label node: intervene on each image with another class than its own, read
    every factor off the counterfactual. `asked`: share that reads as the asked value; `kept`: share
    that reads as `original` (the factor's value before the intervention). The intended entry is
    `asked` for the node's own factor and `kept` for the others. Also returns the counterfactual
    images per node."""
    out: dict[str, Any] = {}
    made: dict[str, torch.Tensor] = {}
    for node in intervenable_labels(model):
        classes = model.spec.nodes[node].classes
        asked = shifted(factual[node], classes, generator)
        with frozen(model):
            images = model.counterfactual(factual, {node: asked})[model.spec.output]
        read = predictors.read_out(images)
        own = factor_of(model, node, predictors.factors, class_factor)
        cells = {}
        for f in predictors.factors:
            cells[f] = {"asked": float((read[f] == asked).float().mean()),
                        "kept": float((read[f] == original[f].cpu()).float().mean()),
                        "intended": "asked" if f == own else "kept"}
        out[node] = {"factor": own, "read_out": cells}
        made[node] = images
    return out, made


def effectiveness_summary(table: Mapping[str, Any]) -> dict[str, float | None]:
    """`changed`: mean over intervened nodes of the asked-value accuracy of their own factor;
    `kept`: mean over (node, other factor) of the unchanged accuracy."""
    changed = [v["read_out"][v["factor"]]["asked"] for v in table.values() if v["factor"]]
    kept = [c["kept"] for v in table.values() for f, c in v["read_out"].items() if f != v["factor"]]
    return {"changed": float(np.mean(changed)) if changed else None, "kept": float(np.mean(kept)) if kept else None}


# -- minimality -----------------------------------------------------------------------------
def mask_node(model: SCM) -> str | None:
    """The mechanism that feeds the output composer's mask, if the output is a composite."""
    node = model.spec.nodes[model.spec.output]
    ref = node.inputs.get("mask") if isinstance(node, MechanismNode) else None
    return ref if ref and isinstance(model.spec.nodes[ref], MechanismNode) else None


@torch.no_grad()
def minimality(model: SCM, factual: Values, generator: torch.Generator) -> dict[str, Any]:
    """Per intervenable label node, under a changed value: whether every mechanism that is not its
    descendant kept its output bit for bit, and the mean |pixel change| inside and outside the mask
    (pixels in [-1, 1]; the mask thresholded at 0.5)."""
    mask = mask_node(model)
    mechanisms = [n for n in model.order if isinstance(model.spec.nodes[n], MechanismNode) and n in factual]
    if mask is None or len(mechanisms) < 2:
        return {"applicable": False,
                "reason": f"graph '{model.spec.name}' has one mechanism and no mask: nothing to keep apart"}
    inside = (factual[mask] > 0.5).float().expand_as(factual[model.spec.output])
    out: dict[str, Any] = {"applicable": True, "mask": mask, "nodes": {}}
    for node in intervenable_labels(model):
        asked = shifted(factual[node], model.spec.nodes[node].classes, generator)
        with frozen(model):
            cf = model.counterfactual(factual, {node: asked})
        below = {n for n in mechanisms if node in model.upstream([n])}
        kept = [n for n in mechanisms if n not in below]
        change = (cf[model.spec.output] - factual[model.spec.output]).abs()
        out["nodes"][node] = {
            "unchanged_mechanisms": kept,
            "exact": all(torch.equal(cf[n], factual[n]) for n in kept),
            "max_abs_change_of_unchanged": max((float((cf[n] - factual[n]).abs().max()) for n in kept), default=0.0),
            "pixel_change_inside_mask": float((change * inside).sum() / inside.sum().clamp_min(1)),
            "pixel_change_outside_mask": float((change * (1 - inside)).sum() / (1 - inside).sum().clamp_min(1)),
        }
    return out


# -- composition ----------------------------------------------------------------------------
def composition(model: SCM, encoder: Encoder, images: torch.Tensor, steps: int, distance: ImageDistance,
                repeats: tuple[int, ...] = (1, 10), **abduct_options: Any) -> dict[str, dict[str, float]]:
    """The null intervention (abduct, regenerate) applied m times in a row; mean L1 and LPIPS of the
    m-th result to the original images, for every m in `repeats`."""
    out: dict[str, dict[str, float]] = {}
    current = images
    for m in range(1, max(repeats) + 1):
        current = abduct(model, encoder, current, steps, distance=distance, **abduct_options).reconstruction
        if m in repeats:
            with torch.no_grad():
                out[str(m)] = {"l1": float(distance.l1(current, images).mean()),
                               "lpips": float(distance.perceptual(current, images).mean())}
    return out


# -- realism --------------------------------------------------------------------------------
def realism(predictors: Predictors, reference: torch.Tensor, real: torch.Tensor,
            sets: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Frechet distance of each image set to the `reference` real images in the predictors' feature
    space. `real` (real images as many as each set holds) gives the floor: the distance that the
    sample size alone makes. With Inception weights cached, standard FID (torchvision's Inception-v3) too."""
    ref = predictors.features(reference)
    out: dict[str, Any] = {"feature_space": predictors.feature_space, "reference_images": len(reference),
                           "fd": {"real": frechet_distance(ref, predictors.features(real))}}
    for name, images in sets.items():
        out["fd"][name] = frechet_distance(ref, predictors.features(images))
    path = inception_weights()
    if path is None:
        out["fid"] = None
        out["fid_note"] = f"no Inception-v3 weights ({INCEPTION_FILE} in the weights cache or torch.hub's): FID skipped"
    else:
        base = inception_features(reference, path)
        out["fid"] = {name: frechet_distance(base, inception_features(images, path))
                      for name, images in {"real": real, **sets}.items()}
        out["fid_note"] = "torchvision's Inception-v3 pool features (close to, not equal to, TF-FID)"
    return out


def label_accuracy(abduction: Abduction, factors: Mapping[str, torch.Tensor], model: SCM,
                   class_factor: str | None) -> dict[str, float]:
    """How often abduction inferred each label node's true factor value on real images."""
    out = {}
    for node, value in abduction.labels.items():
        f = factor_of(model, node, list(factors), class_factor)
        if f is not None and isinstance(model.spec.nodes[node], LabelNode):
            out[node] = float((value.cpu() == factors[f]).float().mean())
    return out

"""Reading an MNIST CGN's masks as digits: the check that its shape mechanism kept every class.

A shape mechanism can lose a class while the others train on. At the fast recipe's 2000 steps, seed 2's
double-colored CGN drew nearly empty masks for do(shape=5) (mean mask 0.03; a digit covers 0.1-0.25) and
masks for do(shape=4) that read as other digits; trained on to 4000 steps it drew both
(results/ablations/fast_seeds). The reader is the reference CNN trained for one epoch on the stroke masks
of MNIST's 60k training digits: it never saw a generated mask, and no colour or texture enters, so it
checks the shape mechanism alone, which a classifier reading whole counterfactuals cannot tell apart from
the texture mechanisms.
"""
from __future__ import annotations

import torch

from mechanisms.mnist.datasets import digit_masks
from scmgen.classifier import InvariantClassifier
from scmgen.classify import accuracy, per_class_rate, predictions, train_classifier
from scmgen.data import ImageSet
from scmgen.model import SCM

READER_EPOCHS = 1  # 95.5-96.4% on the test digits' masks (by thread count), in about a minute on one EPYC thread
READER_LR = 3.0  # the table's Adadelta lr (on 10k digits instead of 60k the reader stayed at 34%)


def mask_images(masks: torch.Tensor) -> torch.Tensor:
    """Masks in [0, 1], (N, 1, H, W), as the uint8 RGB images the reference CNN reads: white strokes on black."""
    return (masks.float().clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()


def mask_set(split: str, limit: int | None = None) -> ImageSet:
    """MNIST's `split` as stroke-mask images (the first `limit` of them when given)."""
    masks, labels = digit_masks(split)
    if limit:
        masks, labels = masks[:limit], labels[:limit]
    return ImageSet(mask_images(masks), labels, {"shape": labels})


def train_mask_reader(seed: int = 0, limit: int | None = None, device: str = "cpu", precision: str = "fp32",
                      progress: bool = False) -> tuple[InvariantClassifier, float]:
    """The reader and its accuracy on the test digits' masks."""
    torch.manual_seed(seed)
    reader = InvariantClassifier("mnist.cnn", {"shape": 10})
    train_classifier(reader, mask_set("train", limit), real_fraction=1.0, recipe="mnist", epochs=READER_EPOCHS,
                     lr=READER_LR, seed=seed, device=device, precision=precision, progress=progress)
    return reader.eval(), accuracy(reader, mask_set("test", limit), precision, device)


def mask_readability(cgn: SCM, reader: InvariantClassifier, per_class: int = 100, seed: int = 0, node: str = "mask",
                     label: str = "shape", precision: str = "fp32", device: str = "cpu") -> list[float]:
    """Per class c: the share of `per_class` masks drawn under do(`label`=c) that `reader` reads as c."""
    classes = reader.head_sizes[reader.target_head]
    shapes = torch.arange(classes).repeat_interleave(per_class)
    with torch.inference_mode():
        masks = cgn.sample(len(shapes), {label: shapes}, seed=seed, targets=[node])[node]
    hits = predictions(reader, mask_images(masks.cpu()), precision, device) == shapes
    return per_class_rate(hits, shapes, classes)

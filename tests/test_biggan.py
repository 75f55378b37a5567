"""The BigGAN-deep mechanism on a tiny custom config, loading from the weights cache, random
initialisation of the full-size model, and the tiny ImageNet CGN graph end to end."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest
import torch
from click.testing import CliRunner
from pytorch_pretrained_biggan import BigGAN
from pytorch_pretrained_biggan.convert_tf_to_pytorch import BigGAN128, BigGAN256, BigGAN512

from mechanisms.imagenet.biggan import (
    CONFIG_FILE,
    OFFICIAL_CONFIGS,
    WEIGHTS_FILE,
    BigGANMechanism,
    make_config,
)
from scmgen import weights
from scmgen.cli import cli
from scmgen.noise import truncated_noise
from scmgen.plugins import NodeInfo

ROOT = Path(__file__).resolve().parent.parent
TINY_GRAPH = ROOT / "graphs" / "tiny_imagenet.yaml"
TINY_CONFIG = {"output_dim": 32, "z_dim": 16, "class_embed_dim": 16, "channel_width": 4, "num_classes": 10,
               "layers": [[True, 16, 8], [False, 8, 4], [True, 4, 2], [True, 2, 1]], "attention_layer_position": 2}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """These models are tiny: a second thread only adds synchronisation, which on a busy shared
    2-core machine makes each operation up to 100x slower."""
    torch.set_num_threads(1)


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "weights"))
    return tmp_path / "weights"


@pytest.fixture
def random_init(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(weights._state, "used_random", set())  # what this test records stays here
    weights.set_random_init(True)
    yield
    weights.set_random_init(False)


def inputs(dim: int = 16, classes: int = 10) -> dict[str, NodeInfo]:
    return {"noise": NodeInfo("u", "noise", dim=dim), "label": NodeInfo("y", "label", classes=classes)}


def tiny(**params: object) -> BigGANMechanism:
    return BigGANMechanism(inputs(), model="custom", config=TINY_CONFIG, **params)


def write_official_layout(folder: Path, net: BigGAN) -> None:
    """What pytorch-pretrained-biggan publishes: config.json and a plain state dict."""
    folder.mkdir(parents=True)
    (folder / CONFIG_FILE).write_text(net.config.to_json_string())
    torch.save(net.state_dict(), folder / WEIGHTS_FILE)


def perturbed_tiny() -> BigGAN:
    """A tiny BigGAN whose weights differ from anything the mechanism would initialise itself."""
    net = tiny().net
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


@pytest.fixture
def tiny_entry(cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A registered BigGAN weights entry 'biggan-tiny' holding `perturbed_tiny()` in the cache."""
    monkeypatch.setitem(weights.ENTRIES, "biggan-tiny", weights.WeightsEntry(
        "biggan-tiny", "test model", {CONFIG_FILE: ("https://example.invalid/c", None),
                                      WEIGHTS_FILE: ("https://example.invalid/w", None)}, kind="biggan"))
    write_official_layout(cache / "biggan-tiny", perturbed_tiny())
    return cache / "biggan-tiny"


def test_official_configs_match_the_library() -> None:
    for name, ref in (("biggan-deep-128", BigGAN128), ("biggan-deep-256", BigGAN256), ("biggan-deep-512", BigGAN512)):
        expected = {**ref.to_dict(), "layers": [list(layer) for layer in ref.layers]}
        assert make_config(OFFICIAL_CONFIGS[name]).to_dict() == expected


@pytest.mark.parametrize("output_size, size", [(None, 32), (16, 16)])
def test_tiny_output_shape_and_range(output_size: int | None, size: int) -> None:
    mech = tiny(output_size=output_size).eval()
    with torch.no_grad():
        x = mech(torch.randn(3, 16), torch.tensor([0, 4, 9]))
    assert x.shape == (3, 3, size, size)
    assert torch.isfinite(x).all() and x.min() >= -1 and x.max() <= 1 and x.std() > 0


def test_gradients_reach_the_generator() -> None:
    mech = tiny().train()
    mech(torch.randn(2, 16), torch.tensor([1, 2])).square().mean().backward()
    for name in ("net.embeddings.weight", "net.generator.gen_z.weight_orig", "net.generator.conv_to_rgb.weight_orig"):
        grad = dict(mech.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name



def _saved_bytes(mech: BigGANMechanism, noise: torch.Tensor, label: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for the backward pass of one forward pass."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        mech(noise, label)
    return total


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_checkpointing_gives_the_plain_outputs_and_gradients(precision: str) -> None:
    """Two training rounds, each with two forward passes before one backward pass (the spectral
    norms' power iteration runs once per forward pass, not again when blocks are recomputed)."""
    plain, ckpt = tiny().train(), tiny(checkpointing=True).train()
    assert ckpt.checkpointing and not plain.checkpointing
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        noise, label = torch.randn(2, 3, 16, generator=gen), torch.randint(0, 10, (2, 3), generator=gen)
        weight = torch.randn(3, 3, 32, 32, generator=gen)
        outputs = {}
        for name, mech in (("plain", plain), ("ckpt", ckpt)):
            mech.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                first, second = mech(noise[0], label[0]), mech(noise[1], label[1])
            ((first.float() - second.float()) * weight).square().mean().backward()
            outputs[name] = (first, second)
        for a, b in zip(outputs["plain"], outputs["ckpt"]):
            torch.testing.assert_close(b, a, atol=1e-6, rtol=0)
        grads = {name: p.grad for name, p in ckpt.named_parameters()}
        for name, p in plain.named_parameters():
            assert p.grad is not None and grads[name] is not None, name
            torch.testing.assert_close(grads[name], p.grad, atol=1e-6, rtol=0, msg=name)
        for (name, a), (_, b) in zip(plain.named_buffers(), ckpt.named_buffers()):  # spectral-norm u and v
            assert torch.equal(a, b), name
    noise, label = torch.randn(2, 16), torch.tensor([1, 2])
    assert _saved_bytes(ckpt, noise, label) < 0.6 * _saved_bytes(plain, noise, label)
    plain.eval(), ckpt.eval()
    with torch.no_grad():
        assert torch.equal(ckpt(noise, label), plain(noise, label))


@pytest.mark.parametrize("kwargs, message", [
    ({"inputs": inputs(dim=8)}, "has dim 8, but custom takes z_dim 16"),
    ({"inputs": inputs(classes=1000)}, "has 1000 classes, but custom has num_classes 10"),
    ({"truncation": 0.0}, "truncation must be in"),
    ({"config": {**TINY_CONFIG, "widht": 4}}, "unknown BigGAN config key"),
    ({"config": {**TINY_CONFIG, "output_dim": 64}}, "upsample 4 px to 32 px"),
    ({"model": "biggan-deep-1024"}, "unknown BigGAN model"),
])
def test_bad_parameters_are_clear(kwargs: dict, message: str) -> None:
    args = {"inputs": inputs(), "model": "custom", "config": TINY_CONFIG, **kwargs}
    with pytest.raises(ValueError, match=message):
        BigGANMechanism(args.pop("inputs"), **args)


def test_loads_the_official_layout_from_the_cache(tiny_entry: Path) -> None:
    source = BigGAN(make_config(TINY_CONFIG))
    source.load_state_dict(torch.load(tiny_entry / WEIGHTS_FILE, weights_only=True))
    mech = BigGANMechanism(inputs(), model="biggan-tiny", truncation=0.4).eval()
    u, y = torch.randn(4, 16), torch.tensor([0, 3, 5, 9])
    with torch.no_grad():
        expected = source.eval()(truncated_noise(u, 0.4), torch.nn.functional.one_hot(y, 10).float(), 0.4)
        assert torch.equal(mech(u, y), expected)


def test_a_wrong_state_dict_fails_naming_the_key(tiny_entry: Path) -> None:
    state = torch.load(tiny_entry / WEIGHTS_FILE, weights_only=True)
    state["generator.gen_z.bias"] = torch.zeros(7)
    torch.save(state, tiny_entry / WEIGHTS_FILE)
    with pytest.raises(ValueError, match=r"'generator.gen_z.bias' has shape \(7,\), expected \(1024,\)"):
        BigGANMechanism(inputs(), model="biggan-tiny")


def test_a_config_of_another_model_in_an_official_slot_fails(cache: Path) -> None:
    write_official_layout(cache / "biggan-deep-128", perturbed_tiny())
    with pytest.raises(ValueError, match="is not biggan-deep-128's config"):
        BigGANMechanism(inputs(128, 1000), model="biggan-deep-128")


def test_missing_weights_say_how_to_fetch(cache: Path) -> None:
    with pytest.raises(weights.MissingWeights, match="scmgen weights fetch biggan-deep-256"):
        BigGANMechanism(inputs(128, 1000))


def test_random_init_builds_the_full_size_model(cache: Path, random_init: None) -> None:
    mech = BigGANMechanism(inputs(128, 1000), model="biggan-deep-256")
    assert sum(p.numel() for p in mech.parameters()) == pytest.approx(55.9e6, abs=0.1e6)
    assert mech.native_size == 256 and weights.used_random_init() == ["biggan-deep-256"]
    assert torch.equal(mech.net.generator.bn.weight, torch.ones(128))  # left uninitialised by the library


def test_tiny_imagenet_validates_and_trains(cache: Path, random_init: None, tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["--random-init", "validate", str(TINY_GRAPH)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "run"
    result = runner.invoke(cli, ["--random-init", "train", str(TINY_GRAPH), "--out", str(out), "--quiet",
                                 "--set", "train.steps=2"])
    assert result.exit_code == 0, (result.output, result.exception)
    meta = json.loads((out / "model" / "meta.json").read_text())
    assert meta["step"] == 2 and {"u2netp", "vgg16"} <= set(meta["random_init"])
    assert sorted(p.name for p in (out / "model").glob("*.safetensors")) == [
        "backdrop.safetensors", "foreground.safetensors", "shape_image.safetensors"]

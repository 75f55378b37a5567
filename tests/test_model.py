"""Graph ordering, sampling, interventions and counterfactuals on the tiny CGN graph."""
from __future__ import annotations

import pytest
import torch

from scmgen import SCM, Mechanism, NodeInfo, UsageError, register
from scmgen.graph import descendants
from tests.conftest import TINY


@pytest.fixture(scope="module")
def model() -> SCM:
    return SCM.from_yaml(TINY).eval()


def test_topological_order_puts_parents_first(model: SCM) -> None:
    pos = {n: i for i, n in enumerate(model.order)}
    for u, v in model.graph.edges:
        assert pos[u] < pos[v]
    assert model.order[-1] == "image"
    assert set(model.exogenous) == {"u_shape", "u_texture", "u_background", "y"}


def test_same_seed_same_samples_and_labels_tied(model: SCM) -> None:
    a, b = model.sample(6, seed=3), model.sample(6, seed=3)
    assert torch.equal(a["image"], b["image"])
    assert not torch.equal(a["image"], model.sample(6, seed=4)["image"])
    assert torch.equal(a["shape"], a["y"]) and torch.equal(a["texture"], a["y"])


def test_background_intervention_leaves_mask_and_foreground_bit_identical(model: SCM) -> None:
    factual = model.sample(8, seed=0)
    cf = model.counterfactual(factual, {"background": (factual["background"] + 1) % 4})
    assert torch.equal(cf["mask"], factual["mask"])
    assert torch.equal(cf["foreground"], factual["foreground"])
    assert not torch.equal(cf["backdrop"], factual["backdrop"])
    m = factual["mask"]
    # the composite changes only through the background term
    assert torch.allclose(cf["image"] - factual["image"], (1 - m) * (cf["backdrop"] - factual["backdrop"]), atol=1e-6)


def test_texture_intervention_leaves_mask_identical(model: SCM) -> None:
    factual = model.sample(8, seed=1)
    cf = model.counterfactual(factual, {"texture": 2})
    assert torch.equal(cf["mask"], factual["mask"])
    assert torch.equal(cf["backdrop"], factual["backdrop"])
    assert torch.equal(cf["texture"], torch.full((8,), 2))


def test_counterfactual_reuses_noise_and_null_intervention_is_identity(model: SCM) -> None:
    factual = model.sample(5, seed=2)
    same = model.counterfactual(factual, {})
    for k in factual:
        assert torch.equal(same[k], factual[k])
    # the intervened sample under the same exogenous values equals a fresh forward pass with do
    exo = {k: factual[k] for k in model.exogenous}
    assert torch.equal(model.counterfactual(factual, {"shape": 1})["image"], model(exo, {"shape": 1})["image"])


def test_resampled_noise_changes_only_its_mechanism(model: SCM) -> None:
    factual = model.sample(4, seed=5)
    cf = model.counterfactual(factual, resample={"u_texture": torch.randn(4, 8)})
    assert torch.equal(cf["mask"], factual["mask"]) and not torch.equal(cf["foreground"], factual["foreground"])


def test_interventions_by_name_function_and_tensor(model: SCM) -> None:
    by_name = model.sample(3, do={"shape": "disk"}, seed=0)
    assert by_name["shape"].tolist() == [1, 1, 1]
    soft = model.sample(3, do={"texture": lambda t: (t + 1) % 4}, seed=0)
    assert torch.equal(soft["texture"], (soft["y"] + 1) % 4)
    mask = torch.ones(1, 1, 16, 16)
    hard = model.sample(3, do={"mask": mask}, seed=0)
    assert torch.equal(hard["image"], hard["foreground"])


@pytest.mark.parametrize("do, message", [
    ({"shape": 9}, "class id out of range, expected 0..3"),
    ({"shape": "circle"}, "unknown class name"),
    ({"y": 1}, "not an intervenable node"),
    ({"nope": 1}, "not an intervenable node"),
])
def test_bad_interventions_are_clear(model: SCM, do: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        model.sample(2, do=do, seed=0)


def test_descendants_are_what_an_intervention_recomputes(model: SCM) -> None:
    assert descendants(model.graph, {"texture"}) == {"texture", "foreground", "image"}


def test_custom_mechanism_registered_in_python(tiny_raw: dict) -> None:
    @register("mechanisms", "test.invert")
    class Invert(Mechanism):
        roles = ("image",)

        def __init__(self, inputs: dict[str, NodeInfo]) -> None:
            super().__init__(inputs)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return -image

    from scmgen.spec import parse_spec

    tiny_raw["nodes"]["negative"] = {"kind": "mechanism", "plugin": "test.invert", "inputs": {"image": "image"}}
    tiny_raw["output"] = "negative"
    m = SCM(parse_spec(tiny_raw)).eval()
    v = m.sample(2, seed=0)
    assert torch.equal(v["negative"], -v["image"])

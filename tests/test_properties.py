"""Property tests: random valid graphs validate and run; random mutations of a valid graph are
either accepted (and then run) or rejected with a clean SpecError, never a crash."""
from __future__ import annotations

import copy
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scmgen import SCM, ScmgenError, SpecError
from scmgen.spec import parse_spec
from tests.conftest import TINY

BASE = yaml.safe_load(TINY.read_text())
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += paths(v, prefix + (i,))
    return out


VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 70), st.floats(allow_nan=True),
                   st.text(max_size=8), st.lists(st.integers(0, 3), max_size=3),
                   st.sampled_from(["y", "mask", "u_shape", "image", "nope", "mnist.shape", "gan.lsgan"]),
                   st.dictionaries(st.sampled_from(["kind", "dim", "plugin", "x"]), st.integers(0, 4), max_size=2))


@st.composite
def mutated(draw: st.DrawFn) -> dict:
    raw = copy.deepcopy(BASE)
    for _ in range(draw(st.integers(1, 3))):
        target = draw(st.sampled_from(paths(raw)))
        parent = raw
        for key in target[:-1]:
            parent = parent[key]
        op = draw(st.sampled_from(["set", "delete", "add"]))
        if op == "delete":
            del parent[target[-1]]
        elif op == "set" or not isinstance(parent, dict):
            parent[target[-1]] = draw(VALUES)
        else:
            parent[draw(st.text(min_size=1, max_size=6))] = draw(VALUES)
        if not paths(raw):
            break
    return raw


def build(raw: dict) -> SCM:
    model = SCM(parse_spec(raw, "mutant.yaml"), "mutant.yaml")
    model.dry_run()
    return model


@SETTINGS
@given(mutated())
def test_mutations_are_accepted_or_cleanly_rejected(raw: dict) -> None:
    try:
        model = build(raw)
    except ScmgenError as e:
        text = str(e)
        assert "\n" not in text and text.startswith("mutant.yaml") or not isinstance(e, SpecError), text
        return
    values = model.sample(2, seed=0)
    assert values[model.spec.output].shape[0] == 2


@st.composite
def valid_graph(draw: st.DrawFn) -> dict:
    classes = draw(st.integers(1, 6))
    size = draw(st.sampled_from([8, 16]))
    init = draw(st.sampled_from([s for s in (2, 4) if size // s >= 2]))
    width = draw(st.integers(1, 6))
    shared_noise = draw(st.booleans())
    dims = [draw(st.integers(1, 9)) for _ in range(3)]
    nodes: dict[str, Any] = {"y": {"kind": "label", "classes": classes}}
    for i, part in enumerate(["shape", "texture", "background"]):
        nodes[part] = {"kind": "label", "classes": classes, "parents": ["y"]}
        if not shared_noise or i == 0:
            nodes[f"u{i if not shared_noise else ''}"] = {"kind": "noise", "dim": dims[i],
                                                        "distribution": draw(st.sampled_from(["normal", "uniform"]))}
    params = {"width": width, "init_size": init, "out_size": size}
    noise = (lambda i: "u") if shared_noise else (lambda i: f"u{i}")
    nodes["mask"] = {"kind": "mechanism", "plugin": "mnist.shape", "inputs": {"noise": noise(0), "label": "shape"},
                     "params": {**params, "activation": draw(st.sampled_from(["clamp", "sigmoid"]))}}
    for i, (name, label) in enumerate([("fg", "texture"), ("bg", "background")], start=1):
        nodes[name] = {"kind": "mechanism", "plugin": draw(st.sampled_from(["mnist.texture", "mnist.background"])),
                       "inputs": {"noise": noise(i), "label": label}, "params": params}
    nodes["img"] = {"kind": "mechanism", "plugin": "composer.alpha",
                    "inputs": {"mask": "mask", "foreground": "fg", "background": "bg"}}
    return {"name": "random_graph", "nodes": nodes, "output": "img",
            "intervenable": draw(st.lists(st.sampled_from(["shape", "texture", "background", "mask"]), unique=True)),
            "losses": {"binary": {"plugin": "mask.binary", "weight": draw(st.floats(0, 1)), "inputs": {"mask": "mask"}}},
            "train": {"batch_size": 2, "steps": 1, "seed": draw(st.integers(0, 100))}}


@SETTINGS
@given(raw=valid_graph())
def test_random_valid_graphs_validate_and_train_a_step(raw: dict, tmp_path_factory) -> None:
    from scmgen.trainer import Trainer

    model = build(raw)
    trainer = Trainer(model, None, tmp_path_factory.mktemp("g"), progress=False, tensorboard=False)
    losses = trainer.train_step()
    assert set(losses) == {"binary"}
    sample = model.eval().sample(3, seed=1)
    size = raw["nodes"]["mask"]["params"]["out_size"]
    assert sample["img"].shape == (3, 3, size, size)

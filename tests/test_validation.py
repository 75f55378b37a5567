"""Every kind of bad graph file gives one line naming the file, the field and what was expected,
exit code 2 and no traceback."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import pytest
from click.testing import CliRunner

from scmgen.cli import cli


def mutate(fn: Callable[[dict], Any]) -> Callable[[dict], dict]:
    def apply(raw: dict) -> dict:
        raw = copy.deepcopy(raw)
        fn(raw)
        return raw

    return apply


def _set(path: str, value: Any) -> Callable[[dict], dict]:
    def fn(raw: dict) -> None:
        *parents, last = path.split(".")
        node = raw
        for p in parents:
            node = node[p]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value

    return mutate(fn)


DELETE = object()

CASES = [
    ("cycle", mutate(lambda r: r["nodes"]["y"].update(parents=["shape"])),
     "nodes: the graph has a cycle: "),
    ("self loop", mutate(lambda r: r["nodes"]["mask"]["inputs"].update(noise="mask")),
     "nodes.mask.inputs: node 'mask' lists itself as a parent (self-loop)"),
    ("missing parent", _set("nodes.mask.inputs.noise", "u_nope"),
     "nodes.mask.inputs: parent 'u_nope' is not a node"),
    ("unknown plugin", _set("nodes.mask.plugin", "mnist.nope"),
     "nodes.mask.plugin: unknown mechanism plugin 'mnist.nope', available: composer.alpha"),
    ("unknown loss plugin", _set("losses.binary.plugin", "mask.nope"),
     "losses.binary.plugin: unknown loss plugin 'mask.nope'"),
    ("unknown critic plugin", _set("losses.gan.critic.plugin", "nope"),
     "losses.gan.critic.plugin: unknown critic plugin 'nope'"),
    ("unknown data plugin", _set("data.plugin", "nope"), "data.plugin: unknown dataset plugin 'nope'"),
    ("unknown top-level key", _set("nodez", {}), "nodez: unknown key"),
    ("unknown node key", _set("nodes.mask.parametres", {}), "nodes.mask.parametres: unknown key"),
    ("unknown train key", _set("train.lr", 0.1), "train.lr: unknown key"),
    ("wrong type", _set("train.batch_size", "big"), "train.batch_size: Input should be a valid integer"),
    ("out of range", _set("train.batch_size", 0), "train.batch_size: Input should be greater than 0"),
    ("negative weight", _set("losses.binary.weight", -1), "losses.binary.weight: Input should be greater than or equal to 0"),
    ("bad noise dim", _set("nodes.u_shape.dim", 0), "nodes.u_shape.dim: Input should be greater than 0"),
    ("unknown node kind", _set("nodes.u_shape.kind", "gaussian"), "nodes.u_shape: unknown node kind"),
    ("missing kind", mutate(lambda r: r["nodes"]["u_shape"].pop("kind")), "nodes.u_shape: missing 'kind'"),
    ("missing output", _set("output", DELETE), "output: Field required"),
    ("output not a node", _set("output", "picture"), "output: 'picture' is not a node"),
    ("output is a label", _set("output", "y"), "output: 'y' must be a mechanism node"),
    ("intervene on unknown", _set("intervenable", ["shape", "colour"]), "intervenable.1: 'colour' is not a node"),
    ("intervene on noise", _set("intervenable", ["u_shape"]), "intervenable.0: 'u_shape' is exogenous noise"),
    ("label parent of other size", mutate(lambda r: r["nodes"]["shape"].update(classes=3, names=None)),
     "nodes.shape.parents: a label's parent must be a label with the same number of classes"),
    ("label names count", _set("nodes.y.names", ["a", "b"]), "nodes.y: names has 2 entries, expected 4"),
    ("missing role", mutate(lambda r: r["nodes"]["image"]["inputs"].pop("mask")),
     "nodes.image.inputs: plugin 'composer.alpha' needs input role(s) mask"),
    ("unknown role", mutate(lambda r: r["nodes"]["mask"]["inputs"].update(colour="y")),
     "nodes.mask.inputs.colour: plugin 'mnist.shape' has no input role 'colour'"),
    ("unknown mechanism param", _set("nodes.mask.params.depth", 3),
     "nodes.mask.params: plugin 'mnist.shape': got an unexpected keyword argument 'depth'"),
    ("bad mechanism param value", _set("nodes.mask.params.out_size", 24),
     "nodes.mask.params: plugin 'mnist.shape': out_size/init_size must be a power of two"),
    ("shape mismatch", _set("nodes.backdrop.params.out_size", 32),
     "nodes.image: dry run failed: input 'background' has shape (1, 3, 32, 32), expected (1, 3, 16, 16)"),
    ("noise where label expected", _set("nodes.mask.inputs.label", "u_shape"),
     "nodes.mask.params: plugin 'mnist.shape': input 'noise' must be a noise node and 'label' a label node"),
    ("loss input unknown", _set("losses.binary.inputs.mask", "nope"),
     "losses.binary.inputs.mask: 'nope' is not a node or one of data.image, data.label"),
    ("optimizer for unknown node", _set("train.optimizers", {"nope": {"lr": 0.1}}),
     "train.optimizers.nope: expected the name of a trainable mechanism node"),
    ("condition on non-root", _set("train.condition", {"shape": "label"}),
     "train.condition.shape: expected the name of a root label node"),
    ("steps and epochs", mutate(lambda r: r["train"].update(epochs=2)), "train: give either steps or epochs, not both"),
    ("bad precision", _set("train.precision", "fp8"), "train.precision: Input should be 'auto', 'fp32' or 'bf16'"),
    ("bad node name", mutate(lambda r: r["nodes"].update({"bad-name": {"kind": "noise", "dim": 2}})),
     "nodes.bad-name: names must be identifiers (letters, digits and _, not starting with a digit), got 'bad-name'"),
    ("adversarial without data", _set("data", DELETE),
     "losses.gan.critic: an adversarial loss needs real images: add a data section"),
]


@pytest.mark.parametrize("name, change, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_graph_is_one_clear_line(name: str, change: Callable, expected: str, tiny_raw: dict, write_graph) -> None:
    path = write_graph(change(tiny_raw))
    result = CliRunner().invoke(cli, ["validate", str(path)])
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and "Traceback" not in result.output
    assert lines[0].startswith(f"error: {path}: "), lines[0]
    assert expected in lines[0], lines[0]


FILE_CASES = [
    ("empty", "", "file is empty, expected a YAML mapping"),
    ("only a comment", "# nothing\n", "file is empty"),
    ("syntax error", "name: x\nnodes: {a: [\n", "invalid YAML"),
    ("tab indentation", "name: x\n\tnodes: 1\n", "line 2, column 1: invalid YAML"),
    ("a list", "- a\n- b\n", "expected a YAML mapping at the top, got list"),
    ("python tag", "name: !!python/object/apply:os.system ['echo hi']\n", "invalid YAML"),
]


@pytest.mark.parametrize("name, text, expected", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_bad_file_is_one_clear_line(name: str, text: str, expected: str, write_graph) -> None:
    path = write_graph(text)
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert expected in result.stderr


def test_binary_missing_and_directory(tmp_path: Path) -> None:
    binary = tmp_path / "g.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    for target, expected in [(binary, "not a UTF-8 text file"), (tmp_path / "none.yaml", "no such file"),
                             (tmp_path, "is a directory")]:
        result = CliRunner().invoke(cli, ["validate", str(target)])
        assert result.exit_code == 2 and expected in result.stderr, result.stderr


def test_debug_shows_traceback(write_graph, tiny_raw: dict) -> None:
    path = write_graph(_set("output", "picture")(tiny_raw))
    result = CliRunner().invoke(cli, ["--debug", "validate", str(path)])
    assert result.exit_code != 0 and result.exception is not None


def test_overrides_are_validated_the_same_way(tiny_raw: dict, write_graph) -> None:
    path = write_graph(tiny_raw)
    ok = CliRunner().invoke(cli, ["validate", str(path), "--set", "train.batch_size=64"])
    assert ok.exit_code == 0, ok.output
    bad = CliRunner().invoke(cli, ["validate", str(path), "--set", "train.batch_size=-3"])
    assert bad.exit_code == 2 and "train.batch_size: Input should be greater than 0" in bad.stderr
    bad = CliRunner().invoke(cli, ["validate", str(path), "--set", "train.batchsize=3"])
    assert bad.exit_code == 2 and "train.batchsize: unknown key" in bad.stderr
    bad = CliRunner().invoke(cli, ["validate", str(path), "--set", "noequals"])
    assert bad.exit_code == 2 and "expected KEY=VALUE" in bad.stderr


def test_shipped_graphs_validate() -> None:
    from tests.conftest import ROOT

    files = sorted(str(p) for p in (ROOT / "graphs").glob("*.yaml"))
    result = CliRunner().invoke(cli, ["validate", *files])
    assert result.exit_code == 0, result.output
    assert result.output.count("ok: ") == len(files) >= 4

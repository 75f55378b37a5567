"""The structural causal model: a validated graph turned into modules that run in topological order.

One class serves every graph. Sampling draws the exogenous nodes and computes the rest;
an intervention replaces a node's value (the structural equation is cut); a counterfactual keeps
the exogenous values of given samples and recomputes only what depends on what changed.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Mapping

import networkx as nx
import torch
from torch import nn

from scmgen import registry
from scmgen.checkpoint import atomic_directory, load_module, read_json, save_module, write_json
from scmgen.errors import SpecError
from scmgen.graph import build_graph, descendants, parents_of, topological_order
from scmgen.interventions import DoValue, check_intervenable, value_tensor
from scmgen.noise import truncated_noise
from scmgen.plugins import Mechanism, NodeInfo, ShapeMismatch
from scmgen.provenance import run_metadata
from scmgen.spec import (
    GraphSpec,
    LabelNode,
    MechanismNode,
    NoiseNode,
    apply_overrides,
    dump_spec,
    parse_spec,
    read_yaml,
)
from scmgen.weights import MissingWeights, used_random_init

Values = dict[str, torch.Tensor]


def build_plugin(kind: str, plugin: str, inputs: dict[str, NodeInfo], params: dict[str, Any], source: str,
                 field: str) -> nn.Module:
    """Instantiate a plugin, turning a bad parameter or a missing role into a `SpecError`."""
    cls = registry.get(kind, plugin)
    roles = getattr(cls, "roles", ())
    optional = getattr(cls, "optional_roles", ())
    missing = [r for r in roles if r not in inputs]
    extra = [r for r in inputs if r not in roles and r not in optional]
    if missing:
        raise SpecError(source, f"{field}.inputs", f"plugin '{plugin}' needs input role(s) {', '.join(missing)}")
    if extra:
        raise SpecError(source, f"{field}.inputs.{extra[0]}",
                        f"plugin '{plugin}' has no input role '{extra[0]}', expected: {', '.join(roles + optional)}")
    try:
        inspect.signature(cls).bind(inputs, **params)
    except TypeError as e:
        raise SpecError(source, f"{field}.params", f"plugin '{plugin}': {e}") from None
    try:
        return cls(inputs, **params)
    except (TypeError, ValueError, MissingWeights) as e:
        raise SpecError(source, f"{field}.params", f"plugin '{plugin}': {e}") from None


class SCM(nn.Module):
    """A graph spec's mechanisms as one module; see the module docstring for the semantics."""

    def __init__(self, spec: GraphSpec, source: str = "<graph>") -> None:
        super().__init__()
        self.spec = spec
        self.source = source
        self.graph = build_graph(spec, source)
        self.order = topological_order(self.graph)
        self.mechanisms = nn.ModuleDict()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.train.seed)  # the same spec and seed give the same initial weights
            self._build_mechanisms()
        self.random_init = used_random_init()  # pretrained weights replaced by random ones (--random-init)

    def _build_mechanisms(self) -> None:
        spec, source = self.spec, self.source
        for name in self.order:
            node = spec.nodes[name]
            if isinstance(node, MechanismNode):
                inputs = {role: self.node_info(ref) for role, ref in node.inputs.items()}
                module = build_plugin("mechanisms", node.plugin, inputs, node.params, source, f"nodes.{name}")
                if not isinstance(module, Mechanism):
                    raise SpecError(source, f"nodes.{name}.plugin", f"'{node.plugin}' is not a Mechanism")
                if not node.trainable:
                    module.requires_grad_(False)
                self.mechanisms[name] = module
        built = dict(self.mechanisms)
        for name, module in built.items():
            try:
                module.bind(built)
            except ValueError as e:
                raise SpecError(source, f"nodes.{name}.params", str(e)) from None

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> "SCM":
        """Read, merge `--set` overrides, validate, build, and dry-run a graph file."""
        raw = apply_overrides(read_yaml(path), list(overrides))
        model = cls(parse_spec(raw, str(path)), str(path))
        model.dry_run()
        return model

    def node_info(self, name: str) -> NodeInfo:
        node = self.spec.nodes[name]
        if isinstance(node, NoiseNode):
            return NodeInfo(name, "noise", dim=node.dim)
        if isinstance(node, LabelNode):
            return NodeInfo(name, "label", classes=node.classes)
        return NodeInfo(name, "mechanism")

    def train(self, mode: bool = True) -> "SCM":
        """Frozen mechanisms (trainable: false) stay in eval mode: a teacher's batch-norm
        statistics must not drift while the others train."""
        super().train(mode)
        for name, module in self.mechanisms.items():
            if not self.spec.nodes[name].trainable:
                module.eval()
        return self

    def saved_mechanisms(self) -> dict[str, nn.Module]:
        """Mechanisms whose weights a checkpoint holds: trainable ones with a state. Frozen ones
        are rebuilt from their spec (pretrained files from the weights cache, or the seeded
        random initialisation), so a checkpoint never copies a teacher's hundreds of MB."""
        return {name: m for name, m in self.mechanisms.items()
                if self.spec.nodes[name].trainable and any(True for _ in m.state_dict())}

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    @property
    def exogenous(self) -> list[str]:
        """Noise nodes and parentless labels: everything a sample is a function of."""
        return [n for n in self.order if not parents_of(self.spec, n)]

    # -- running ----------------------------------------------------------------------------
    def sample_exogenous(self, n: int, generator: torch.Generator | None = None,
                         truncation: Mapping[str, float] | None = None) -> Values:
        """Draw every exogenous node on the CPU (same values on any device), then move them.
        `truncation` maps normal noise nodes to a truncation (`scmgen.noise`); the draws are the same."""
        out: Values = {}
        for name in self.exogenous:
            node = self.spec.nodes[name]
            if isinstance(node, NoiseNode):
                if node.distribution == "normal":
                    v = torch.randn(n, node.dim, generator=generator)
                    if truncation and name in truncation:
                        v = truncated_noise(v, truncation[name])
                else:
                    v = torch.rand(n, node.dim, generator=generator) * 2 - 1
            else:
                v = torch.randint(node.classes, (n,), generator=generator)
            out[name] = v.to(self.device)
        return out

    def _compute(self, name: str, values: Values) -> torch.Tensor:
        node = self.spec.nodes[name]
        if isinstance(node, LabelNode):
            return values[node.parents[0]]
        assert isinstance(node, MechanismNode)
        return self.mechanisms[name](**{role: values[ref] for role, ref in node.inputs.items()})

    def forward(self, exogenous: Mapping[str, torch.Tensor], do: Mapping[str, DoValue] | None = None,
                targets: list[str] | None = None) -> Values:
        """Node values for the given exogenous values, under intervention `do`: all nodes, or only
        `targets` and what they depend on (a frozen teacher is skipped when only the image is asked)."""
        todo = set(self.order) - set(exogenous)
        if targets is not None:
            todo &= self.upstream(targets)
        return self._run(dict(exogenous), todo, do or {})

    def upstream(self, targets: list[str]) -> set[str]:
        """`targets` and every node they depend on."""
        out = set(targets)
        for t in targets:
            out |= nx.ancestors(self.graph, t)
        return out

    def _run(self, values: Values, todo: set[str], do: Mapping[str, DoValue]) -> Values:
        check_intervenable(self.spec, do)
        n = next(iter(values.values())).shape[0] if values else 1
        for name in self.order:
            if name in do:
                pre = None
                if callable(do[name]) and not isinstance(do[name], torch.Tensor):
                    pre = values[name] if name not in todo else self._compute(name, values)
                values[name] = value_tensor(self.spec, name, do[name], pre, n, self.device)
            elif name in todo:
                values[name] = self._compute(name, values)
        return values

    def sample(self, n: int, do: Mapping[str, DoValue] | None = None, seed: int | None = None,
               targets: list[str] | None = None) -> Values:
        """n samples (every node's value, or `targets`' and their ancestors') under `do`; the same
        seed gives the same samples."""
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        return self(self.sample_exogenous(n, generator), do, targets)

    def counterfactual(self, factual: Mapping[str, torch.Tensor], do: Mapping[str, DoValue] | None = None,
                       resample: Mapping[str, torch.Tensor] | None = None) -> Values:
        """What `factual` would have been under `do` (and with the exogenous nodes in `resample`
        replaced): nodes that depend on neither keep their factual values bit for bit."""
        do = dict(do or {})
        resample = dict(resample or {})
        for name in resample:
            if name not in self.exogenous:
                raise SpecError(self.source, name, "only exogenous nodes can be resampled")
        changed = set(do) | set(resample)
        todo = descendants(self.graph, changed) - set(do) - set(resample)
        values = {k: v for k, v in factual.items() if k not in todo}
        values.update({k: v.to(self.device) for k, v in resample.items()})
        return self._run(values, todo, do)

    def dry_run(self) -> None:
        """Run a batch of 1 so that shape mismatches between mechanisms surface at validation."""
        values = self.sample_exogenous(1, torch.Generator().manual_seed(0))
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                for name in self.order:
                    if name in values:
                        continue
                    try:
                        values[name] = self._compute(name, values)
                    except (ShapeMismatch, RuntimeError) as e:
                        first = str(e).strip().splitlines()[0]
                        raise SpecError(self.source, f"nodes.{name}",
                                        f"dry run failed: {first} (check the shapes its parents produce)") from None
        finally:
            self.train(was_training)

    # -- persistence ------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, extra_meta: dict[str, Any] | None = None) -> Path:
        """Write graph.yaml, one safetensors file per mechanism and meta.json, atomically."""
        directory = Path(directory)
        with atomic_directory(directory) as tmp:
            self.write_into(tmp, extra_meta)
        return directory

    def write_into(self, directory: Path, extra_meta: dict[str, Any] | None = None) -> None:
        (directory / "graph.yaml").write_text(dump_spec(self.spec))
        for name, module in self.saved_mechanisms().items():
            save_module(module, directory / f"{name}.safetensors")
        # read the record again: losses built after the model (a perceptual VGG) may have added to it
        random_init = sorted(set(self.random_init) | set(used_random_init()))
        write_json(directory / "meta.json", run_metadata(self.device, graph=self.spec.name,
                                                         random_init=random_init, **(extra_meta or {})))

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> "SCM":
        """Rebuild the graph stored in `directory` and load its weights strictly."""
        directory = Path(directory)
        source = str(directory)
        if not directory.is_dir():
            raise SpecError(source, "", "no such checkpoint directory" if not directory.exists()
                            else "is a file, expected a checkpoint directory")
        model = cls(parse_spec(read_yaml(directory / "graph.yaml"), str(directory / "graph.yaml")), source)
        model.meta = read_json(directory / "meta.json", source)
        for name, module in model.saved_mechanisms().items():
            load_module(module, directory / f"{name}.safetensors", source)
        return model.to(device).eval()

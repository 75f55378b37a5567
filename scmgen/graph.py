"""The spec as a networkx DAG, and the checks that need the whole graph.

Edges run parent -> child. Topological order is lexicographic among ties, so every run computes
nodes in the same order whatever the YAML's key order.
"""
from __future__ import annotations

import networkx as nx

from scmgen import registry
from scmgen.errors import SpecError
from scmgen.spec import GraphSpec, LabelNode, MechanismNode

DATA_INPUTS = ("data.image", "data.label")


def parents_of(spec: GraphSpec, name: str) -> list[str]:
    node = spec.nodes[name]
    if isinstance(node, MechanismNode):
        return list(node.inputs.values())
    if isinstance(node, LabelNode):
        return list(node.parents)
    return []


def build_graph(spec: GraphSpec, source: str = "<graph>") -> nx.DiGraph:
    """Check references, acyclicity and plugin names; return the DAG with node attributes."""
    g = nx.DiGraph()
    for name, node in spec.nodes.items():
        g.add_node(name, kind=node.kind)
    for name, node in spec.nodes.items():
        field = f"nodes.{name}.inputs" if isinstance(node, MechanismNode) else f"nodes.{name}.parents"
        for parent in parents_of(spec, name):
            if parent == name:
                raise SpecError(source, field, f"node '{name}' lists itself as a parent (self-loop)")
            if parent not in spec.nodes:
                raise SpecError(source, field, f"parent '{parent}' is not a node, expected one of: {', '.join(spec.nodes)}")
            g.add_edge(parent, name)
        if isinstance(node, LabelNode) and node.parents:
            parent = spec.nodes[node.parents[0]]
            if not isinstance(parent, LabelNode) or parent.classes != node.classes:
                raise SpecError(source, field, f"a label's parent must be a label with the same number of classes ({node.classes})")
    try:
        cycle = nx.find_cycle(g)
    except nx.NetworkXNoCycle:
        cycle = None
    if cycle:
        path = " -> ".join([u for u, _ in cycle] + [cycle[0][0]])
        raise SpecError(source, "nodes", f"the graph has a cycle: {path}; expected a DAG")
    _check_references(spec, source)
    return g


def _check_plugin(kind: str, name: str, source: str, field: str) -> None:
    try:
        registry.get(kind, name)
    except registry.UnknownPlugin as e:
        raise SpecError(source, field, str(e)) from None


def _check_references(spec: GraphSpec, source: str) -> None:
    if spec.output not in spec.nodes:
        raise SpecError(source, "output", f"'{spec.output}' is not a node")
    if not isinstance(spec.nodes[spec.output], MechanismNode):
        raise SpecError(source, "output", f"'{spec.output}' must be a mechanism node")
    for i, name in enumerate(spec.intervenable):
        if name not in spec.nodes:
            raise SpecError(source, f"intervenable.{i}", f"'{name}' is not a node, expected one of: {', '.join(spec.nodes)}")
        if spec.nodes[name].kind == "noise":
            raise SpecError(source, f"intervenable.{i}", f"'{name}' is exogenous noise; intervene on labels or mechanisms")
    for name, node in spec.nodes.items():
        if isinstance(node, MechanismNode):
            _check_plugin("mechanisms", node.plugin, source, f"nodes.{name}.plugin")
    for name, loss in spec.losses.items():
        _check_plugin("losses", loss.plugin, source, f"losses.{name}.plugin")
        if loss.critic is not None:
            _check_plugin("critics", loss.critic.plugin, source, f"losses.{name}.critic.plugin")
        for role, ref in loss.inputs.items():
            if ref not in spec.nodes and ref not in DATA_INPUTS:
                raise SpecError(source, f"losses.{name}.inputs.{role}",
                                f"'{ref}' is not a node or one of {', '.join(DATA_INPUTS)}")
            if ref in DATA_INPUTS and spec.data is None:
                raise SpecError(source, f"losses.{name}.inputs.{role}", f"reads '{ref}' but the graph has no data section")
        if loss.critic is not None and spec.data is None:
            raise SpecError(source, f"losses.{name}.critic", "an adversarial loss needs real images: add a data section")
    for name in spec.train.optimizers:
        node = spec.nodes.get(name)
        if not isinstance(node, MechanismNode) or not node.trainable:
            raise SpecError(source, f"train.optimizers.{name}", "expected the name of a trainable mechanism node")
    for name in spec.train.condition:
        if not isinstance(spec.nodes.get(name), LabelNode) or spec.nodes[name].parents:
            raise SpecError(source, f"train.condition.{name}", "expected the name of a root label node")
    if spec.data is not None:
        _check_plugin("datasets", spec.data.plugin, source, "data.plugin")


def topological_order(g: nx.DiGraph) -> list[str]:
    return list(nx.lexicographical_topological_sort(g))


def descendants(g: nx.DiGraph, nodes: set[str]) -> set[str]:
    """`nodes` and everything downstream of them: what an intervention must recompute."""
    out = set(nodes)
    for n in nodes:
        out |= nx.descendants(g, n)
    return out

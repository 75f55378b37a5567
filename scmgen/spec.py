"""The declarative graph spec: YAML in, a validated `GraphSpec` out.

Pydantic checks types, ranges and unknown keys; `scmgen.graph` then checks what needs the whole
graph (parents exist, no cycles). Every failure becomes a `SpecError` naming the file and the
dotted field path, because a researcher editing YAML needs to know where, not a traceback.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from scmgen import classnames
from scmgen.errors import SpecError

NodeName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class NoiseNode(_Strict):
    """Exogenous noise u ~ N(0, I) (or U[-1, 1]) of a fixed size."""

    kind: Literal["noise"]
    dim: int = Field(gt=0)
    distribution: Literal["normal", "uniform"] = "normal"


class LabelNode(_Strict):
    """A class label. Without a parent it is drawn uniformly; with one it copies its parent,
    so the observational distribution ties labels together (as in the training data) and an
    intervention unties them."""

    kind: Literal["label"]
    classes: int = Field(gt=0)
    # one name per class, or the name of a built-in set (`names: imagenet`), expanded here to its
    # list and written back as its name (scmgen.classnames)
    names: list[str] | None = None
    parents: list[NodeName] = Field(default_factory=list, max_length=1)

    @field_validator("names", mode="before")
    @classmethod
    def _named_set(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, str):
            return value
        names = classnames.named_set(value)
        classes = info.data.get("classes")
        if classes is not None and len(names) != classes:
            raise ValueError(f"the set '{value}' has {len(names)} classes, but classes is {classes}")
        return names

    @field_serializer("names")
    def _write_named_set(self, names: list[str] | None) -> list[str] | str | None:
        return classnames.set_name_of(names) or names

    @model_validator(mode="after")
    def _names_match(self) -> "LabelNode":
        if self.names is not None and len(self.names) != self.classes:
            raise ValueError(f"names has {len(self.names)} entries, expected {self.classes} (one per class)")
        return self


class MechanismNode(_Strict):
    """A structural equation: a registered plugin fed by parent nodes under named roles."""

    kind: Literal["mechanism"]
    plugin: str
    inputs: dict[str, NodeName] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    trainable: bool = True


Node = Annotated[Union[NoiseNode, LabelNode, MechanismNode], Field(discriminator="kind")]


class OptimizerSpec(_Strict):
    name: Literal["adam", "adamw", "sgd", "adadelta"] = "adam"
    lr: float = Field(gt=0)
    betas: tuple[float, float] = (0.5, 0.999)
    momentum: float = Field(default=0.0, ge=0)
    weight_decay: float = Field(default=0.0, ge=0)


class CriticSpec(_Strict):
    """The discriminator of an adversarial loss: a plugin with its own optimiser."""

    plugin: str
    params: dict[str, Any] = Field(default_factory=dict)
    optimizer: OptimizerSpec | None = None


class LossSpec(_Strict):
    """A loss plugin, its weight, and the nodes it reads under named roles.

    A role may also read the real batch as `data.image` / `data.label`."""

    plugin: str
    weight: float = Field(default=1.0, ge=0)
    # the weight rises linearly from 0 over the first `warmup` steps (0: full weight from the start)
    warmup: int = Field(default=0, ge=0)
    inputs: dict[str, str] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    critic: CriticSpec | None = None


class DataSpec(_Strict):
    plugin: str
    params: dict[str, Any] = Field(default_factory=dict)


class TrainSpec(_Strict):
    batch_size: int = Field(default=16, gt=0)
    steps: int | None = Field(default=None, gt=0)
    epochs: float | None = Field(default=None, gt=0)
    accumulate: int = Field(default=1, gt=0)
    optimizer: OptimizerSpec = OptimizerSpec(lr=2e-4)
    optimizers: dict[NodeName, OptimizerSpec] = Field(default_factory=dict)
    condition: dict[NodeName, Literal["label"]] = Field(default_factory=dict)
    device: str = "cpu"
    precision: Literal["auto", "fp32", "bf16"] = "fp32"  # auto: bf16 where the device has it natively (scmgen.precision)
    seed: int = Field(default=0, ge=0)
    checkpoint_every: int = Field(default=0, ge=0)
    keep_checkpoints: int = Field(default=2, gt=0)
    sample_every: int = Field(default=0, ge=0)
    log_every: int = Field(default=50, gt=0)
    # decay of an average of the trained weights that replaces them at the end (see scmgen/ema.py)
    ema: float | None = Field(default=None, gt=0, lt=1)

    @model_validator(mode="after")
    def _one_length(self) -> "TrainSpec":
        if self.steps is not None and self.epochs is not None:
            raise ValueError("give either steps or epochs, not both")
        return self


class GraphSpec(_Strict):
    """A whole SCM: nodes, the observed output, what may be intervened on, and how to train."""

    name: NodeName
    description: str = ""
    nodes: dict[NodeName, Node] = Field(min_length=1)
    output: NodeName
    intervenable: list[NodeName] = Field(default_factory=list)
    losses: dict[NodeName, LossSpec] = Field(default_factory=dict)
    data: DataSpec | None = None
    train: TrainSpec = TrainSpec()


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with safe loading only (no `!!python` tags, nothing executed)."""
    source = str(path)
    p = Path(path)
    if not p.exists():
        raise SpecError(source, "", "no such file")
    if p.is_dir():
        raise SpecError(source, "", "is a directory, expected a YAML file")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise SpecError(source, "", "not a UTF-8 text file, expected YAML") from None
    if "\x00" in text:
        raise SpecError(source, "", "binary file, expected YAML")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError(source, where, f"invalid YAML: {problem}") from None
    if raw is None:
        raise SpecError(source, "", "file is empty, expected a YAML mapping with name, nodes and output")
    if not isinstance(raw, dict):
        raise SpecError(source, "", f"expected a YAML mapping at the top, got {type(raw).__name__}")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: list[str], source: str = "--set") -> dict[str, Any]:
    """Merge `a.b.c=value` overrides (values parsed as YAML) into a copy of the raw spec."""
    merged = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SpecError(source, item, "expected KEY=VALUE, e.g. train.batch_size=64")
        try:
            parsed = yaml.safe_load(value) if value else ""
        except yaml.YAMLError:
            parsed = value
        node: Any = merged
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part) if isinstance(node, dict) else None
            if child is None:
                child = {}
                node[part] = child
            if not isinstance(child, dict):
                raise SpecError(source, ".".join(parts[: i + 1]), "is not a mapping, cannot set a key inside it")
            node = child
        node[parts[-1]] = parsed
    return merged


def parse_spec(raw: dict[str, Any], source: str = "<graph>") -> GraphSpec:
    """Validate a raw mapping; the first problem becomes a one-line `SpecError`."""
    try:
        return GraphSpec.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        # keys are user text: quote any that would break the one-line message
        loc = [str(p) if str(p).isprintable() and " " not in str(p) else repr(str(p)) for p in err["loc"]]
        # pydantic adds the discriminator tag (e.g. 'mechanism') as a path element: drop it
        if len(loc) >= 3 and loc[0] == "nodes" and loc[2] in ("noise", "label", "mechanism"):
            del loc[2]
        if loc and loc[-1] == "[key]":
            loc.pop()
        field = ".".join(loc)
        msg = err["msg"]
        if err["type"] == "string_pattern_mismatch" and "A-Za-z_" in str(err.get("ctx", {}).get("pattern", "")):
            msg = f"names must be identifiers (letters, digits and _, not starting with a digit), got {err['input']!r}"
        elif err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "union_tag_invalid":
            msg = "unknown node kind, expected one of: noise, label, mechanism"
        elif err["type"] == "union_tag_not_found":
            msg = "missing 'kind', expected one of: noise, label, mechanism"
        elif "input" in err and err["type"] not in ("missing",):
            got = repr(err["input"])
            msg = f"{msg} (got {got if len(got) <= 60 else got[:57] + '...'})"
        msg = msg.replace("Value error, ", "")
        raise SpecError(source, field, msg) from None


def dump_spec(spec: GraphSpec) -> str:
    """The resolved spec as YAML (defaults filled in), as stored in checkpoints."""
    return yaml.safe_dump(spec.model_dump(mode="json", exclude_none=True), sort_keys=False)

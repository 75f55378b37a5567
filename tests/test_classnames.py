"""`names: imagenet` label nodes and how `--do shape=cat` finds its class."""
from __future__ import annotations

from typing import Any

import pytest
import torch
import yaml

from scmgen import SpecError, UsageError
from scmgen.classnames import IMAGENET_SYNONYMS, imagenet_names, normalise
from scmgen.interventions import class_index, resolve_class, value_tensor
from scmgen.spec import GraphSpec, dump_spec, parse_spec


def _raw(**shape: Any) -> dict:
    return {"name": "g", "output": "shape", "nodes": {
        "shape": {"kind": "label", "classes": 1000, "names": "imagenet", **shape},
        "digit": {"kind": "label", "classes": 3, "names": ["zero", "one", "two"]},
        "plain": {"kind": "label", "classes": 4}}}


@pytest.fixture(scope="module")
def spec() -> GraphSpec:
    return parse_spec(_raw())


def test_named_set_expands_and_is_written_back_by_name(spec: GraphSpec) -> None:
    names = spec.nodes["shape"].names
    assert names is not None and len(names) == 1000 and names[281] == "tabby" and names[978] == "seashore"
    text = dump_spec(spec)
    assert "names: imagenet" in text and "tabby" not in text
    assert parse_spec(yaml.safe_load(text)) == spec


@pytest.mark.parametrize("shape, message", [
    ({"names": "imagnet"}, "unknown set of class names 'imagnet', expected a list of names or one of: imagenet"),
    ({"classes": 10}, "the set 'imagenet' has 1000 classes, but classes is 10"),
])
def test_bad_named_set_is_an_error_at_the_names_field(shape: dict, message: str) -> None:
    with pytest.raises(SpecError) as e:
        parse_spec(_raw(**shape), "g.yaml")
    assert e.value.field == "nodes.shape.names" and message in e.value.message


def test_ambiguous_word_picks_the_canonical_class_and_lists_the_others(spec: GraphSpec) -> None:
    r = resolve_class(spec, "shape", "cat")
    assert (r.index, r.name) == (281, "tabby")
    assert r.candidates == ((282, "tiger cat"), (283, "Persian cat"), (284, "Siamese cat"), (285, "Egyptian cat"))
    assert r.describe(limit=2) == "cat -> 281 tabby (also: 282 tiger cat, 283 Persian cat, ...)"
    assert class_index(spec, "shape", "cat") == 281


def test_strict_mode_refuses_an_ambiguous_word(spec: GraphSpec) -> None:
    with pytest.raises(UsageError, match=r"do shape=cat: ambiguous class name, it names 5 classes: 281 tabby, "
                                         r"282 tiger cat, .*285 Egyptian cat"):
        resolve_class(spec, "shape", "cat", strict=True)
    with pytest.raises(UsageError, match=r"118 in all"):
        resolve_class(spec, "shape", "dog", strict=True)


@pytest.mark.parametrize("word, index", [
    ("Tabby", 281), ("zebra", 340), ("ZEBRA", 340), ("elephant", 386), ("beach", 978), ("great_white_shark", 2),
    ("Great White Shark", 2), ("plane", 726), ("airplane", 404), ("retriever", 205), ("dog", 207), ("281", 281),
    (281, 281), ("0", 0),
])
def test_words_names_and_ids(spec: GraphSpec, word: str | int, index: int) -> None:
    assert resolve_class(spec, "shape", word).index == index


def test_exact_names_and_single_synonyms_are_unambiguous(spec: GraphSpec) -> None:
    for word in ("tabby", "Tabby", "beach", "281"):
        r = resolve_class(spec, "shape", word, strict=True)
        assert r.candidates == ()
    assert resolve_class(spec, "shape", "Tabby").describe() == "Tabby -> 281 tabby"
    words = resolve_class(spec, "shape", "retriever")  # whole-word match inside names
    assert [i for i, _ in words.candidates] == [206, 207, 208, 209]


def test_unknown_word_suggests_close_ones(spec: GraphSpec) -> None:
    with pytest.raises(UsageError, match=r"do shape=catt: unknown class name; did you mean: .*\bcat\b"):
        resolve_class(spec, "shape", "catt")
    with pytest.raises(UsageError, match="unknown class name"):
        resolve_class(spec, "shape", "qqqqxz")


@pytest.mark.parametrize("value", ["1000", 1000, "-1"])
def test_out_of_range_id(spec: GraphSpec, value: str | int) -> None:
    with pytest.raises(UsageError, match=r"class id out of range, expected 0\.\.999"):
        resolve_class(spec, "shape", value)


def test_plain_label_nodes_keep_exact_names_only(spec: GraphSpec) -> None:
    assert class_index(spec, "digit", "One") == 1
    r = resolve_class(spec, "digit", "two", strict=True)
    assert (r.index, r.name, r.candidates) == (2, "two", ())
    with pytest.raises(UsageError, match="do digit=onee: unknown class name; did you mean: one"):
        class_index(spec, "digit", "onee")
    with pytest.raises(UsageError, match="do digit=cat: unknown class name; valid: zero, one, two"):
        class_index(spec, "digit", "cat")
    assert class_index(spec, "plain", "3") == 3
    with pytest.raises(UsageError, match=r"class id out of range, expected 0\.\.3"):
        class_index(spec, "plain", 4)


def test_the_engine_uses_the_canonical_class(spec: GraphSpec) -> None:
    t = value_tensor(spec, "shape", "elephant", None, 3, torch.device("cpu"))
    assert t.tolist() == [386, 386, 386]


def test_synonym_table_is_consistent() -> None:
    names = [normalise(n) for n in imagenet_names()]
    assert len(names) == 1000
    for word, ids in IMAGENET_SYNONYMS.items():
        assert word == normalise(word), word
        assert word not in names, f"{word} is a class name: an exact name always wins, so the entry is unused"
        assert ids and len(set(ids)) == len(ids) and all(0 <= i < 1000 for i in ids), word

"""The one ``Registry`` (loglinear/registry.py): registration, lookup errors, the Mapping
interface, and that the package's tables of named variants are registries."""

from __future__ import annotations

import importlib
from collections.abc import Mapping

import pytest

from loglinear.registry import Registry, UnknownNameError


@pytest.fixture
def reg() -> Registry:
    return Registry("widget", {"b": 2, "a": 1})


def test_register_returns_the_item_and_get_finds_it(reg):
    assert reg.register("c", 3) == 3
    assert reg.get("c") == 3 and reg["c"] == 3


def test_register_twice_raises(reg):
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        reg.register("a", 10)
    assert reg["a"] == 1                           # the first entry is kept


@pytest.mark.parametrize("name", ["", None, 3])
def test_names_are_non_empty_strings(reg, name):
    with pytest.raises(ValueError, match="non-empty string"):
        reg.register(name, 0)


def test_unknown_name_lists_the_registered_ones(reg):
    with pytest.raises(UnknownNameError) as info:
        reg.get("zzz")
    msg = str(info.value)
    assert msg == "unknown widget 'zzz'; registered: ['a', 'b']"
    # one error for both kinds of caller: mappings (KeyError) and input checks (ValueError)
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    with pytest.raises(KeyError, match="registered"):
        reg["zzz"]


def test_mapping_behaviour(reg):
    assert isinstance(reg, Mapping)
    assert len(reg) == 2
    assert list(reg) == ["b", "a"]                 # insertion order
    assert "a" in reg and "zzz" not in reg
    assert dict(reg.items()) == {"b": 2, "a": 1}
    assert sorted(reg.keys()) == ["a", "b"] and sorted(reg.values()) == [1, 2]
    assert reg.get("zzz", 7) == 7                  # an explicit default, as for a dict
    assert reg == {"a": 1, "b": 2}
    assert "widget" in repr(reg)


REGISTRIES = [
    ("loglinear.losses", "LOSSES"),
    ("loglinear.approx", "WDPO_FORMS"),
    ("loglinear.approx", "KLDPO_FORMS"),
    ("loglinear.approx", "KLDPO_METHODS"),
    ("loglinear.estimation", "LOCAL_KINDS"),
    ("loglinear.experiments.three_d.dynamics", "OBJECTIVES"),
    ("loglinear.experiments.three_d.dynamics", "OPTIMIZERS"),
]
TORCH_REGISTRIES = [
    ("loglinear.torch.losses", "LOSSES"),
    ("loglinear.torch.losses", "WDPO_FORMS"),
    ("loglinear.torch.losses", "KLDPO_FORMS"),
    ("loglinear.torch.objectives", "OBJECTIVES"),
    ("loglinear.torch.neural", "OBJECTIVES"),
    ("loglinear.torch.loglinear_policy", "LOGLINEAR_OBJECTIVES"),
]


def _check(module, name):
    table = getattr(importlib.import_module(module), name)
    assert isinstance(table, Registry), f"{module}.{name} is a {type(table).__name__}"
    with pytest.raises(ValueError, match="registered"):
        table.get("no-such-name")


@pytest.mark.parametrize("module,name", REGISTRIES)
def test_the_package_tables_are_registries(module, name):
    _check(module, name)


@pytest.mark.parametrize("module,name", TORCH_REGISTRIES)
def test_the_torch_tables_are_registries(module, name):
    pytest.importorskip("torch")
    _check(module, name)

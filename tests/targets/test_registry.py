"""Tests for targets.registry (names, register, entry points) and the targets.base interface."""

from __future__ import annotations

import dataclasses
import sys
import textwrap
from pathlib import Path
from typing import Mapping

import pytest
import torch

import targets
from hwtoolkit.network import NetworkSpec, dynamics
from targets import registry
from targets.base import Capabilities, Target, TargetError, Update, UpdateReport, start_states

SPEC = NetworkSpec(input_shape=(1, 6, 6), hidden=(8,), classes=3)
FAKE_MODULE = "fake_target_mod"


@pytest.fixture(autouse=True)
def clean_registry():
    """Restore the registry's module-level cache and drop fake modules after every test."""
    saved = dict(registry._registered)
    yield
    registry._registered.clear()
    registry._registered.update(saved)
    for name in [m for m in sys.modules if m.startswith(FAKE_MODULE)]:
        del sys.modules[name]


@dataclasses.dataclass(frozen=True)
class DummyOptions:
    flavour: str = "plain"


class DummyTarget(Target):
    """The smallest complete Target: keeps weights in a dict and relaxes with the exact dynamics."""

    Options = DummyOptions

    def __init__(self, spec: NetworkSpec, options: DummyOptions | None = None, /, **kwargs: object) -> None:
        super().__init__(spec, options, **kwargs)
        self.flavour = self.options.flavour
        self.weights: dict[str, torch.Tensor] = {}
        self.closed = 0

    @property
    def capabilities(self) -> Capabilities:
        return Capabilities(name=self.name, device="cpu", dtype="float32", exact=False)

    def _program(self, weights: Mapping[str, torch.Tensor]) -> None:
        self.weights = {n: t.clone() for n, t in weights.items()}

    def _read_weights(self) -> dict[str, torch.Tensor]:
        return {n: t.clone() for n, t in self.weights.items()}

    def _relax(self, x, steps, beta, y, start, stop_tolerance):  # noqa: ANN001, ANN202
        return dynamics.relax(self.spec, self.weights, x, steps, beta, y, start_states(start, "cpu", torch.float32),
                              stop_tolerance=stop_tolerance)

    def _apply_update(self, update: Update) -> UpdateReport:
        for n, d in update.delta.items():
            self.weights[n] += d
        return UpdateReport()

    def close(self) -> None:
        self.closed += 1


FAKE_SOURCE = textwrap.dedent(
    """
    from dataclasses import dataclass

    from targets.base import Capabilities, Target, UpdateReport


    @dataclass(frozen=True)
    class FakeOptions:
        port: str = "none"


    class FakeTarget(Target):
        description = "a third-party target found through its entry point"
        Options = FakeOptions

        def __init__(self, spec, options=None, /, **kwargs):
            super().__init__(spec, options, **kwargs)
            self.port = self.options.port

        @property
        def capabilities(self):
            return Capabilities(name="fake", device="cpu", dtype="float32", exact=False, address=self.port)

        def _program(self, weights):
            pass

        def _read_weights(self):
            return {}

        def _relax(self, x, steps, beta, y, start, stop_tolerance):
            raise NotImplementedError

        def _apply_update(self, update):
            return UpdateReport()


    NOT_A_TARGET = 42


    class NotATargetClass:
        def __init__(self, spec):
            self.spec = spec
    """
)


@pytest.fixture
def fake_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installed-looking distribution on sys.path: a module plus fake_target-0.1.dist-info."""
    (tmp_path / f"{FAKE_MODULE}.py").write_text(FAKE_SOURCE)
    info = tmp_path / "fake_target-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-target\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[hwtoolkit.targets]\n"
        f"fake = {FAKE_MODULE}:FakeTarget\n"
        f"fake_int = {FAKE_MODULE}:NOT_A_TARGET\n"
        f"fake_cls = {FAKE_MODULE}:NotATargetClass\n"
        "\n[some.other.group]\n"
        f"elsewhere = {FAKE_MODULE}:FakeTarget\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


# --------------------------------------------------------------------------- names


def test_available_lists_reference() -> None:
    names = targets.available()
    assert "reference" in names
    assert names == sorted(names)


def test_reference_is_available_even_with_an_empty_cache() -> None:
    registry._registered.clear()
    assert "reference" in targets.available()
    from targets.reference import ReferenceTarget

    assert targets.get("reference") is ReferenceTarget
    assert registry._registered["reference"] is ReferenceTarget
    t = targets.open("reference", SPEC)
    assert isinstance(t, ReferenceTarget)
    assert t.spec is SPEC


def test_open_unknown_lists_available() -> None:
    with pytest.raises(TargetError, match=r"unknown target 'nope'; available: .*reference"):
        targets.open("nope", SPEC)
    with pytest.raises(TargetError, match=r"'nope'"):
        targets.get("nope")


def test_open_passes_options() -> None:
    registry.register("dummy")(DummyTarget)
    t = targets.open("dummy", SPEC, flavour="spicy")
    assert isinstance(t, DummyTarget)
    assert t.flavour == "spicy"
    assert t.spec is SPEC


# --------------------------------------------------------------------------- register


def test_register_adds_name_and_sets_class_name() -> None:
    assert "dummy" not in targets.available()
    returned = registry.register("dummy")(DummyTarget)
    assert returned is DummyTarget
    assert DummyTarget.name == "dummy"
    assert "dummy" in targets.available()
    assert targets.get("dummy") is DummyTarget
    assert targets.open("dummy", SPEC).capabilities.name == "dummy"


def test_registry_fixture_isolates_tests() -> None:
    # test_register_adds_name_and_sets_class_name registered "dummy"; the fixture removed it again.
    assert "dummy" not in registry._registered


@pytest.mark.parametrize("bad", [object, int, dict], ids=lambda c: c.__name__)
def test_register_rejects_non_targets(bad: type) -> None:
    with pytest.raises(TypeError, match="not a Target subclass"):
        registry.register("bad")(bad)
    assert "bad" not in targets.available()


def test_register_rejects_non_class() -> None:
    with pytest.raises(TypeError):
        registry.register("bad")(lambda spec: None)
    assert "bad" not in targets.available()


# --------------------------------------------------------------------------- entry points


def test_entry_point_target_is_discovered_and_opened(fake_distribution: Path) -> None:
    assert registry.ENTRY_POINT_GROUP == "hwtoolkit.targets"
    names = targets.available()
    assert "fake" in names
    assert "reference" in names
    assert "elsewhere" not in names  # other groups are ignored
    t = targets.open("fake", SPEC, port="/dev/fake0")
    module = sys.modules[FAKE_MODULE]
    assert type(t) is module.FakeTarget
    assert isinstance(t, Target)
    assert t.port == "/dev/fake0"
    assert t.spec is SPEC
    assert t.capabilities.address == "/dev/fake0"
    # cached after the first load
    assert registry._registered["fake"] is module.FakeTarget
    assert targets.get("fake") is module.FakeTarget


def test_entry_point_absent_without_distribution() -> None:
    assert "fake" not in targets.available()
    with pytest.raises(TargetError, match="unknown target 'fake'"):
        targets.get("fake")


@pytest.mark.parametrize(("name", "shown"), [("fake_int", "42"), ("fake_cls", "NotATargetClass")])
def test_entry_point_to_non_target_raises(fake_distribution: Path, name: str, shown: str) -> None:
    with pytest.raises(TargetError, match=rf"entry point '{name}' in group 'hwtoolkit\.targets' is not a Target "
                                          rf"subclass: .*{shown}"):
        targets.open(name, SPEC)
    assert name not in registry._registered


# --------------------------------------------------------------------------- base interface


def test_target_is_abstract() -> None:
    with pytest.raises(TypeError):
        Target(SPEC)  # type: ignore[abstract]

    class Incomplete(Target):
        def _program(self, weights):  # noqa: ANN001, ANN202
            pass

    with pytest.raises(TypeError):
        Incomplete(SPEC)  # type: ignore[abstract]


def test_context_manager_closes() -> None:
    t = DummyTarget(SPEC)
    with t as entered:
        assert entered is t
        assert t.closed == 0
    assert t.closed == 1
    with pytest.raises(ValueError, match="inside"):
        with DummyTarget(SPEC) as t2:
            raise ValueError("inside")
    assert t2.closed == 1


def test_capabilities_defaults_and_frozen() -> None:
    caps = Capabilities(name="x", device="cpu", dtype="float32", exact=True)
    assert (caps.conv, caps.untied, caps.max_steps, caps.notes) == (True, True, None, "")
    with pytest.raises(dataclasses.FrozenInstanceError):
        caps.device = "cuda"  # type: ignore[misc]


def test_update_report_defaults_are_independent() -> None:
    a, b = UpdateReport(), UpdateReport()
    assert a.saturated == 0 and a.details == {}
    a.details["x"] = 1
    assert b.details == {}


def test_target_error_is_runtime_error() -> None:
    assert issubclass(TargetError, RuntimeError)

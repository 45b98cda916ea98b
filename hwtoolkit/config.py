"""Experiment configuration: one TOML file, loaded into typed dataclasses with validation.

Every field is checked against its annotated type and range; an error names the
field, the value and what would be valid. ``--set key=value`` overrides any
field by its dotted path before validation, so overrides are checked too.
"""

from __future__ import annotations

import copy
import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

import targets
from quantize.config import QuantConfig, QuantConfigError

from . import schema
from .network.spec import NetworkSpec, SpecError

from .training.optimizer import SCHEDULES as _SCHEDULE_FACTORS

# Upper bounds on numbers that size memory or time (README, "Configuration"): past them a run would hang or
# train to chance rather than do anything useful.
MAX_STEPS = 100_000  # steps of one phase
MAX_EPOCHS = 100_000
MAX_BATCH = 65_536  # samples of a batch
MAX_SAMPLES = 100_000_000  # images taken from a data set, batches between checkpoints
MAX_BETA = 10.0  # the nudging strength; the papers use 0.01 to 1
MAX_LR = 10.0  # a learning rate; the papers use 0.001 to 0.5
MAX_SEED = 2**63 - 1

ESTIMATORS = ("symmetric", "one_sided", "random_sign", "bptt")  # the source: training.estimators follows it
SCHEDULES = tuple(_SCHEDULE_FACTORS)


class ConfigError(ValueError):
    """A configuration file or override is invalid."""


@dataclass
class DataConfig:
    """Which data set, where to find it, and how to split it."""

    dataset: str = "fashion-mnist"
    root: str = ""  # explicit directory to search first ("" = the standard search path)
    download: bool = True
    val_size: int = 5000  # taken from the training set for model selection
    augment: bool = False  # CIFAR-10 crop + flip of the 2021 paper
    limit: int = 0  # keep only the first N train/test samples (0 = all), for quick runs
    downsample: int = 1  # average k x k pixel blocks (28x28 -> 14x14 with 2), for boards with little memory

    def validate(self) -> None:
        _number("data.val_size", self.val_size, 0, MAX_SAMPLES, integer=True)
        _number("data.limit", self.limit, 0, MAX_SAMPLES, integer=True)  # 0 = all
        _number("data.downsample", self.downsample, 1, 64, integer=True)  # 1 = full size


@dataclass
class EPConfig:
    """Phase lengths and nudging (docs/ep.md#phases-and-estimators)."""

    beta: float = 0.5
    free_steps: int = 30
    nudged_steps: int = 10
    tolerance: float = 1e-4  # a free phase has converged when its last step moved no unit by more
    stop_tolerance: float = 0.0  # end a phase early once no unit moves by more (0 = always run every step)

    def validate(self) -> None:
        _number("ep.beta", self.beta, 0, MAX_BETA, low_open=True)
        _number("ep.free_steps", self.free_steps, 1, MAX_STEPS, integer=True)
        _number("ep.nudged_steps", self.nudged_steps, 1, MAX_STEPS, integer=True)
        _number("ep.tolerance", self.tolerance, 0, 1, low_open=True)
        _number("ep.stop_tolerance", self.stop_tolerance, 0, 1)  # 0 = off


@dataclass
class OptimConfig:
    """SGD with momentum, per-layer learning rates (input side first, readout last), weight decay."""

    lr: tuple[float, ...] = (0.05,)  # one value for all layers, or one per weight layer
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    final_lr_factor: float = 0.0  # the cosine schedule ends at lr * final_lr_factor

    def validate(self) -> None:
        _check(len(self.lr) >= 1, "optim.lr", list(self.lr), "positive learning rates")
        for i, lr in enumerate(self.lr):
            _number(f"optim.lr[{i}]", lr, 0, MAX_LR, low_open=True)
        _check(0 <= self.momentum < 1, "optim.momentum", self.momentum, "a number in [0, 1)")
        _number("optim.weight_decay", self.weight_decay, 0, 1)
        _check(self.schedule in SCHEDULES, "optim.schedule", self.schedule, f"one of {SCHEDULES}")
        _check(0 <= self.final_lr_factor <= 1, "optim.final_lr_factor", self.final_lr_factor, "a number in [0, 1]")


@dataclass
class TrainConfig:
    """Epochs, batches and checkpointing."""

    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 1000
    checkpoint_every: int = 100  # batches between mid-epoch checkpoints (0 = only at epoch ends)

    def validate(self) -> None:
        _number("train.epochs", self.epochs, 1, MAX_EPOCHS, integer=True)
        _number("train.batch_size", self.batch_size, 1, MAX_BATCH, integer=True)
        _number("train.eval_batch_size", self.eval_batch_size, 1, MAX_BATCH, integer=True)
        _number("train.checkpoint_every", self.checkpoint_every, 0, MAX_SAMPLES, integer=True)


@dataclass
class TargetConfig:
    """The device: ``name`` picks it from the registry, which validates the other keys as the target's options.

    ``tables`` are the top-level tables the target reads besides ``[target]`` (``[crossbar]``, say); they are
    kept as written, so that the stored config round-trips.
    """

    name: str = targets.DEFAULT
    options: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)

    def validate(self) -> None:
        _check(bool(self.name), "target.name", self.name, "a target name (see `hwtoolkit targets`)")

    def configure(self, context: targets.RunContext) -> Any:
        """The target's typed options (its own dataclass), checked by the target through the registry."""
        for table in self.tables:
            owners = targets.table_owners(table)
            if not owners:
                valid = [f.name for f in dataclasses.fields(Config)]
                raise ConfigError(f"unknown key(s) [{table!r}] in the top level; valid keys: {valid}")
            if self.name not in owners:
                raise ConfigError(f"a [{table}] table is given but target.name = {self.name!r}; set target.name = "
                                  f"\"{owners[0]}\" to use it, or remove the table")
        try:
            return targets.configure(self.name, self.options, self.tables, context)
        except targets.TargetError as e:
            raise ConfigError(str(e)) from None


@dataclass
class Config:
    """One experiment."""

    name: str = "experiment"
    seed: int = 0
    estimator: str = "symmetric"
    network: NetworkSpec = field(default_factory=NetworkSpec)
    data: DataConfig = field(default_factory=DataConfig)
    ep: EPConfig = field(default_factory=EPConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    target: TargetConfig = field(default_factory=TargetConfig)
    quant: QuantConfig = field(default_factory=QuantConfig)  # a quantized network, on targets that run one

    def validate(self) -> None:
        _number("seed", self.seed, 0, MAX_SEED, integer=True)
        _check(self.estimator in ESTIMATORS, "estimator", self.estimator, f"one of {ESTIMATORS}")
        _check(bool(self.name) and "/" not in self.name and "\\" not in self.name and self.name not in (".", ".."),
               "name", self.name, "a name without path separators (it names the default run directory)")
        for part in (self.data, self.ep, self.optim, self.train, self.target):
            part.validate()
        if self.quant.enabled:
            _check(self.estimator != "bptt", "estimator", self.estimator,
                   "an EP estimator with a [quant] table (rounding has no gradient for BPTT)")
        options = self.target.configure(self.run_context())
        if targets.get(self.target.name).writes_trains(options):
            what = f"target {self.target.name!r} writing each update as two pulse trains"
            _check(self.estimator != "bptt", "estimator", self.estimator,
                   f"an EP estimator with the {what} (the trains are the two EP phases)")
            _check(self.optim.momentum == 0 and self.optim.weight_decay == 0, "optim.momentum", self.optim.momentum,
                   f"optim.momentum = 0 and optim.weight_decay = 0 with the {what} (each train is one phase's "
                   f"term times the learning rate)")
        layers = self.network.num_weight_layers
        _check(len(self.optim.lr) in (1, layers), "optim.lr", list(self.optim.lr),
               f"1 value or {layers} (one per weight layer of {self.network.describe()})")

    def run_context(self) -> targets.RunContext:
        """What the run hands its target: the seed and, with a ``[quant]`` table, the quantized network's config."""
        return targets.RunContext(seed=self.seed, quant=self.quant if self.quant.enabled else None)

    def layer_lrs(self) -> list[float]:
        """The learning rate of every weight layer, input side first."""
        lr = list(self.optim.lr)
        return lr * self.network.num_weight_layers if len(lr) == 1 else lr

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["network"]["conv"] = [dataclasses.asdict(c) for c in self.network.conv]
        target = d.pop("target")
        d["target"] = {"name": target["name"], **target["options"]}
        d.update(target["tables"])
        if not self.quant.enabled:
            del d["quant"]
        return d

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


def _number(name: str, value: object, low: float, high: float, *, integer: bool = False,
            low_open: bool = False) -> None:
    try:
        schema.check_number(name, value, low, high, integer=integer, low_open=low_open)
    except schema.SchemaError as e:
        raise ConfigError(str(e)) from None


def _check(ok: bool, name: str, value: object, valid: str) -> None:
    try:
        schema.check(ok, name, value, valid)
    except schema.SchemaError as e:
        raise ConfigError(str(e)) from None


def _build(cls: type, table: dict[str, Any], prefix: str) -> Any:
    """Instantiate dataclass ``cls`` from a TOML table, rejecting unknown keys and wrong types."""
    try:
        return schema.build(cls, table, prefix)
    except (schema.SchemaError, SpecError, QuantConfigError) as e:
        raise ConfigError(str(e)) from None


def from_dict(raw: dict[str, Any]) -> Config:
    """Build and validate a ``Config`` from a parsed TOML document."""
    raw = dict(raw)
    if not isinstance(raw.get("network"), dict):
        raise ConfigError("the config has no [network] table; see configs/fmnist_mlp.toml for an example")
    target = raw.pop("target", {})
    if not isinstance(target, dict):
        raise ConfigError(f"target = {target!r} is invalid: expected a table")
    own = {f.name for f in dataclasses.fields(Config)}
    tables = {k: raw.pop(k) for k in [k for k, v in raw.items() if k not in own and isinstance(v, dict)]}
    cfg = _build(Config, raw, "")
    options = dict(target)
    name = options.pop("name", targets.DEFAULT)
    _check(isinstance(name, str), "target.name", name, "a string")
    cfg.target = TargetConfig(name=name, options=options, tables=tables)
    cfg.validate()
    return cfg


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b=value"`` -> (["a", "b"], value); the value is read as TOML, or taken as a bare string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r} is invalid: expected key=value, e.g. --set ep.beta=0.2")
    try:
        parsed = tomllib.loads(f"v = {value.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()
    return key.strip().split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each ``key=value`` in a copy of the raw TOML document."""
    raw = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: {part!r} is a value, not a table")
            node = child
        node[path[-1]] = value
    return raw


def read_raw(path: str | Path) -> dict[str, Any]:
    """The experiment file as a raw TOML document (before overrides and validation)."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {e}") from None


def load(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read a TOML experiment file, apply ``--set`` overrides, and validate."""
    return from_dict(apply_overrides(read_raw(path), overrides or []))


def loads(text: str, overrides: list[str] | None = None) -> Config:
    """Like ``load`` for TOML text (used for the config stored in a run directory)."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config text is not valid TOML: {e}") from None
    return from_dict(apply_overrides(raw, overrides or []))

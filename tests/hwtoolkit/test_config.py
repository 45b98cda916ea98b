"""Tests for hwtoolkit.config: loading, --set overrides, type and range validation, round trips."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from hwtoolkit import config
from hwtoolkit.config import Config, ConfigError

REPO = Path(__file__).resolve().parents[2]
# Globbed at collection time, so config files added later are picked up automatically.
CONFIG_FILES = sorted((REPO / "configs").glob("*.toml"))

# A small, valid config: 4x4 greyscale input, one hidden layer, CE readout -> 2 weight layers.
BASE = """
name = "base"
seed = 3
estimator = "symmetric"

[network]
input_shape = [1, 4, 4]
hidden = [8]
classes = 3

[ep]
beta = 0.5

[optim]
lr = [0.05]
momentum = 0.9

[train]
epochs = 2
"""

# The same shape of network with a conv layer in front: conv + dense + readout = 3 weight layers.
CONV = """
[network]
input_shape = [1, 6, 6]
hidden = [8]
classes = 3

[[network.conv]]
channels = 2
kernel = 3
padding = 1
"""


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b.c": leaf}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def changed_fields(a: Config, b: Config) -> dict[str, tuple[Any, Any]]:
    fa, fb = flatten(a.to_dict()), flatten(b.to_dict())
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}


# --------------------------------------------------------------------------- shipped config files


@pytest.mark.parametrize("path", CONFIG_FILES, ids=[p.name for p in CONFIG_FILES])
def test_shipped_config_loads_validates_and_round_trips(path: Path) -> None:
    cfg = config.load(path)
    assert isinstance(cfg, Config)
    cfg.validate()  # idempotent: a loaded config is already valid
    lrs = cfg.layer_lrs()
    assert len(lrs) == cfg.network.num_weight_layers
    assert all(lr > 0 for lr in lrs)
    again = config.loads(cfg.to_toml())
    assert again.to_dict() == cfg.to_dict()


def test_there_is_at_least_one_shipped_config() -> None:
    assert CONFIG_FILES, f"no configs/*.toml found under {REPO}"


# --------------------------------------------------------------------------- basic loading


def test_loads_reads_values_and_defaults() -> None:
    cfg = config.loads(BASE)
    assert cfg.name == "base"
    assert cfg.seed == 3
    assert cfg.network.input_shape == (1, 4, 4)
    assert cfg.network.hidden == (8,)
    assert cfg.network.classes == 3
    assert cfg.optim.lr == (0.05,)
    assert cfg.train.epochs == 2
    # untouched fields take the dataclass defaults
    assert cfg.ep.free_steps == config.EPConfig().free_steps
    assert cfg.train.batch_size == config.TrainConfig().batch_size
    assert cfg.target.name == "reference"
    assert cfg.target.options == {}


def test_load_from_file_equals_loads(tmp_path: Path) -> None:
    p = tmp_path / "exp.toml"
    p.write_text(BASE)
    assert config.load(p).to_dict() == config.loads(BASE).to_dict()
    assert config.load(str(p)).to_dict() == config.loads(BASE).to_dict()


def test_conv_table_builds_conv_layers() -> None:
    cfg = config.loads(CONV)
    (conv,) = cfg.network.conv
    assert (conv.channels, conv.kernel, conv.padding) == (2, 3, 1)
    assert cfg.network.num_weight_layers == 3


def test_load_missing_file_names_path(tmp_path: Path) -> None:
    p = tmp_path / "does-not-exist.toml"
    with pytest.raises(ConfigError, match=re.escape(str(p))):
        config.load(p)


def test_load_invalid_toml_names_path(tmp_path: Path) -> None:
    p = tmp_path / "broken.toml"
    p.write_text("name = \n[network\n")
    with pytest.raises(ConfigError, match=re.escape(str(p)) + ".*not valid TOML"):
        config.load(p)


@pytest.mark.parametrize("text", ["name = 'x'\n", "network = 3\n", "[data]\nlimit = 1\n"])
def test_missing_network_table_raises(text: str) -> None:
    with pytest.raises(ConfigError, match=r"\[network\]"):
        config.loads(text)


# --------------------------------------------------------------------------- --set overrides


@pytest.mark.parametrize(
    ("override", "field", "expected"),
    [
        ("ep.beta=0.2", "ep.beta", 0.2),
        ("estimator=bptt", "estimator", "bptt"),
        ("train.epochs=3", "train.epochs", 3),
        ("optim.lr=[0.1,0.2]", "optim.lr", (0.1, 0.2)),
        ("optim.lr = 0.25", "optim.lr", (0.25,)),  # a scalar lr becomes a one-element tuple; spaces are fine
        ("name=my-run", "name", "my-run"),  # bare (not TOML) string
        ("data.dataset=cifar10", "data.dataset", "cifar10"),  # bare string in a table
        ('name="quoted run"', "name", "quoted run"),  # TOML string
        ("data.download=false", "data.download", False),
        ("network.hidden=[16]", "network.hidden", (16,)),
        ("seed=42", "seed", 42),
    ],
)
def test_override_changes_exactly_that_field(override: str, field: str, expected: Any) -> None:
    base = config.loads(BASE)
    cfg = config.loads(BASE, [override])
    section, _, attr = field.rpartition(".")
    obj = getattr(cfg, section) if section else cfg
    value = getattr(obj, attr)
    assert value == expected
    assert type(value) is type(expected)
    if isinstance(expected, tuple):
        assert all(type(v) is type(e) for v, e in zip(value, expected))
    assert list(changed_fields(base, cfg)) == [field]


def test_override_target_option_passes_through() -> None:
    cfg = config.loads(BASE, ["target.device=cuda", "target.dtype=float64"])
    assert cfg.target.name == "reference"
    assert cfg.target.options == {"device": "cuda", "dtype": "float64"}


def test_multiple_overrides_apply_in_order() -> None:
    cfg = config.loads(BASE, ["ep.beta=0.2", "train.epochs=7", "ep.beta=0.3"])
    assert cfg.ep.beta == 0.3
    assert cfg.train.epochs == 7


def test_override_can_create_a_missing_table() -> None:
    text = "[network]\nhidden = [8]\n"
    cfg = config.loads(text, ["ep.nudged_steps=4"])
    assert cfg.ep.nudged_steps == 4


def test_overrides_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"ep\.beta = -1"):
        config.loads(BASE, ["ep.beta=-1"])
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['betta'\] in \[ep\]"):
        config.loads(BASE, ["ep.betta=0.1"])


def test_apply_overrides_does_not_mutate_input() -> None:
    raw = {"ep": {"beta": 0.5}, "network": {"hidden": [8]}}
    out = config.apply_overrides(raw, ["ep.beta=0.1", "train.epochs=2"])
    assert raw == {"ep": {"beta": 0.5}, "network": {"hidden": [8]}}
    assert out["ep"]["beta"] == 0.1
    assert out["train"] == {"epochs": 2}


@pytest.mark.parametrize("text", ["ep.beta", "=0.2", "  =x"])
def test_malformed_override_raises_naming_it(text: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(repr(text)) + ".*key=value"):
        config.loads(BASE, [text])


def test_override_through_a_value_raises() -> None:
    with pytest.raises(ConfigError, match=r"'beta' is a value, not a table"):
        config.loads(BASE, ["ep.beta.x=1"])


def test_parse_override_types() -> None:
    assert config.parse_override("a.b=0.2") == (["a", "b"], 0.2)
    assert config.parse_override("a=3") == (["a"], 3)
    assert config.parse_override("a=true") == (["a"], True)
    assert config.parse_override("a=[1, 2]") == (["a"], [1, 2])
    assert config.parse_override("a=hello world") == (["a"], "hello world")
    assert config.parse_override(" a.b = x=y ") == (["a", "b"], "x=y")


# --------------------------------------------------------------------------- unknown keys


def test_unknown_top_level_key_lists_valid_keys() -> None:
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['bogus'\] in the top level; valid keys: .*'estimator'"):
        config.loads("bogus = 1\n" + BASE)


def test_unknown_key_in_table_lists_valid_keys() -> None:
    text = BASE.replace("[ep]\n", "[ep]\nbetta = 0.3\n")
    with pytest.raises(ConfigError, match=r"\['betta'\] in \[ep\]; valid keys: \[.*'beta'.*'free_steps'"):
        config.loads(text)


def test_unknown_key_in_network_table() -> None:
    with pytest.raises(ConfigError, match=r"\['hiden'\] in \[network\].*'hidden'"):
        config.loads(BASE, ["network.hiden=[3]"])


def test_unknown_key_in_conv_layer_names_index() -> None:
    text = CONV + "foo = 1\n"
    with pytest.raises(ConfigError, match=r"\['foo'\] in \[network\.conv\[0\]\].*'channels'"):
        config.loads(text)


# --------------------------------------------------------------------------- wrong types


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ('train.epochs="3"', r"train\.epochs = '3' is invalid: expected an integer"),  # string for an int
        ("train.epochs=3.0", r"train\.epochs = 3\.0 is invalid: expected an integer"),  # float for an int
        ("seed=true", r"seed = True is invalid: expected an integer"),  # bool for an int
        ("ep.beta=true", r"ep\.beta = True is invalid: expected a finite number"),  # bool for a float
        ('ep.beta="0.2"', r"ep\.beta = '0\.2' is invalid: expected a finite number"),
        ("data.download=1", r"data\.download = 1 is invalid: expected true or false"),
        ("name=5", r"name = 5 is invalid: expected a string"),
        ("network.hidden=[8.5]", r"network\.hidden\[0\] = 8\.5 is invalid: expected an integer"),
        ("optim.lr=[0.1, true]", r"optim\.lr\[1\] = True is invalid: expected a finite number"),
        ("optim.lr=fast", r"optim\.lr = 'fast' is invalid: expected a list"),
        ("ep=3", r"ep = 3 is invalid: expected a table"),
        ("target=3", r"target = 3 is invalid: expected a table"),
        ("target.name=3", r"target\.name = 3 is invalid: expected a string"),
    ],
)
def test_wrong_type_names_the_field(override: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        config.loads(BASE, [override])


# --------------------------------------------------------------------------- out-of-range values


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        (["ep.beta=-0.1"], r"ep\.beta = -0\.1 is invalid: expected a finite number in \(0, 10\]"),
        (["ep.beta=1e30"], r"ep\.beta = 1e\+30 is invalid: expected a finite number in \(0, 10\]"),
        (["ep.free_steps=1000000000000"], r"ep\.free_steps = 1000000000000 is invalid: expected an integer in \[1, 100000\]"),
        (["optim.lr=1e30"], r"optim\.lr\[0\] = 1e\+30 is invalid"),
        (["optim.lr=[0.1, nan]"], r"optim\.lr\[1\] = nan is invalid: expected a finite number"),
        (["ep.beta=inf"], r"ep\.beta = inf is invalid: expected a finite number"),
        (["train.batch_size=100000000"], r"train\.batch_size = 100000000 is invalid"),
        (["seed=-1"], r"seed = -1 is invalid: expected an integer in \[0, "),
        (["name='../../x'"], r"name = '\.\./\.\./x' is invalid: expected a name without path separators"),
        (["name='/abs/x'"], r"name = '/abs/x' is invalid"),
        (["ep.beta=0"], r"ep\.beta = 0\.0"),
        (["ep.free_steps=0"], r"ep\.free_steps = 0"),
        (["ep.tolerance=0"], r"ep\.tolerance"),
        (["optim.momentum=1.0"], r"optim\.momentum = 1\.0 is invalid: expected a number in \[0, 1\)"),
        (["optim.momentum=-0.1"], r"optim\.momentum = -0\.1"),
        (["optim.weight_decay=-1"], r"optim\.weight_decay"),
        (["optim.final_lr_factor=1.5"], r"optim\.final_lr_factor = 1\.5"),
        (["optim.lr=[0.0]"], r"optim\.lr\[0\] = 0\.0"),
        (["optim.lr=[]"], r"optim\.lr = \[\]"),
        (["estimator=magic"], r"estimator = 'magic' is invalid: expected one of \('symmetric'"),
        (["optim.schedule=linear"], r"optim\.schedule = 'linear' is invalid: expected one of \('cosine'"),
        (["network.activation=relu"], r"network\.activation = 'relu'.*hard_sigmoid"),
        (["network.output=hinge"], r"network\.output = 'hinge'.*'ce'"),
        (["network.dynamics=fast"], r"network\.dynamics = 'fast'"),
        (["network.eps=0.5"], r"network\.eps = 0\.5 .*prototypical"),
        (["network.classes=1"], r"network\.classes = 1"),
        (["train.epochs=0"], r"train\.epochs = 0"),
        (["train.batch_size=0"], r"train\.batch_size = 0"),
        (["data.val_size=-1"], r"data\.val_size = -1"),
        (["target.name=''"], r"target\.name = ''"),
    ],
)
def test_out_of_range_names_the_field(overrides: list[str], pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        config.loads(BASE, overrides)


def test_eps_below_one_is_fine_with_leaky_dynamics() -> None:
    cfg = config.loads(BASE, ["network.dynamics=leaky", "network.eps=0.5"])
    assert cfg.network.eps == 0.5
    assert cfg.network.dynamics == "leaky"


def test_momentum_just_below_one_is_valid() -> None:
    assert config.loads(BASE, ["optim.momentum=0.999"]).optim.momentum == 0.999


# --------------------------------------------------------------------------- per-layer learning rates


def test_lr_length_must_match_weight_layers() -> None:
    # BASE has 2 weight layers (hidden + readout)
    assert config.loads(BASE, ["optim.lr=[0.1, 0.2]"]).optim.lr == (0.1, 0.2)
    with pytest.raises(ConfigError, match=r"optim\.lr = \[0\.1, 0\.2, 0\.3\] is invalid: expected 1 value or 2"):
        config.loads(BASE, ["optim.lr=[0.1, 0.2, 0.3]"])


def test_lr_length_counts_conv_layers() -> None:
    assert config.loads(CONV, ["optim.lr=[0.1, 0.2, 0.3]"]).layer_lrs() == [0.1, 0.2, 0.3]
    with pytest.raises(ConfigError, match=r"optim\.lr.*expected 1 value or 3"):
        config.loads(CONV, ["optim.lr=[0.1, 0.2]"])


def test_lr_length_mse_output_has_no_readout() -> None:
    # MSE: the output layer is a state layer, there is no readout -> hidden + output = 2 layers
    cfg = config.loads(BASE, ["network.output=mse", "optim.lr=[0.1, 0.2]"])
    assert cfg.network.num_weight_layers == 2
    with pytest.raises(ConfigError, match=r"expected 1 value or 1"):
        config.loads("[network]\ninput_shape = [1, 4, 4]\nclasses = 3\noutput = 'mse'\n", ["optim.lr=[0.1, 0.2]"])


def test_layer_lrs_broadcasts_a_single_value() -> None:
    cfg = config.loads(CONV, ["optim.lr=[0.07]"])
    assert cfg.layer_lrs() == [0.07, 0.07, 0.07]
    cfg = config.loads(BASE, ["optim.lr=[0.1, 0.2]"])
    assert cfg.layer_lrs() == [0.1, 0.2]
    # layer_lrs returns a fresh list, not a view of the config
    cfg.layer_lrs().append(9.0)
    assert cfg.layer_lrs() == [0.1, 0.2]


# --------------------------------------------------------------------------- target options


def test_target_options_are_kept_as_written() -> None:
    text = BASE + '\n[target]\nname = "reference"\ndevice = "cpu"\ndtype = "float64"\nsolver = "anderson"\n'
    cfg = config.loads(text)
    assert cfg.target.name == "reference"
    assert cfg.target.options == {"device": "cpu", "dtype": "float64", "solver": "anderson"}
    assert "name" not in cfg.target.options
    # to_dict flattens the options back next to the name
    assert cfg.to_dict()["target"] == {"name": "reference", "device": "cpu", "dtype": "float64", "solver": "anderson"}


def test_target_options_are_validated_by_the_target() -> None:
    """The registry validates [target] keys with the target's own options dataclass, at load time."""
    with pytest.raises(config.ConfigError, match=r"unknown key\(s\) \['gain'\] in \[target\]; valid keys: .*solver"):
        config.loads(BASE, ["target.gain=2"])
    with pytest.raises(config.ConfigError, match=r"target.anderson_memory = 'x' is invalid: expected an integer"):
        config.loads(BASE, ["target.anderson_memory='x'"])
    with pytest.raises(config.ConfigError, match=r"target.solver = 'newton' is invalid"):
        config.loads(BASE, ["target.solver=newton"])
    with pytest.raises(config.ConfigError, match=r"target.quant is set by the \[quant\] table"):
        config.loads(BASE, ["target.quant={weight_bits=8}", "quant.weight_bits=8"])


def test_target_name_defaults_to_reference() -> None:
    cfg = config.loads(BASE + '\n[target]\ndevice = "cpu"\n')
    assert cfg.target.name == "reference"
    assert cfg.target.options == {"device": "cpu"}


def test_unknown_target_name_lists_the_available_ones() -> None:
    with pytest.raises(config.ConfigError, match=r"unknown target 'mychip'; available: .*crossbar.*reference.*serial"):
        config.loads(BASE, ["target.name=mychip", "target.port=/dev/ttyUSB0"])


# --------------------------------------------------------------------------- round trip


def test_to_toml_round_trips_non_default_config() -> None:
    overrides = [
        "name=round-trip", "seed=11", "estimator=random_sign",
        "network.hidden=[8, 5]", "network.activation=sigmoid_2019", "network.dynamics=leaky", "network.eps=0.25",
        "network.tied=false", "network.input_mean=[0.5]", "network.input_std=[0.25]",
        "data.dataset=cifar10", "data.root=/data", "data.download=false", "data.augment=true", "data.limit=100",
        "ep.beta=0.125", "ep.free_steps=7", "ep.nudged_steps=3", "ep.tolerance=1e-6",
        "optim.lr=[0.3, 0.2, 0.1, 0.05]", "optim.momentum=0.5", "optim.weight_decay=1e-4",
        "optim.schedule=constant", "optim.final_lr_factor=0.1",
        "train.epochs=4", "train.batch_size=16", "train.eval_batch_size=64", "train.checkpoint_every=0",
        "target.dtype=float64", "target.device=cpu",
    ]
    cfg = config.loads(CONV, overrides)
    text = cfg.to_toml()
    again = config.loads(text)
    assert again.to_dict() == cfg.to_dict()
    assert again == cfg
    # and a second trip is textually stable
    assert again.to_toml() == text


def test_to_dict_is_plain_data() -> None:
    d = config.loads(CONV).to_dict()
    assert d["network"]["conv"] == [
        {"channels": 2, "kernel": 3, "stride": 1, "padding": 1, "pool": "max", "pool_size": 2}
    ]
    assert d["target"] == {"name": "reference"}
    assert set(d) == {"name", "seed", "estimator", "network", "data", "ep", "optim", "train", "target"}


def test_loads_and_load_wrap_every_reading_error(tmp_path):
    with pytest.raises(ConfigError, match="not valid TOML"):
        config.loads("a = [")
    with pytest.raises(ConfigError, match="cannot be read"):
        config.load(tmp_path)
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b"name = '\xe9'\n")
    with pytest.raises(ConfigError, match="latin1.toml"):
        config.load(bad)


@pytest.mark.parametrize("override", ["ep.beta=inf", "optim.lr=[nan]", "ep.tolerance=inf", "optim.momentum=nan"])
def test_non_finite_numbers_are_rejected(override):
    base = (REPO / "configs" / "fmnist_mlp.toml").read_text()
    with pytest.raises(ConfigError, match="finite"):
        config.loads(base, [override])


def test_the_run_seed_reaches_a_target_that_takes_one_unless_set() -> None:
    """A target whose options declare ``seed`` gets the run's seed; the [crossbar] table (or [target]) may set it."""
    import targets

    def options(overrides):
        cfg = config.loads(BASE, ["seed=11", "target.name=crossbar", *overrides])
        return targets.configure(cfg.target.name, cfg.target.options, cfg.target.tables, cfg.run_context())

    assert options([]).seed == 11
    assert options(["crossbar.seed=7"]).seed == 7
    assert options(["target.seed=5"]).seed == 5
    assert options(["crossbar.preset=pcm"]).config.preset == "pcm"

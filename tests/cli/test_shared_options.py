"""Every command spells and defaults the shared options the same way (cli/options.py)."""
import argparse

import pytest

import spikelm
from spikelm.cli import COMMANDS, main
from spikelm.cli.options import SHARED_DEFAULTS
from spikelm.cli.parser import build_parser
from spikelm.errors import ConfigError


def _flag(dest):
    return "--" + dest.rstrip("_").replace("_", "-")


def _actions(name):
    parser, _ = build_parser(name, COMMANDS[name])
    return {a.dest: a for a in parser._actions if a.dest != "help"}


def _shared(name):
    return {d: a for d, a in _actions(name).items() if d in SHARED_DEFAULTS}


# Commands that load a user's checkpoint. info only reads files; data, train and init load none;
# demo trains its own models start to finish as train does (device "auto", like train's config);
# finetune is a training run too (its device, data and calibration text are config keys, as train's);
# kernels builds and shows spikelm's compiled CPU kernels.
LOADS_MODEL = sorted(set(COMMANDS) - {"info", "data", "train", "finetune", "init", "demo", "kernels"})
NEEDS = {
    "device": LOADS_MODEL,
    "dtype": LOADS_MODEL,
    "data": ["eval", "sweep", "energy"],
    "split": ["eval", "sweep", "energy"],
    "whole_file": ["eval", "sweep", "energy"],
    "calib_data": ["convert", "sweep", "energy", "nlu", "generate"],
    "progress": ["data", "train", "finetune", "eval", "sweep", "energy", "nlu", "convert", "demo"],
    "json_": ["info", "eval", "sweep", "energy", "nlu", "generate", "convert", "kernels"],
    "binary_embedding": LOADS_MODEL,
    "family": LOADS_MODEL,
    "weight_bits": ["convert", "eval", "energy", "sweep", "nlu", "demo"],
}


def test_commands_are_the_expected_set():
    assert set(COMMANDS) == {"info", "init", "data", "train", "finetune", "eval", "generate", "convert",
                             "sweep", "energy", "nlu", "demo", "kernels"}
    assert set(NEEDS) == set(SHARED_DEFAULTS)
    assert LOADS_MODEL == ["convert", "energy", "eval", "generate", "nlu", "sweep"]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_shared_options_have_the_shared_spelling_and_default(name):
    for dest, action in _shared(name).items():
        assert action.default == SHARED_DEFAULTS[dest], (name, dest, action.default)
        assert _flag(dest) in action.option_strings, (name, dest, action.option_strings)
        if isinstance(SHARED_DEFAULTS[dest], bool):
            assert isinstance(action, argparse.BooleanOptionalAction), (name, dest)
            assert "--no-" + _flag(dest)[2:] in action.option_strings, (name, dest)


@pytest.mark.parametrize("dest", sorted(NEEDS))
def test_commands_that_need_a_shared_option_have_it(dest):
    missing = [name for name in NEEDS[dest] if dest not in _actions(name)]
    assert not missing, f"{_flag(dest)} missing on: {missing}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_mentions_every_shared_flag(name, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code in (0, None)
    out = capsys.readouterr().out
    assert f"spikelm {name}" in out
    for dest, action in _shared(name).items():
        for flag in action.option_strings:
            assert flag in out, (name, flag)


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code in (0, None)
    assert capsys.readouterr().out.strip() == f"spikelm {spikelm.__version__}"


@pytest.mark.parametrize("name", LOADS_MODEL)
def test_loading_options_take_only_their_words(name):
    acts = _actions(name)
    assert tuple(acts["binary_embedding"].choices) == ("auto", "on", "off")
    assert tuple(acts["family"].choices) == ("auto", "spikegpt", "rwkv4")
    parser, _ = build_parser(name, COMMANDS[name])
    with pytest.raises(ConfigError, match="binary-embedding"):
        parser.parse_args(["ckpt", "--binary-embedding", "maybe"])

"""Typed run configurations: the dataclass is the only source of defaults, argparse fills it in,
and validation changes nothing."""
import argparse
import copy
import dataclasses
from pathlib import Path

import pytest

from dualanodiff_core.generation import generate as generate_module
from dualanodiff_core.training import train_args
from dualanodiff_core.errors import DualAnoDiffError
from dualanodiff_core.generation.generate import GenerateConfig
from dualanodiff_core.options import as_dict, defaults_of, from_namespace
from dualanodiff_core.training.train_args import TrainConfig


def _parser(add_arguments):
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p


@pytest.mark.parametrize("config_type, add_arguments", [
    (TrainConfig, train_args.add_arguments),
    (GenerateConfig, generate_module.add_arguments),
], ids=["train", "generate"])
def test_every_flag_is_a_field_with_the_dataclass_default(config_type, add_arguments):
    p = _parser(add_arguments)
    dests = {a.dest for a in p._actions if a.dest != "help"}
    assert dests == {f.name for f in dataclasses.fields(config_type)}
    defaults = defaults_of(config_type)
    for action in p._actions:
        if action.dest in defaults:
            assert action.default == defaults[action.dest], action.dest
        elif action.dest != "help":
            assert action.required, f"{action.dest} has no default in {config_type.__name__} but is optional"


def test_command_line_and_direct_construction_give_the_same_config(tmp_path):
    (tmp_path / "i").mkdir()
    (tmp_path / "m").mkdir()
    argv = ["--images", str(tmp_path / "i"), "--masks", str(tmp_path / "m"), "--base-model", str(tmp_path),
            "--output-dir", str(tmp_path / "o"), "--rank", "8", "--no-saim", "--no-flip"]
    parsed = train_args.parse_args(argv)
    direct = train_args.resolve_defaults(TrainConfig(images=tmp_path / "i", masks=tmp_path / "m", base_model=tmp_path,
                                                     output_dir=tmp_path / "o", rank=8, no_saim=True, flip="none"))
    assert parsed == direct
    assert parsed.pairs_per_step == 4 and TrainConfig(base_model=tmp_path, output_dir=tmp_path).pairs_per_step is None
    assert as_dict(parsed)["base_model"] == str(tmp_path)


def test_validation_changes_nothing(tmp_path):
    config = TrainConfig(base_model=tmp_path, output_dir=tmp_path / "o", images=tmp_path, masks=tmp_path, bcm=True,
                         object_masks=tmp_path)
    before = copy.deepcopy(config)
    train_args.check_arguments(config)
    assert config == before and config.pairs_per_step is None
    bad = dataclasses.replace(config, lr=0.0)
    with pytest.raises(DualAnoDiffError, match="--lr must be above 0"):
        train_args.check_arguments(bad)
    gen = GenerateConfig(base_model=tmp_path, checkpoint=tmp_path / "c.safetensors", output_dir=tmp_path / "o",
                         object="a", defect="b")
    with pytest.raises(DualAnoDiffError, match="c.safetensors"):
        generate_module.check_arguments(gen)
    assert gen.guidance is None and gen.mask_threshold is None


def test_other_namespace_entries_are_left_out():
    ns = argparse.Namespace(**defaults_of(GenerateConfig), base_model=Path("b"), checkpoint=Path("c"),
                            output_dir=Path("o"), object="a", defect="b", command="generate", run=print)
    config = from_namespace(GenerateConfig, ns)
    assert config.object == "a" and not hasattr(config, "run")

"""Config merging and its errors: nothing starts training on a misspelled option."""

import pytest
from omegaconf import OmegaConf

from mope_lightning.training.trainer_config import load_config
from mope_lightning.errors import ConfigError

from helpers import DEFAULT_EXP, EXPERIMENTS, TINY


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_files_merge_left_to_right_then_overrides(tmp_path):
    a = write(tmp_path, "a.yaml", "model:\n  mope:\n    num_experts: 8\n    static_length: 3\n")
    b = write(tmp_path, "b.yaml", "model:\n  mope:\n    num_experts: 16\n")
    cfg = load_config([DEFAULT_EXP, a, b], ["model.mope.static_length=5"])
    assert cfg.model.mope.num_experts == 16  # b overrides a
    assert cfg.model.mope.static_length == 5  # the command line overrides both
    assert cfg.model.mope.dynamic_length == 6  # from easy_vqa.yaml
    assert cfg.model.mope.router.temperature == 0.1  # from the schema defaults
    assert cfg.data.val_fraction == 0.1  # the dataset's own schema (EasyVQAConfig)


def test_trainer_section_passes_through_and_resolves(tmp_path):
    cfg = load_config([DEFAULT_EXP, TINY], ["trainer.max_steps=2", "trainer.fast_dev_run=true"])
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert trainer["max_steps"] == 2 and trainer["fast_dev_run"] is True
    assert trainer["default_root_dir"] == "runs/easy_vqa"


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.mope.num_expert=3", "unknown key 'model.mope.num_expert' (did you mean 'model.mope.num_experts'?)"),
        ("data.batch_sise=8", "did you mean 'data.batch_size'?"),
        ("trainer.max_epoch=3", "unknown key 'trainer.max_epoch' (did you mean 'trainer.max_epochs'?)"),
        ("data.batch_size=abc", "data.batch_size: Value 'abc' of type 'str' could not be converted to Integer"),
        ("model.fusion=moep", "model.fusion: 'moep' is not one of mope, prompt_tuning"),
        ("data.name=easyvqa", "unknown dataset 'easyvqa' (did you mean 'easy_vqa'?)"),
        ("trainer.callbacks=[]", "trainer.callbacks: set by mope_lightning itself"),
        ("data.batch_size=0", "data.batch_size: must be at least 1"),
        ("max_epochs", "'max_epochs' is not a key=value override"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config([DEFAULT_EXP], [override])
    assert message in str(err.value)
    assert str(err.value).startswith("command line:")


def test_unknown_key_in_a_file_names_the_file(tmp_path):
    bad = write(tmp_path, "overlay.yaml", "model:\n  mope:\n    num_expertz: 3\n")
    with pytest.raises(
        ConfigError,
        match=r"overlay\.yaml: unknown key 'model\.mope\.num_expertz' "
        r"\(did you mean 'model\.mope\.num_experts'\?\)",
    ):
        load_config([DEFAULT_EXP, bad])


def test_yaml_that_does_not_parse_names_file_and_line(tmp_path):
    bad = write(tmp_path, "broken.yaml", "model:\n  fusion: mope\n  pool: [mean\n  head_hidden: 3\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml:4: YAML does not parse"):
        load_config([DEFAULT_EXP, bad])


def test_missing_file_and_missing_required_value(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config([tmp_path / "nope.yaml"])
    empty = write(tmp_path, "empty.yaml", "data:\n  name: easy_vqa\n")
    with pytest.raises(ConfigError, match="missing required value.*experiment"):
        load_config([empty])


@pytest.mark.parametrize("overlay", sorted((EXPERIMENTS / "overlays").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_overlay_loads_on_the_default_experiment(overlay):
    """Each shipped overlay is valid against the schema and its own checks (a renamed key fails here, not in a
    user's run), and every value it sets is in the resolved config."""
    cfg = load_config([DEFAULT_EXP, overlay])

    def leaves(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict) and value:
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    overlay_values = dict(leaves(OmegaConf.to_container(OmegaConf.load(overlay))))
    assert overlay_values
    for key, value in overlay_values.items():
        resolved = OmegaConf.select(cfg, key)
        resolved = OmegaConf.to_container(resolved) if OmegaConf.is_config(resolved) else resolved
        assert resolved == value, key

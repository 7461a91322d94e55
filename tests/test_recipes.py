"""The recipes' one layout: each recipe's config and training function live in `raptor_zoo.recipes.<name>`, and
`recipes/<name>.py` launches them (and re-exports them); every config inherits the shared data fields of
`raptor_zoo.data.DataArgs`, and finetune's old `data` name still works as an alias of `dataset`."""
import dataclasses
import importlib
import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from raptor_zoo.data import DataArgs
from raptor_zoo.training import parse_config

REPO = Path(__file__).resolve().parent.parent
# recipe -> (its config class, its training function)
RECIPES = {
    "distill": ("DistillConfig", "training_function"),
    "finetune": ("FinetuneConfig", "training_function"),
    "linear_probe": ("ProbeConfig", "linear_probe_function"),
    "train_teacher": ("TrainTeacherConfig", "training_function"),
}
FINETUNE_CONFIG = REPO / "recipes" / "configs" / "digits_finetune.yaml"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"recipe_script_{name}", REPO / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def config_class(name: str) -> type:
    return getattr(importlib.import_module(f"raptor_zoo.recipes.{name}"), RECIPES[name][0])


@pytest.mark.parametrize("name", RECIPES)
def test_each_script_launches_the_recipe_of_the_package(name):
    config_name, function_name = RECIPES[name]
    module = importlib.import_module(f"raptor_zoo.recipes.{name}")
    script = load_script(name)
    assert getattr(script, config_name) is getattr(module, config_name)
    assert getattr(script, function_name) is getattr(module, function_name)
    assert script.parse_config is parse_config and callable(script.main)


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_config_inherits_the_shared_data_fields_unchanged(name):
    config_cls = config_class(name)
    assert issubclass(config_cls, DataArgs)
    fields = {field.name: field for field in dataclasses.fields(config_cls)}
    for shared in dataclasses.fields(DataArgs):
        assert fields[shared.name] is shared, f"{config_cls.__name__} declares {shared.name!r} again"
    assert parse_config(config_cls, []).dataset == "digits"


def test_every_shipped_config_parses_with_its_recipe_under_the_new_field_names():
    for path in sorted((REPO / "recipes" / "configs").glob("*.yaml")):
        recipe = re.search(r"recipes/(\w+)\.py", path.read_text()).group(1)
        assert "data" not in yaml.safe_load(path.read_text()), path.name
        assert isinstance(parse_config(config_class(recipe), ["--config", str(path)]), DataArgs)


def test_finetunes_old_data_flag_and_yaml_key_still_name_the_dataset(tmp_path):
    finetune = config_class("finetune")
    shipped = parse_config(finetune, ["--config", str(FINETUNE_CONFIG)])
    old = tmp_path / "old_finetune.yaml"
    old.write_text(re.sub(r"^dataset:", "data:", FINETUNE_CONFIG.read_text(), flags=re.MULTILINE))
    assert "\ndata: digits\n" in old.read_text()
    assert parse_config(finetune, ["--config", str(old)]) == shipped
    assert parse_config(finetune, ["--data", "path/to/images"]) == parse_config(finetune, ["--dataset", "path/to/images"])
    both = tmp_path / "both.yaml"
    both.write_text("dataset: digits\ndata: path/to/images\n")
    with pytest.raises(ValueError, match="gives both 'dataset' and 'data'"):
        parse_config(finetune, ["--config", str(both)])


def test_a_field_and_its_alias_on_one_command_line_are_refused(capsys):
    with pytest.raises(SystemExit):
        parse_config(config_class("finetune"), ["--dataset", "digits", "--data", "path/to/images"])
    assert "--dataset and --data both give the field 'dataset'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--max-train-images", "0"], "--max-train-images must be >= 1"),
    (["--max-eval-images", "-2"], "--max-eval-images must be >= 1"),
    (["--num-workers", "-1"], "--num-workers must be >= 0"),
    (["--eval-fraction", "1"], "--eval-fraction must lie strictly between 0 and 1"),
])
@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_checks_the_shared_data_fields(name, argv, message):
    with pytest.raises(ValueError, match=message):
        parse_config(config_class(name), argv)

import pytest
import yaml

from segpipe.config import flatten, load_params, parse_params
from segpipe.errors import SegpipeError
from tests.conftest import REPO_ROOT


def test_the_projects_params_file_is_valid():
    params = load_params(REPO_ROOT / "params.yaml")
    assert params.data.dataset == "shapes"
    assert flatten(params)["train.epochs"] == params.train.epochs


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("model", "name", "resnet", r"model.name: unknown model 'resnet'; valid choices: cnn, fcn, unet"),
        ("loss", "name", "focal", r"loss.name: unknown loss 'focal'; valid choices: ce_dice, cross_entropy, dice, mae, mse"),
        ("data", "dataset", "imagenet", r"data.dataset: unknown dataset 'imagenet'; valid choices: .*shapes"),
        ("preprocess", "size", 0, r"preprocess.size: Input should be greater than 0 \(got 0\)"),
        ("train", "lr", -0.1, r"train.lr: Input should be greater than 0 \(got -0.1\)"),
        ("model", "pooling", "min", r"model.pooling: Input should be 'max' or 'avg' \(got 'min'\)"),
        ("preprocess", "on_bad_sample", "ignore", r"preprocess.on_bad_sample: Input should be 'error' or 'skip'"),
    ],
)
def test_bad_values_name_the_key_and_the_valid_choices(raw_params, section, key, value, message):
    raw_params[section][key] = value
    with pytest.raises(SegpipeError, match=message):
        parse_params(raw_params)


def test_a_missing_key_is_named(raw_params):
    del raw_params["train"]["epochs"]
    with pytest.raises(SegpipeError, match=r"train.epochs: missing; add it to params.yaml"):
        parse_params(raw_params)


def test_a_misspelt_key_is_named_with_the_valid_keys(raw_params):
    raw_params["train"]["learning_rate"] = raw_params["train"].pop("lr")
    with pytest.raises(SegpipeError) as error:
        parse_params(raw_params)
    text = str(error.value)
    assert "train.learning_rate: unknown key; valid keys here: device, seed, epochs" in text
    assert "train.lr: missing" in text


def test_split_fractions_must_leave_training_data(raw_params):
    raw_params["preprocess"]["split"] |= {"val_fraction": 0.5, "test_fraction": 0.5}
    with pytest.raises(SegpipeError, match="val_fraction \\+ test_fraction must be below 1"):
        parse_params(raw_params)


def test_load_params_names_the_file(tmp_path):
    with pytest.raises(SegpipeError, match=r"params.yaml not found"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("train: [unclosed\n")
    with pytest.raises(SegpipeError, match=r"params.yaml is not valid YAML"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": {}}))
    with pytest.raises(SegpipeError, match=r"params.yaml is invalid:\n  - data: missing"):
        load_params(tmp_path / "params.yaml")

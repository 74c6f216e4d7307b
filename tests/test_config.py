import ast
import typing

import pytest
import yaml
from pydantic import BaseModel

from segpipe.config import Params, SegpipeConfigError, flatten, load_params, params_digest, parse_params
from segpipe.data.sources import SOURCES
from segpipe.errors import SegpipeError
from segpipe.models import MODELS
from segpipe.training.losses import LOSSES
from tests.conftest import REPO_ROOT

# DVC leaves keys with these names out of its run-cache key (treeverse/dvc#10296):
# changing such a param would restore stale outputs.
DVC_BLIND_KEYS = {"size", "nfiles"}


def test_the_projects_params_file_is_valid():
    params = load_params(REPO_ROOT / "params.yaml")
    assert params.data.dataset == "shapes"
    assert flatten(params)["train.epochs"] == params.train.epochs
    assert flatten(params)["preprocess.resize.by"] == "shorter_side"


def _keys(value, prefix=""):
    if isinstance(value, dict):
        for key, item in value.items():
            yield f"{prefix}{key}", key
            yield from _keys(item, f"{prefix}{key}.")


def _schema_keys(model: type[BaseModel], prefix=""):
    for name, field in model.model_fields.items():
        yield f"{prefix}{name}", name
        for inner in _models_in(field.annotation):
            yield from _schema_keys(inner, f"{prefix}{name}.")


def _models_in(annotation):
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in typing.get_args(annotation):
        yield from _models_in(arg)


def test_no_param_is_named_size_or_nfiles_at_any_depth():
    in_file = [path for path, key in _keys(yaml.safe_load((REPO_ROOT / "params.yaml").read_text())) if key in DVC_BLIND_KEYS]
    in_schema = [path for path, key in _schema_keys(Params) if key in DVC_BLIND_KEYS]
    assert in_file == [] and in_schema == []
    # The walk itself finds such keys, at any depth.
    assert [p for p, k in _keys({"a": {"b": {"size": 1}}}) if k in DVC_BLIND_KEYS] == ["a.b.size"]


def _segpipe_imports(module: str) -> list[str]:
    tree = ast.parse((REPO_ROOT / "src" / module).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    return sorted(name for name in imported if name.startswith("segpipe"))


def test_config_imports_only_the_error_type_which_imports_nothing():
    # Every stage reads params: config stays cheap. Its error is a SegpipeError, so it needs errors.py, a leaf.
    assert _segpipe_imports("segpipe/config.py") == ["segpipe.errors"]
    assert _segpipe_imports("segpipe/errors.py") == []
    from segpipe.config import SegpipeConfigError
    from segpipe.errors import SegpipeError

    assert issubclass(SegpipeConfigError, SegpipeError)


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("preprocess", "min_side", 0, r"preprocess.min_side: Input should be greater than 0 \(got 0\)"),
        ("train", "lr", -0.1, r"train.lr: Input should be greater than 0 \(got -0.1\)"),
        ("train", "lr", float("inf"), r"train.lr: Input should be a finite number"),
        ("train", "lr", float("nan"), r"train.lr: Input should be a finite number"),
        ("train", "epochs", True, r"train.epochs: Input should be a valid integer \(got True\)"),
        ("train", "epochs", 2.0, r"train.epochs: Input should be a valid integer \(got 2.0\)"),
        ("train", "batch_size", "16", r"train.batch_size: Input should be a valid integer \(got '16'\)"),
        ("train", "amp", 1, r"train.amp: Input should be a valid boolean \(got 1\)"),
        ("train", "crop", [64], r"train.crop: List should have at least 2 items"),
        ("model", "pooling", "min", r"model.pooling: Input should be 'max' or 'avg' \(got 'min'\)"),
        ("preprocess", "on_bad_sample", "ignore", r"preprocess.on_bad_sample: Input should be 'error' or 'skip'"),
        ("loss", "class_weights", [0, 0, 0, 0], r"loss.class_weights: all zero, so no pixel would count"),
        ("loss", "class_weights", "median", r"loss.class_weights: Input should be 'median_frequency'"),
    ],
)
def test_bad_values_name_the_key_and_the_problem(raw_params, section, key, value, message):
    raw_params[section][key] = value
    with pytest.raises(SegpipeConfigError, match=message):
        parse_params(raw_params)


@pytest.mark.parametrize("resize, message", [
    ({"by": "shorter_side", "to": 0.5}, r"by shorter_side takes a length in pixels in `to`, such as 128 \(got 0.5\)"),
    ({"by": "exact", "to": 64}, r"by exact takes \[height, width\] in `to`"),
    ({"by": "factor", "to": [1, 2]}, r"by factor takes a number in `to`"),
    ({"by": "width", "to": 64}, r"preprocess.resize.by: Input should be 'shorter_side', 'longer_side', 'factor' or 'exact'"),
])
def test_the_working_resolution_is_checked(raw_params, resize, message):
    raw_params["preprocess"]["resize"] = resize
    with pytest.raises(SegpipeConfigError, match=message):
        parse_params(raw_params)


@pytest.mark.parametrize("resize", [{"by": "exact", "to": [96, 128]}, {"by": "factor", "to": 0.5},
                                    {"by": "longer_side", "to": 256}])
def test_every_working_resolution_form_is_accepted(raw_params, resize):
    raw_params["preprocess"]["resize"] = resize
    assert parse_params(raw_params).preprocess.resize.to == resize["to"]


@pytest.mark.parametrize("registry, name, message", [
    (MODELS, "resnet", r"model.name: unknown model 'resnet'; valid choices: cnn, deeplabv3_mobilenet_v3_large, "
                       r"deeplabv3_resnet50, fcn, fcn_resnet50, lraspp_mobilenet_v3_large, smp_deeplabv3, .*smp_upernet, unet"),
    (LOSSES, "focal", r"loss.name: unknown loss 'focal'; valid choices: ce_dice, cross_entropy, dice, mae, mse"),
    (SOURCES, "imagenet", r"data.dataset: unknown dataset 'imagenet'; valid choices: .*shapes"),
])
def test_registries_own_their_choices_and_list_them(registry, name, message):
    with pytest.raises(SegpipeError, match=message):
        registry.check(name)


def test_a_missing_key_is_named(raw_params):
    del raw_params["train"]["epochs"]
    with pytest.raises(SegpipeConfigError, match=r"train.epochs: missing; add it to params.yaml"):
        parse_params(raw_params)


def test_a_misspelt_key_is_named_with_the_valid_keys(raw_params):
    raw_params["train"]["learning_rate"] = raw_params["train"].pop("lr")
    raw_params["preprocess"]["resize"]["into"] = 3
    with pytest.raises(SegpipeConfigError) as error:
        parse_params(raw_params)
    text = str(error.value)
    assert "train.learning_rate: unknown key; valid keys here: device, seed, epochs" in text
    assert "train.lr: missing" in text
    assert "preprocess.resize.into: unknown key; valid keys here: by, to" in text


def test_split_fractions_must_leave_training_data(raw_params):
    raw_params["preprocess"]["split"] |= {"val_fraction": 0.5, "test_fraction": 0.5}
    with pytest.raises(SegpipeConfigError, match="val_fraction \\+ test_fraction must be below 1"):
        parse_params(raw_params)


def test_load_params_names_the_file(tmp_path):
    with pytest.raises(SegpipeConfigError, match=r"params.yaml not found"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text("train: [unclosed\n")
    with pytest.raises(SegpipeConfigError, match=r"params.yaml is not valid YAML"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": {}}))
    with pytest.raises(SegpipeConfigError, match=r"params.yaml is invalid:\n  - data: missing"):
        load_params(tmp_path / "params.yaml")


def test_exponent_floats_read_as_numbers_as_dvc_writes_them(tmp_path):
    text = (REPO_ROOT / "params.yaml").read_text().replace("lr: 0.006", "lr: 6e-3")
    (tmp_path / "params.yaml").write_text(text)
    assert load_params(tmp_path / "params.yaml").train.lr == 0.006


def test_the_params_digest_follows_settings_not_formatting(raw_params):
    first = parse_params(raw_params)
    assert params_digest(parse_params(yaml.safe_load(yaml.safe_dump(raw_params, default_flow_style=True)))) == params_digest(first)
    raw_params["train"]["lr"] = 0.01
    assert params_digest(parse_params(raw_params)) != params_digest(first)


def test_registering_a_model_that_is_not_logged_names_both_keys(raw_params):
    raw_params["mlflow"] |= {"register_model": "segpipe-unet", "log_model": False}
    with pytest.raises(SegpipeConfigError, match=r"mlflow: .*register_model needs the model logged: "
                                                 r"set log_model: true, or register_model: null"):
        parse_params(raw_params)
    raw_params["mlflow"]["log_model"] = True
    assert parse_params(raw_params).mlflow.register_model == "segpipe-unet"

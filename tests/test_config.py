"""config.parse_config: how the Trainer, the Evaluator and `kubeflow submit` read a config."""

import dataclasses
import json

import pytest

from animerec.config import TrainingConfig, parse_config
from animerec.evaluation import GateConfig


@pytest.mark.parametrize("config_class", [TrainingConfig, GateConfig])
def test_every_default_config_passes_its_own_check(config_class):
    # As the pipeline compiles it (JSON text, tuples as lists) and as TFX hands it over.
    text = json.dumps(dataclasses.asdict(config_class()))
    assert parse_config(config_class, text, "c") == parse_config(config_class, json.loads(text), "c")
    assert parse_config(config_class, None, "c") == config_class()


def test_values_are_typed_as_the_fields():
    config = parse_config(TrainingConfig, {"learning_rate": 1, "item_item_candidate_titles": None}, "training_config")
    assert config.learning_rate == 1 and config.item_item_candidate_titles is None
    assert parse_config(TrainingConfig, {"item_item_candidate_titles": 500}, "t").item_item_candidate_titles == 500
    refused = {
        "epochs": (True, "epochs must be an integer; got true"),
        "use_user_embedding": (1, "use_user_embedding must be true or false; got 1"),
        "learning_rate": ("0.1", 'learning_rate must be a number; got "0.1"'),
        "item_item_candidate_titles": (2.0, "item_item_candidate_titles must be an integer; got 2.0"),
        "ranker_hidden_units": (
            32,
            r"ranker_hidden_units must be a non-empty JSON list shaped like \[\[32\]\]; got 32",
        ),
        # A flat list where the default nests, elements of the wrong type, an empty grid:
        # each would fail inside the Trainer, after ExampleGen and Transform.
        "ease_l2_grid": (["a"], r'ease_l2_grid must be a non-empty JSON list shaped like \[50.0, .*\]; got \["a"\]'),
        "popularity_prior_grid": ([], r"popularity_prior_grid must be a non-empty JSON list .*; got \[\]"),
    }
    with pytest.raises(ValueError, match=r"ranker_hidden_units must be .*; got \[32\]$"):
        parse_config(TrainingConfig, {"ranker_hidden_units": [32]}, "training_config")
    with pytest.raises(ValueError, match=r"ranker_hidden_units must be .*; got \[\[16.5\]\]$"):
        parse_config(TrainingConfig, {"ranker_hidden_units": [[16.5]]}, "training_config")
    shapes = parse_config(TrainingConfig, {"ranker_hidden_units": [[], [64, 32]], "ease_l2_grid": [100, 250.5]}, "t")
    assert shapes.ranker_hidden_units == [[], [64, 32]] and shapes.ease_l2_grid == [100, 250.5]
    for key, (value, message) in refused.items():
        with pytest.raises(ValueError, match=f"^training_config: {message}$"):
            parse_config(TrainingConfig, {key: value}, "training_config")
    with pytest.raises(ValueError, match="^gate_config: metric must be a string; got 50$"):
        parse_config(GateConfig, '{"metric": 50}', "gate_config")
    with pytest.raises(ValueError, match="^gate_config: min_value must be a number; got NaN$"):
        parse_config(GateConfig, '{"min_value": NaN}', "gate_config")
    # An infinite tolerance turns the regression check off (`--max-regression inf`).
    assert parse_config(GateConfig, '{"max_regression": Infinity}', "g").max_regression == float("inf")
    assert parse_config(GateConfig, {"min_value": 10**400}, "g").min_value == 10**400

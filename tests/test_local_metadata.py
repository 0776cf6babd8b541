"""run-local's ML Metadata answers the resolver queries TFX compiles for the latest blessed model."""

import pytest

from animerec.kubeflow import local_launcher, local_metadata
from animerec.kubeflow.local_metadata import LocalMetadata

BLESSING_QUERY = 'schema_title="tfx.ModelBlessing" AND state=LIVE AND metadata.blessed.number_value=1'
MODEL_QUERY = "schema_title=\"tfx.Model\" AND state=LIVE AND name=\"{{$.inputs.artifacts['input'].metadata['current_model_id']}}\""


def _artifact(run: str, task: str, key: str, schema: str, **metadata) -> dict:
    return {
        "name": f"{run}/{task}-{key}",
        "type": {"instanceSchema": f"title: {schema}\ntype: object\n"},  # as TFX compiles it
        "uri": f"/root/{run}/{task}/{key}",
        "metadata": metadata,
    }


def _run(store: LocalMetadata, run: str, blessed: int) -> dict:
    model = _artifact(run, "Trainer", "model", "tfx.Model")
    # As the Evaluator's executor output carries it: the model's KFP id, as a JSON number.
    blessing = _artifact(
        run,
        "RetrievalEvaluator",
        "blessing",
        "tfx.ModelBlessing",
        blessed=blessed,
        current_model_id=float(local_metadata.kfp_artifact_id(model["name"])),
    )
    store.record(run, "Trainer", {"model": [model]})
    store.record(run, "RetrievalEvaluator", {"blessing": [blessing]})
    return {"model": model, "blessing": blessing}


def test_the_latest_blessed_model_is_resolved_across_runs(tmp_path):
    path = str(tmp_path / "metadata.sqlite")
    store = LocalMetadata(path)
    assert store.resolve(BLESSING_QUERY, {}) == []
    assert store.resolve(MODEL_QUERY, {"input": []}) == [], "nothing to resolve on a first run"

    first = _run(store, "run-1", blessed=1)
    _run(LocalMetadata(path), "run-2", blessed=0)  # not blessed: never the baseline
    store = LocalMetadata(path)  # what a later run-local process sees
    blessing = store.resolve(BLESSING_QUERY, {})
    assert blessing == [first["blessing"]]
    assert store.resolve(MODEL_QUERY, {"input": blessing}) == [first["model"]]

    third = _run(store, "run-3", blessed=1)
    blessing = store.resolve(BLESSING_QUERY, {})
    assert blessing == [third["blessing"]], "the newest blessing wins"
    assert store.resolve(MODEL_QUERY, {"input": blessing}) == [third["model"]]


def test_a_query_it_cannot_answer_is_refused(tmp_path):
    store = LocalMetadata(str(tmp_path / "metadata.sqlite"))
    with pytest.raises(local_metadata.UnsupportedQuery, match="create_time"):
        store.resolve('schema_title="tfx.Model" AND create_time>3', {})


def _executor_input(run: str, parameters: dict, inputs: dict) -> dict:
    return {
        "inputs": {"parameterValues": parameters, "artifacts": {k: {"artifacts": v} for k, v in inputs.items()}},
        "outputs": {"artifacts": {"model": {"artifacts": [_artifact(run, "Trainer", "model", "tfx.Model")]}}},
    }


def test_the_cache_key_is_kfps_inputs_parameters_and_code():
    container = {"image": "animerec-pipeline:0.1.0", "command": ["python", "-m", "x"], "args": ["{{$}}"]}
    examples = [_artifact("run-1", "Transform", "transformed_examples", "tfx.Examples")]
    key = local_launcher.cache_fingerprint(container, _executor_input("run-1", {"seed": 0}, {"examples": examples}))
    # Another run's output URIs and names do not change it: the driver provisions outputs without names.
    assert key == local_launcher.cache_fingerprint(
        container, _executor_input("run-2", {"seed": 0}, {"examples": examples})
    )
    changed = [
        _executor_input("run-2", {"seed": 1}, {"examples": examples}),
        _executor_input(
            "run-2",
            {"seed": 0},
            {"examples": [_artifact("run-2", "Transform", "transformed_examples", "tfx.Examples")]},
        ),
    ]
    for executor_input in changed:
        assert local_launcher.cache_fingerprint(container, executor_input) != key
    assert local_launcher.cache_fingerprint({**container, "image": "animerec-pipeline:0.2.0"}, changed[0]) != key


def test_a_cached_execution_gives_back_its_outputs_and_the_hit_is_recorded(tmp_path):
    store = LocalMetadata(str(tmp_path / "metadata.sqlite"))
    assert store.cached("Trainer", "abc") is None, "no execution of the task yet"
    model = _artifact("run-1", "Trainer", "model", "tfx.Model")
    store.record("run-1", "Trainer", {"model": [model]}, fingerprint="abc")
    assert store.cached("Trainer", "other") is None
    execution, outputs, ids = store.cached("Trainer", "abc")
    assert execution == "run-1/Trainer" and outputs == {"model": [model]}
    # The hit is recorded as KFP records one: CACHED, with the same artifacts as outputs.
    store.record("run-2", "Trainer", outputs, fingerprint="abc", cached_ids=ids)
    assert store.cached("Trainer", "abc")[0] == "run-1/Trainer"
    assert store.resolve('schema_title="tfx.Model" AND state=LIVE', {}) == [model]
    states = {e.name: e.last_known_state for e in store.store.get_executions_by_type("Trainer")}
    assert states == {"run-1/Trainer": store._pb.Execution.COMPLETE, "run-2/Trainer": store._pb.Execution.CACHED}

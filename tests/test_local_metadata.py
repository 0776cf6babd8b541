"""run-local's ML Metadata and cache, as a KFP backend keeps them, and what it refuses as KFP does."""

import json

import pytest

from animerec.kubeflow import local_launcher
from animerec.kubeflow.local_metadata import LocalMetadata


def _artifact(run: str, task: str, key: str, schema: str, **metadata) -> dict:
    return {
        "name": f"{run}/{task}-{key}",
        "type": {"instanceSchema": f"title: {schema}\ntype: object\n"},  # as TFX compiles it
        "uri": f"/root/{run}/{task}/{key}",
        "metadata": metadata,
    }


def test_a_resolver_task_is_refused_as_open_source_kfp_refuses_it(tmp_path):
    """KFP's Argo compiler answers "resolver executors not implemented" when a run is
    created (backend/src/v2/compiler/argocompiler/dag.go); run-local does the same rather
    than answer the query itself, so the compiled pipeline cannot rely on one."""
    job = {
        "pipelineSpec": {
            "root": {"dag": {"tasks": {"latest-model": {"componentRef": {"name": "comp-latest-model"}}}}},
            "components": {"comp-latest-model": {"executorLabel": "exec-latest-model"}},
            "deploymentSpec": {
                "executors": {
                    "exec-latest-model": {
                        "resolver": {"outputArtifactQueries": {"model": {"filter": 'schema_title="tfx.Model"'}}}
                    }
                }
            },
        }
    }
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    with pytest.raises(local_launcher.TaskFailed, match="latest-model: resolver executors are not implemented"):
        local_launcher.run_compiled_pipeline(str(path), str(tmp_path / "root"), progress=lambda _: None)


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
    states = {e.name: e.last_known_state for e in store.store.get_executions_by_type("Trainer")}
    assert states == {"run-1/Trainer": store._pb.Execution.COMPLETE, "run-2/Trainer": store._pb.Execution.CACHED}

"""Finding a run's outputs through ML Metadata, and the newest complete serving version."""

import io
import json
import os

import numpy as np
import pytest
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

from animerec.data import files
from animerec.pipeline import artifacts


def _store(path: str):
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    return metadata_store.MetadataStore(config)


def _execution(store, type_id, state, outputs: dict) -> int:
    """An execution of type_id with OUTPUT events to new artifacts: key -> (type_id, uri, blessed)."""
    execution = metadata_store_pb2.Execution(type_id=type_id, last_known_state=state)
    [execution_id] = store.put_executions([execution])
    for key, (artifact_type, uri, blessed) in outputs.items():
        artifact = metadata_store_pb2.Artifact(type_id=artifact_type, uri=uri)
        if blessed is not None:
            artifact.custom_properties["blessed"].int_value = blessed
        [artifact_id] = store.put_artifacts([artifact])
        event = metadata_store_pb2.Event(
            artifact_id=artifact_id, execution_id=execution_id, type=metadata_store_pb2.Event.OUTPUT
        )
        event.path.steps.add().key = key
        event.path.steps.add().index = 0
        store.put_events([event])
    return execution_id


def test_latest_evaluation_is_found_through_ml_metadata(tmp_path):
    path = str(tmp_path / "metadata.sqlite")
    store = _store(path)
    evaluator = store.put_execution_type(
        metadata_store_pb2.ExecutionType(name="animerec.components.retrieval_evaluator.component.RetrievalEvaluator")
    )
    evaluation = store.put_artifact_type(metadata_store_pb2.ArtifactType(name="ModelEvaluation"))
    blessing = store.put_artifact_type(metadata_store_pb2.ArtifactType(name="ModelBlessing"))
    uris = {}
    for name, recall in (("old", 0.1), ("new", 0.2), ("failed", 0.3)):
        uris[name] = str(tmp_path / name)
        os.makedirs(uris[name])
        with open(os.path.join(uris[name], "metrics.json"), "w") as fh:
            json.dump({"model": {"recall@50": recall}}, fh)
    complete = metadata_store_pb2.Execution.COMPLETE
    _execution(
        store, evaluator, complete, {"evaluation": (evaluation, uris["old"], None), "blessing": (blessing, "b0", 1)}
    )
    _execution(
        store, evaluator, complete, {"evaluation": (evaluation, uris["new"], None), "blessing": (blessing, "b1", 0)}
    )
    # A newer execution that failed is not "the latest evaluation".
    _execution(
        store, evaluator, metadata_store_pb2.Execution.FAILED, {"evaluation": (evaluation, uris["failed"], None)}
    )
    found = artifacts.latest_evaluation(path)
    assert found["metrics"] == {"model": {"recall@50": 0.2}}
    assert found["report"] == os.path.join(uris["new"], "report.md") and found["blessed"] is False
    assert artifacts.latest_output_uri(path, "RetrievalEvaluator", "evaluation") == uris["new"]
    assert artifacts.latest_output_uri(path, "Trainer", "model_run") is None


@pytest.fixture(params=["local", "ram"])
def folder(request, tmp_path):
    """A folder on this machine, or on TensorFlow's in-memory filesystem: a path with a
    scheme, as a Kubeflow run's gs:// artifacts and Pusher's serving folder are."""
    root = str(tmp_path) if request.param == "local" else f"ram://artifacts_{tmp_path.name}"
    yield root
    files.rmtree(root)


def test_newest_complete_version(folder):
    for version, complete in ((1, True), (3, True), (7, False), ("tmp", True)):
        files.makedirs(os.path.join(folder, str(version)))
        if complete:
            files.write_bytes(os.path.join(folder, str(version), "saved_model.pb"), b"")
    assert artifacts.complete_versions(folder) == [1, 3]
    assert artifacts.newest_version_dir(folder) == os.path.join(folder, "3")
    assert artifacts.newest_version_dir(os.path.join(folder, "none")) is None


def test_the_trainer_writes_its_model_run_where_the_artifact_is(folder):
    from animerec.trainer import write_model_run

    out = os.path.join(folder, "model_run")
    embeddings = np.arange(6, dtype=np.float32).reshape(3, 2)
    write_model_run(out, {"loss": [2.0, 1.5]}, np.array([5, 7, 9]), np.array(["Action", "Drama", ""]), embeddings)
    assert json.loads(files.read_text(os.path.join(out, artifacts.HISTORY_FILE))) == {"loss": [2.0, 1.5]}
    saved = np.load(io.BytesIO(files.read_bytes(os.path.join(out, artifacts.EMBEDDINGS_FILE))))
    assert saved["anime_id"].tolist() == [5, 7, 9] and saved["genres"].tolist() == [b"Action", b"Drama", b""]
    np.testing.assert_array_equal(saved["embeddings"], embeddings)


def test_the_evaluator_writes_its_report_where_the_artifact_is(folder):
    from animerec.components.retrieval_evaluator import executor
    from animerec.report import EVALUATION_COLUMNS

    def system(recall):
        return {
            **{column: recall for column in EVALUATION_COLUMNS},
            "users": 40,
            "slices": {"1-5": {"users": 40, "recall@50": recall}},
        }

    results = {
        "model": system(0.4),
        "ease": {**system(0.3), "l2": 100.0, "l2_validation_recall@50": {"100": 0.3}, "validation_percent": 15},
    }
    curves = {name: [0.1] * len(executor.RECALL_CURVE_KS) for name in results}
    out = os.path.join(folder, "evaluation")
    executor.write_report(out, results, curves, True, ["model beats ease"])
    assert json.loads(files.read_text(os.path.join(out, artifacts.METRICS_FILE))) == results
    assert json.loads(files.read_text(os.path.join(out, artifacts.VERDICT_FILE))) == {
        "blessed": True,
        "reasons": ["model beats ease"],
    }
    assert json.loads(files.read_text(os.path.join(out, artifacts.CURVES_FILE)))["model"] == curves["model"]
    assert files.read_bytes(os.path.join(out, artifacts.RECALL_PLOT)).startswith(b"\x89PNG")
    report = files.read_text(os.path.join(out, artifacts.REPORT_FILE))
    assert report.startswith("# Retrieval evaluation: BLESSED\n")
    assert "| model | 0.4000" in report and "- model beats ease" in report
    assert "EASE's L2 (100) was chosen on the validation split (15% of train's liked rows)" in report


def test_the_evaluator_knows_the_served_model_from_another(folder):
    """A model is the one being served when Pusher's copy has its graph and its variables
    index (each variable's shape, offset and checksum): then it is not blessed again."""
    from animerec.components.retrieval_evaluator.executor import same_saved_model

    def saved_model(name: str, graph: bytes, index: bytes | None) -> str:
        path = os.path.join(folder, name)
        files.makedirs(os.path.join(path, "variables"))
        files.write_bytes(os.path.join(path, "saved_model.pb"), graph)
        if index is not None:
            files.write_bytes(os.path.join(path, "variables", "variables.index"), index)
        return path

    model = saved_model("model", b"graph", b"index")
    assert same_saved_model(model, saved_model("pushed", b"graph", b"index"))
    assert not same_saved_model(model, saved_model("retrained", b"graph", b"other index"))
    assert not same_saved_model(model, saved_model("other graph", b"graph 2", b"index"))
    assert not same_saved_model(model, saved_model("incomplete", b"graph", None))
    assert not same_saved_model(model, os.path.join(folder, "nowhere"))

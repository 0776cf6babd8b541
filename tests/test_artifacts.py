"""Finding a run's outputs through ML Metadata, and the newest complete serving version."""

import json
import os

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2

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


def test_newest_complete_version(tmp_path):
    for version, complete in ((1, True), (3, True), (7, False), ("tmp", True)):
        os.makedirs(tmp_path / str(version))
        if complete:
            (tmp_path / str(version) / "saved_model.pb").write_bytes(b"")
    assert artifacts.complete_versions(str(tmp_path)) == [1, 3]
    assert artifacts.newest_version_dir(str(tmp_path)) == str(tmp_path / "3")
    assert artifacts.newest_version_dir(str(tmp_path / "none")) is None

"""Where a run's outputs are: pipeline artifacts through ML Metadata (as TFX's own tests
find them), pushed models by the serving dir's newest complete version.

Paths are never guessed from the pipeline root's layout: a component's output folder is
an implementation detail of the orchestrator, its artifact in ML Metadata is the record.
"""

from __future__ import annotations

import dataclasses
import os

from animerec.data import files

EVALUATOR = "RetrievalEvaluator"
TRAINER = "Trainer"

# The files inside the artifacts this project's components write; the components, the
# run report and the run summary all name them from here.
# RetrievalEvaluator's `evaluation` artifact:
METRICS_FILE = "metrics.json"
VERDICT_FILE = "verdict.json"
CURVES_FILE = "curves.json"
RECALL_PLOT = "recall_at_k.png"
REPORT_FILE = "report.md"
# Trainer's `model_run` artifact:
HISTORY_FILE = "training_history.json"
EMBEDDINGS_FILE = "catalog_embeddings.npz"


def complete_versions(base_path: str) -> list[int]:
    """Version folders that hold a saved_model.pb (Pusher copies that file last), oldest
    first; base_path local or on any filesystem TensorFlow reads (a Kubeflow Pusher's gs://)."""
    if not files.isdir(base_path):
        return []
    return sorted(
        int(name)
        for name in files.listdir(base_path)
        if name.isdigit() and files.exists(os.path.join(base_path, name, "saved_model.pb"))
    )


def newest_version_dir(base_path: str) -> str | None:
    """The newest complete version's folder, or None."""
    versions = complete_versions(base_path)
    return os.path.join(base_path, str(versions[-1])) if versions else None


def open_store(metadata_path: str, mode: str = "read"):
    """The run's ML Metadata store (SQLite): "read" (read-only) or "write" an existing one,
    or "create" it when absent."""
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    modes = metadata_store_pb2.SqliteMetadataSourceConfig
    if mode != "create" and not os.path.exists(metadata_path):
        raise FileNotFoundError(f"{metadata_path}: no ML Metadata store (has the pipeline run here?)")
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = metadata_path
    config.sqlite.connection_mode = {
        "read": modes.READONLY,
        "write": modes.READWRITE,
        "create": modes.READWRITE_OPENCREATE,
    }[mode]
    return metadata_store.MetadataStore(config)


@dataclasses.dataclass
class Outputs:
    """The output artifacts of one execution, by output key."""

    execution_id: int
    artifacts: dict  # output key -> MLMD Artifact


def latest_outputs(store, component: str) -> Outputs | None:
    """The outputs of `component`'s newest completed execution (by the component's id, the
    last part of its execution type's name or its node id)."""
    from ml_metadata.proto import metadata_store_pb2

    done = {metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED}
    executions = [
        e
        for t in store.get_execution_types()
        if t.name.split(".")[-1] == component
        for e in store.get_executions_by_type(t.name)
        if e.last_known_state in done
    ]
    if not executions:
        return None
    newest = max(executions, key=lambda e: (e.create_time_since_epoch, e.id))
    outputs = {}
    events = store.get_events_by_execution_ids([newest.id])
    artifact_ids = [e.artifact_id for e in events if e.type == metadata_store_pb2.Event.OUTPUT]
    by_id = {a.id: a for a in store.get_artifacts_by_id(artifact_ids)}
    for event in events:
        if event.type == metadata_store_pb2.Event.OUTPUT and event.path.steps:
            outputs[event.path.steps[0].key] = by_id[event.artifact_id]
    return Outputs(newest.id, outputs)


def latest_evaluation(metadata_path: str) -> dict | None:
    """metrics.json, the report's path and the verdict of the newest RetrievalEvaluator execution."""
    import json

    outputs = latest_outputs(open_store(metadata_path), EVALUATOR)
    if outputs is None or "evaluation" not in outputs.artifacts:
        return None
    evaluation = outputs.artifacts["evaluation"].uri
    blessing = outputs.artifacts.get("blessing")
    metrics = json.loads(files.read_text(os.path.join(evaluation, METRICS_FILE)))
    blessed = blessing is not None and blessing.custom_properties["blessed"].int_value == 1
    return {"metrics": metrics, "report": os.path.join(evaluation, REPORT_FILE), "blessed": blessed}


def latest_output_uri(metadata_path: str, component: str, key: str) -> str | None:
    """The URI of output `key` of `component`'s newest completed execution."""
    outputs = latest_outputs(open_store(metadata_path), component)
    artifact = outputs.artifacts.get(key) if outputs else None
    return artifact.uri if artifact is not None else None

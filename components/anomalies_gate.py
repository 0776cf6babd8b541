"""Stops the run when ExampleValidator found anomalies, with a report a person can read."""

import os

from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.components.example_validator.executor import DEFAULT_FILE_NAME as SCHEMA_DIFF_FILE
from tfx.dsl.component.experimental.annotations import InputArtifact
from tfx.dsl.component.experimental.decorators import component
from tfx.types import artifact_utils
from tfx.types.standard_artifacts import ExampleAnomalies

from animerec.data import files


class DataAnomaliesError(RuntimeError):
    """The examples disagree with the schema; the message lists each anomaly."""


def describe_anomalies(artifact: ExampleAnomalies) -> list:
    """One line per anomalous feature and split, from ExampleValidator's output artifact:
    its SchemaDiff.pb of each split it names, where TFX puts a split's files
    (artifact_utils.get_split_uri), in a local folder or on any filesystem TensorFlow reads
    (a Kubeflow run's is on gs://)."""
    lines = []
    splits = artifact_utils.decode_split_names(artifact.split_names)
    if not splits:
        raise DataAnomaliesError(f"{artifact.uri}: ExampleValidator's output names no split to check")
    for split in splits:
        path = os.path.join(artifact_utils.get_split_uri([artifact], split), SCHEMA_DIFF_FILE)
        if not files.exists(path):
            # Nothing to read is not clean data.
            raise DataAnomaliesError(f"{path}: ExampleValidator wrote no {SCHEMA_DIFF_FILE} for split {split}")
        anomalies = anomalies_pb2.Anomalies()
        anomalies.ParseFromString(files.read_bytes(path))
        for feature, info in sorted(anomalies.anomaly_info.items()):
            reasons = "; ".join(f"{r.short_description}: {r.description}" for r in info.reason)
            lines.append(f"split {split}, feature {feature}: {reasons or info.description}")
        if anomalies.HasField("dataset_anomaly_info"):
            reasons = "; ".join(r.description for r in anomalies.dataset_anomaly_info.reason)
            lines.append(f"split {split}, dataset: {reasons}")
    return lines


def check_anomalies(artifact: ExampleAnomalies) -> None:
    """Raises DataAnomaliesError listing every anomaly; returns for clean data."""
    problems = describe_anomalies(artifact)
    if problems:
        raise DataAnomaliesError(
            "ExampleValidator found anomalies; fix the data or the schema (schema/schema.pbtxt):\n  "
            + "\n  ".join(problems)
        )


@component
def AnomaliesGate(anomalies: InputArtifact[ExampleAnomalies]) -> None:  # noqa: N802 - TFX component naming
    """Stops the pipeline when ExampleValidator found anomalies."""
    check_anomalies(anomalies)

"""Stops the run when ExampleValidator found anomalies, with a report a person can read."""

import os

from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx.dsl.component.experimental.annotations import InputArtifact
from tfx.dsl.component.experimental.decorators import component
from tfx.types.standard_artifacts import ExampleAnomalies

from animerec.data import files


class DataAnomaliesError(RuntimeError):
    """The examples disagree with the schema; the message lists each anomaly."""


def describe_anomalies(anomalies_uri: str) -> list:
    """One line per anomalous feature and split, from ExampleValidator's output (a local
    folder or one on any filesystem TensorFlow reads: a Kubeflow run's is on gs://)."""
    lines = []
    paths = files.glob(os.path.join(anomalies_uri, "Split-*", "SchemaDiff.pb"))
    if not paths:
        # ExampleValidator writes one per split; none found must not read as clean data.
        raise DataAnomaliesError(f"{anomalies_uri}: no Split-*/SchemaDiff.pb from ExampleValidator to check")
    for path in paths:
        split = os.path.basename(os.path.dirname(path))[len("Split-") :]
        anomalies = anomalies_pb2.Anomalies()
        anomalies.ParseFromString(files.read_bytes(path))
        for feature, info in sorted(anomalies.anomaly_info.items()):
            reasons = "; ".join(f"{r.short_description}: {r.description}" for r in info.reason)
            lines.append(f"split {split}, feature {feature}: {reasons or info.description}")
        if anomalies.HasField("dataset_anomaly_info"):
            reasons = "; ".join(r.description for r in anomalies.dataset_anomaly_info.reason)
            lines.append(f"split {split}, dataset: {reasons}")
    return lines


def check_anomalies(anomalies_uri: str) -> None:
    """Raises DataAnomaliesError listing every anomaly; returns for clean data."""
    problems = describe_anomalies(anomalies_uri)
    if problems:
        raise DataAnomaliesError(
            "ExampleValidator found anomalies; fix the data or the schema (schema/schema.pbtxt):\n  "
            + "\n  ".join(problems)
        )


@component
def AnomaliesGate(anomalies: InputArtifact[ExampleAnomalies]) -> None:  # noqa: N802 - TFX component naming
    """Stops the pipeline when ExampleValidator found anomalies."""
    check_anomalies(anomalies.uri)

"""The gate after ExampleValidator: real TFDV anomalies stop the run with a readable report."""

import os

import pandas as pd
import pytest
import tensorflow_data_validation as tfdv
from tfx.types import artifact_utils, standard_artifacts

from animerec import features as f
from animerec.components.anomalies_gate import SCHEMA_DIFF_FILE, DataAnomaliesError, check_anomalies
from animerec.data import files
from animerec.pipeline.pipeline import SCHEMA_FILE


@pytest.fixture(params=["local", "ram"])
def anomalies_root(request, tmp_path):
    """ExampleValidator's output folder: on this machine, or on TensorFlow's in-memory
    filesystem (a path with a scheme, as a Kubeflow run's gs:// artifacts are)."""
    root = str(tmp_path) if request.param == "local" else f"ram://anomalies_{tmp_path.name}"
    yield root
    files.rmtree(root)


def _artifact(root, splits):
    """ExampleValidator's output artifact at `root`, naming `splits`."""
    artifact = standard_artifacts.ExampleAnomalies()
    artifact.uri = root
    artifact.split_names = artifact_utils.encode_split_names(list(splits))
    return artifact


def _write_anomalies(root, split, rows):
    """As ExampleValidator writes a split's anomalies: TFX 1.16 puts a split's files in
    Split-<name> (artifact_utils.get_split_uri), spelled out here so that the test does not
    read the layout from the code it checks."""
    stats = tfdv.generate_statistics_from_dataframe(pd.DataFrame(rows))
    anomalies = tfdv.validate_statistics(stats, tfdv.load_schema_text(SCHEMA_FILE))
    folder = os.path.join(root, f"Split-{split}")
    files.makedirs(folder)
    files.write_bytes(os.path.join(folder, SCHEMA_DIFF_FILE), anomalies.SerializeToString())


def _rows(rating):
    return {
        f.USER_ID: [1, 2],
        f.ANIME_ID: [5, 6],
        f.RATING: [8, rating],
        f.LIKED: [1, 0],
        f.NAME: ["", ""],
        f.GENRES: ["", ""],
        f.SYNOPSIS: ["", ""],
    }


def test_clean_data_passes(anomalies_root):
    _write_anomalies(anomalies_root, "train", _rows(rating=7))
    check_anomalies(_artifact(anomalies_root, ["train"]))


def test_out_of_range_rating_stops_the_run(anomalies_root):
    _write_anomalies(anomalies_root, "train", _rows(rating=7))
    _write_anomalies(anomalies_root, "eval", _rows(rating=11))
    with pytest.raises(DataAnomaliesError) as error:
        check_anomalies(_artifact(anomalies_root, ["train", "eval"]))
    message = str(error.value)
    assert "split eval, feature rating" in message
    assert "split train" not in message
    assert "schema/schema.pbtxt" in message


def test_an_output_without_schema_diffs_stops_the_run(anomalies_root):
    """Nothing to read is not clean data: a split without its SchemaDiff.pb (a path the
    gate cannot read), or an output naming no split, must not let the run through."""
    _write_anomalies(anomalies_root, "train", _rows(rating=7))
    with pytest.raises(DataAnomaliesError, match="wrote no SchemaDiff.pb for split eval"):
        check_anomalies(_artifact(anomalies_root, ["train", "eval"]))
    with pytest.raises(DataAnomaliesError, match="names no split"):
        check_anomalies(_artifact(anomalies_root, []))

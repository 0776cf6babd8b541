"""The gate after ExampleValidator: real TFDV anomalies stop the run with a readable report."""

import os

import pandas as pd
import pytest
import tensorflow_data_validation as tfdv

from animerec import features as f
from animerec.components.anomalies_gate import DataAnomaliesError, check_anomalies
from animerec.pipeline.pipeline import SCHEMA_FILE


def _write_anomalies(root, split, rows):
    stats = tfdv.generate_statistics_from_dataframe(pd.DataFrame(rows))
    anomalies = tfdv.validate_statistics(stats, tfdv.load_schema_text(SCHEMA_FILE))
    folder = os.path.join(root, f"Split-{split}")
    os.makedirs(folder)
    with open(os.path.join(folder, "SchemaDiff.pb"), "wb") as fh:
        fh.write(anomalies.SerializeToString())


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


def test_clean_data_passes(tmp_path):
    _write_anomalies(str(tmp_path), "train", _rows(rating=7))
    check_anomalies(str(tmp_path))


def test_out_of_range_rating_stops_the_run(tmp_path):
    _write_anomalies(str(tmp_path), "train", _rows(rating=7))
    _write_anomalies(str(tmp_path), "eval", _rows(rating=11))
    with pytest.raises(DataAnomaliesError) as error:
        check_anomalies(str(tmp_path))
    message = str(error.value)
    assert "split eval, feature rating" in message
    assert "split train" not in message
    assert "schema/schema.pbtxt" in message

"""KaggleExampleGen: the Kaggle CSV files straight into the Examples artifact, from any filesystem."""

import json
import os
import shutil
import sys

import numpy as np
import pytest
import tensorflow as tf
from tfx.components.example_gen import utils as example_gen_utils
from tfx.dsl.components.base import base_beam_executor
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_artifacts
from tfx.types import standard_component_specs as keys
from tfx.utils import proto_utils

from animerec import features
from animerec.components import example_gen
from animerec.data import convert, interactions, kaggle
from animerec.pipeline import beam_args


def _records(folder: str) -> list[tf.train.Example]:
    """A split's records in file order (parsed: the encoder's order of features may differ)."""
    paths = sorted(tf.io.gfile.glob(os.path.join(folder, "*")))
    compression = "GZIP" if paths and paths[0].endswith(".gz") else None
    return [
        tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(paths, compression_type=compression)
    ]


def _run_executor(input_base: str, out_uri: str, component: example_gen.KaggleExampleGen):
    examples = standard_artifacts.Examples()
    examples.uri = out_uri
    context = base_beam_executor.BaseBeamExecutor.Context(beam_pipeline_args=list(beam_args.IN_PROCESS))
    properties = component.exec_properties
    example_gen.Executor(context).Do(
        {},
        {keys.EXAMPLES_KEY: [examples]},
        {
            keys.INPUT_BASE_KEY: input_base,
            # As the launcher passes them: the component's protos as JSON.
            keys.INPUT_CONFIG_KEY: properties[keys.INPUT_CONFIG_KEY],
            keys.CUSTOM_CONFIG_KEY: properties[keys.CUSTOM_CONFIG_KEY],
        },
    )
    return examples


@pytest.fixture
def ram_kaggle_dir(real_data_dir):
    """The real sample on TensorFlow's in-memory filesystem: a path with a scheme, as gs:// is."""
    folder = "ram://kaggle"
    tf.io.gfile.makedirs(folder)
    for name in os.listdir(real_data_dir):
        tf.io.gfile.copy(os.path.join(real_data_dir, name), f"{folder}/{name}", overwrite=True)
    yield folder
    for path in ("ram://kaggle", "ram://out"):
        if tf.io.gfile.exists(path):
            tf.io.gfile.rmtree(path)


def test_remote_csv_files_become_the_converters_records_in_the_artifact(
    ram_kaggle_dir, real_data_dir, tmp_path, monkeypatch
):
    # TFX's Beam executors parse sys.argv with absl flags: not pytest's arguments.
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    # Small shards: several files per split, so their order is checked too.
    monkeypatch.setattr(convert, "ROWS_PER_SHARD", 20_000)
    settings = interactions.LikedFilter(min_score=8), interactions.SplitConfig(eval_percent=30, seed=3)
    component = example_gen.KaggleExampleGen(input_base=ram_kaggle_dir, liked_filter=settings[0], split=settings[1])
    examples = _run_executor(ram_kaggle_dir, "ram://out/examples", component)

    assert artifact_utils.decode_split_names(examples.split_names) == list(features.SPLITS)
    assert examples.get_string_custom_property("payload_format") == "FORMAT_TF_EXAMPLE"
    assert examples.get_string_custom_property("file_format") == "tfrecords_gzip"
    # The same code as `animerec data convert` on the local copy with the same settings:
    # every record of every split, in the same order.
    reference = convert.convert_kaggle(real_data_dir, str(tmp_path / "local"), *settings, progress=lambda _: None)
    for split in features.SPLITS:
        written = _records(artifact_utils.get_split_uri([examples], split))
        assert written, split
        assert written == _records(str(tmp_path / "local" / split)), split
    with tf.io.gfile.GFile("ram://out/examples/conversion_report.json") as f:
        report = json.load(f)
    assert report["interactions"] == reference["interactions"]
    assert report["liked_filter"]["min_score"] == 8 and report["split"]["eval_percent"] == 30
    assert report["animelist"]["rows_read"] > 0
    # The splits and the report, nothing else: the spill folder is gone.
    assert sorted(name.rstrip("/") for name in tf.io.gfile.listdir("ram://out/examples")) == sorted(
        [f"Split-{split}" for split in features.SPLITS] + [convert.REPORT_FILE]
    )


def test_custom_config_round_trips_and_rejects_unknown_fields():
    liked_filter, split = (
        interactions.LikedFilter(min_score=6, keep_unscored_watching=False),
        interactions.SplitConfig(eval_percent=25, min_history=3, seed=9),
    )
    config = proto_utils.proto_to_json(example_gen.custom_config(liked_filter, split))
    assert example_gen.settings(config) == (liked_filter, split)
    assert isinstance(example_gen.settings(config)[1].seed, int)
    assert example_gen.settings(None) == (interactions.LikedFilter(), interactions.SplitConfig())
    bad = json.loads(config)
    bad["custom_config"]["value"]["split"]["eval_fraction"] = 0.2
    with pytest.raises(
        ValueError, match=r"custom_config's SplitConfig: unknown key\(s\) eval_fraction; known: eval_percent"
    ):
        example_gen.settings(json.dumps(bad))
    del bad["custom_config"]["value"]["split"]["eval_fraction"]
    bad["custom_config"]["value"]["split"]["min_history"] = 2.5
    with pytest.raises(ValueError, match=r"custom_config's SplitConfig: min_history must be an integer; got 2.5$"):
        example_gen.settings(json.dumps(bad))
    bad["custom_config"]["value"]["split"]["min_history"] = "5"
    with pytest.raises(ValueError, match=r"custom_config's SplitConfig: min_history must be an integer; got \"5\"$"):
        example_gen.settings(json.dumps(bad))
    # The record format is in the config (a new format misses TFX's cache), and only it.
    assert json.loads(config)["custom_config"]["value"]["record_format"] == convert.RECORD_FORMAT
    bad = json.loads(config)
    bad["custom_config"]["value"]["sample_rate"] = 0.5
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['sample_rate'\]"):
        example_gen.settings(json.dumps(bad))


def test_a_changed_csv_file_changes_the_drivers_fingerprint(real_data_dir, tmp_path):
    """TFX's FileBasedDriver keys the cache on what the split patterns match: the CSV files
    the converter reads, and no others."""
    data = tmp_path / "data"
    data.mkdir()
    for name in os.listdir(real_data_dir):
        shutil.copy(os.path.join(real_data_dir, name), data)
    input_config = proto_utils.json_to_proto(
        example_gen.KaggleExampleGen(input_base=str(data)).exec_properties[keys.INPUT_CONFIG_KEY],
        example_gen_pb2.Input(),
    )

    def fingerprint() -> str:
        return example_gen_utils.calculate_splits_fingerprint_span_and_version(str(data), input_config.splits)[0]

    before = fingerprint()
    assert fingerprint() == before
    with open(data / kaggle.ANIMELIST_CSV, "a") as f:
        f.write("1,1,0,6,0\n")
    after = fingerprint()
    assert after != before
    (data / "notes.txt").write_text("not an input")
    with open(data / kaggle.RATING_COMPLETE_CSV, "a") as f:
        f.write("1,1,5\n")
    assert fingerprint() == after, "only the converter's inputs count"


def test_data_errors_are_raised_as_they_are(real_data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(os.path.join(real_data_dir, kaggle.ANIME_CSV), data)
    with open(os.path.join(real_data_dir, kaggle.ANIMELIST_CSV), "rb") as f:
        (data / kaggle.ANIMELIST_CSV).write_bytes(f.readline())
    component = example_gen.KaggleExampleGen(input_base=str(data))
    with pytest.raises(kaggle.DataError, match="animelist.csv: no rows after the header line"):
        _run_executor(str(data), str(tmp_path / "out"), component)


def test_rows_in_any_order_are_regrouped_on_a_remote_filesystem(ram_kaggle_dir, real_data_dir, tmp_path, monkeypatch):
    """The regrouping pass (spill to user buckets, label each bucket) through the remote
    file calls: the shuffled file on ram:// gives the local grouped file's splits."""
    with open(os.path.join(real_data_dir, kaggle.ANIMELIST_CSV), "rb") as f:
        header, *lines = f.readlines()
    shuffled = [lines[i] for i in np.random.default_rng(7).permutation(len(lines))]
    # Removed first: TensorFlow's ram:// filesystem appends to a file opened again for writing.
    tf.io.gfile.remove(f"{ram_kaggle_dir}/{kaggle.ANIMELIST_CSV}")
    with tf.io.gfile.GFile(f"{ram_kaggle_dir}/{kaggle.ANIMELIST_CSV}", "wb") as f:
        f.write(b"".join([header] + shuffled))
    monkeypatch.setattr(convert, "RANGE_BYTES", 200_000)  # several ranges, as on many workers
    split_dirs = {name: f"ram://out/{name}" for name in features.SPLITS}
    messages: list = []
    report = convert.write_examples(ram_kaggle_dir, split_dirs, "ram://out/spill", progress=messages.append)
    assert report["regrouped"] and report["ranges"] > 2
    assert any("regrouping" in m for m in messages)
    assert not tf.io.gfile.exists("ram://out/spill")
    reference = convert.convert_kaggle(real_data_dir, str(tmp_path / "local"), progress=lambda _: None)
    assert report["interactions"] == reference["interactions"]

    def pairs(folder: str) -> list:
        return sorted(
            (
                e.features.feature[features.USER_ID].int64_list.value[0],
                e.features.feature[features.ANIME_ID].int64_list.value[0],
            )
            for e in _records(folder)
        )

    for split in (features.TRAIN_SPLIT, features.EVAL_SPLIT):
        assert pairs(split_dirs[split]) == pairs(str(tmp_path / "local" / split)), split


def test_the_evaluator_tunes_ease_on_the_trainers_validation_carve(real_data_dir, tmp_path, monkeypatch):
    """The Evaluator reads the carve from the TrainingConfig the model ships and holds out
    exactly the rows interactions.validation_rows holds out at that percent."""
    from animerec.components.retrieval_evaluator import executor

    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    component = example_gen.KaggleExampleGen(input_base=real_data_dir)
    examples = _run_executor(real_data_dir, str(tmp_path / "examples"), component)
    train = executor._read_split(examples, features.TRAIN_SPLIT)
    liked = (train[features.LIKED] == 1) & (train[features.USER_ID] != features.NO_USER)
    model_dir = tmp_path / "model"
    (model_dir / "assets.extra").mkdir(parents=True)
    held = {}
    for percent in (10, 40):
        (model_dir / features.TRAINING_CONFIG_FILE).write_text(json.dumps({"validation_percent": percent, "epochs": 1}))
        carve = executor.trained_validation_percent(str(model_dir))
        _, validation, _ = executor.load_tasks(examples, validation_percent=carve)
        held[percent] = sum(len(t) for t in validation.truth)
        expected = interactions.validation_rows(
            train[features.USER_ID][liked], train[features.ANIME_ID][liked], percent
        )
        assert held[percent] == expected.sum() > 0
    assert held[40] > 2 * held[10]

"""Our ImportExampleGen executor: each split's files copied in input order (no reshuffle), gzip-compressed."""

import glob
import os
import sys

import tensorflow as tf
from tfx.dsl.components.base import base_beam_executor
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_artifacts
from tfx.types import standard_component_specs as keys
from tfx.utils import proto_utils

from animerec.components.example_gen import InOrderExecutor


def _example(user: int, anime: int) -> bytes:
    feature = {
        "user_id": tf.train.Feature(int64_list=tf.train.Int64List(value=[user])),
        "anime_id": tf.train.Feature(int64_list=tf.train.Int64List(value=[anime])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def test_splits_are_copied_record_for_record_in_order(tmp_path, monkeypatch):
    # TFX's Beam executors parse sys.argv with absl flags: not pytest's arguments.
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    records = {"train": [_example(u, u * 7 % 101) for u in range(500)], "eval": [_example(u, 3) for u in range(40)]}
    for split, split_records in records.items():
        os.makedirs(tmp_path / "in" / split)
        # Two files a split, one plain and one already compressed: both come out as GZIP TFRecords.
        half = len(split_records) // 2
        for name, options, part in (
            ("part-0.tfrecord", None, split_records[:half]),
            ("part-1.gz", "GZIP", split_records[half:]),
        ):
            with tf.io.TFRecordWriter(str(tmp_path / "in" / split / name), options=options) as writer:
                for record in part:
                    writer.write(record)
    examples = standard_artifacts.Examples()
    examples.uri = str(tmp_path / "out")
    input_config = example_gen_pb2.Input(
        splits=[example_gen_pb2.Input.Split(name=split, pattern=f"{split}/*") for split in records]
    )
    # One in-process worker: TFX's executor, which reshuffles, would lose the order.
    context = base_beam_executor.BaseBeamExecutor.Context(
        beam_pipeline_args=["--runner=DirectRunner", "--direct_running_mode=in_memory", "--direct_num_workers=1"]
    )
    executor = InOrderExecutor(context)
    executor.Do(
        {},
        {keys.EXAMPLES_KEY: [examples]},
        {
            keys.INPUT_BASE_KEY: str(tmp_path / "in"),
            keys.INPUT_CONFIG_KEY: proto_utils.proto_to_json(input_config),
            keys.OUTPUT_CONFIG_KEY: proto_utils.proto_to_json(example_gen_pb2.Output()),
            keys.OUTPUT_DATA_FORMAT_KEY: example_gen_pb2.FORMAT_TF_EXAMPLE,
        },
    )
    assert artifact_utils.decode_split_names(examples.split_names) == ["train", "eval"]
    assert examples.get_string_custom_property("payload_format") == "FORMAT_TF_EXAMPLE"
    for split, split_records in records.items():
        files = sorted(glob.glob(os.path.join(artifact_utils.get_split_uri([examples], split), "*")))
        assert [os.path.basename(name) for name in files] == [
            "data_tfrecord-00000-of-00002.gz",
            "data_tfrecord-00001-of-00002.gz",
        ]
        written = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]
        assert written == split_records, "every record, in order"

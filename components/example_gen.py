"""ImportExampleGen that copies its input in order, without TFX's reshuffle.

TFX's ExampleGen always sends every record through `beam.Reshuffle` before
writing (`write_split.py`, "TODO: make shuffle optional"). On the DirectRunner
that GroupByKey holds the whole dataset in memory (about 0.9 GB per million rows
here), which rules out the full 109M rows on one machine. Our converter already
writes the records in one global random order (animerec.data.convert), so this
executor reads and writes each split in one fused, streaming stage. The
component is TFX's own ImportExampleGen otherwise: same spec, driver (spans,
fingerprints, caching) and output artifact.
"""

from __future__ import annotations

import os

import apache_beam as beam
from tfx import v1 as tfx
from tfx.components.example_gen import utils, write_split
from tfx.components.example_gen.import_example_gen import executor as import_executor
from tfx.components.util import examples_utils
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils
from tfx.types import standard_component_specs as keys
from tfx.utils import proto_utils

# The file name TFX's ExampleGen writes (write_split.DEFAULT_FILE_NAME, deprecated there).
FILE_NAME = "data_tfrecord"


class InOrderExecutor(import_executor.Executor):
    """ImportExampleGen's executor with the records written in input order."""

    def Do(self, input_dict, output_dict, exec_properties) -> None:  # noqa: N802 - TFX API
        payload_format = exec_properties.get(keys.OUTPUT_DATA_FORMAT_KEY)
        if payload_format not in (None, example_gen_pb2.FORMAT_TF_EXAMPLE):
            raise ValueError(
                f"ImportExampleGen ({__name__}) writes tf.Example TFRecords only; "
                f"got payload format {example_gen_pb2.PayloadFormat.Name(payload_format)}"
            )
        input_config = proto_utils.json_to_proto(exec_properties[keys.INPUT_CONFIG_KEY], example_gen_pb2.Input())
        output_config = proto_utils.json_to_proto(exec_properties[keys.OUTPUT_CONFIG_KEY], example_gen_pb2.Output())
        examples = artifact_utils.get_single_instance(output_dict[keys.EXAMPLES_KEY])
        examples.split_names = artifact_utils.encode_split_names(
            utils.generate_output_split_names(input_config, output_config)
        )
        with self._make_beam_pipeline() as pipeline:
            for split, records in self.GenerateExamplesByBeam(pipeline, exec_properties).items():
                _ = (
                    records
                    | f"Serialize[{split}]" >> beam.ParDo(write_split.MaybeSerialize())
                    | f"Write[{split}]"
                    >> beam.io.WriteToTFRecord(
                        os.path.join(artifact_utils.get_split_uri([examples], split), FILE_NAME),
                        file_name_suffix=".gz",
                    )
                )
        examples_utils.set_payload_format(examples, example_gen_pb2.FORMAT_TF_EXAMPLE)


class ImportExampleGen(tfx.components.ImportExampleGen):
    """tfx.components.ImportExampleGen run by InOrderExecutor (same node id and outputs)."""

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(InOrderExecutor)

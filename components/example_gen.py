"""ImportExampleGen that copies its input files as they are, without TFX's reshuffle.

TFX's ExampleGen always sends every record through `beam.Reshuffle` before
writing (`write_split.py`, "TODO: make shuffle optional"). On the DirectRunner
that GroupByKey holds the whole dataset in memory (about 0.9 GB per million rows
here), which rules out the full 109M rows on one machine. Our converter already
writes the records in one global random order (animerec.data.convert), so this
executor copies each split's files into the artifact byte for byte, gzip-compressed
as ExampleGen's output is (a GZIP TFRecord file is the gzip of the plain one): no
record is parsed or re-encoded, and memory stays at a copy buffer. Through
tf.io.gfile, so `gs://` paths work. The component is TFX's own ImportExampleGen
otherwise: same spec, driver (spans, fingerprints, caching) and output artifact.
"""

from __future__ import annotations

import concurrent.futures
import gzip
import os
import shutil

import tensorflow as tf
from tfx import v1 as tfx
from tfx.components.example_gen import utils
from tfx.components.example_gen.import_example_gen import executor as import_executor
from tfx.components.util import examples_utils
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils
from tfx.types import standard_component_specs as keys
from tfx.utils import proto_utils

# The file name TFX's ExampleGen writes (write_split.DEFAULT_FILE_NAME, deprecated there).
FILE_NAME = "data_tfrecord"
# Fast compression: the files are read a few times and then kept; zlib's level 6 takes
# several times as long for a few percent less.
GZIP_LEVEL = 1


class InOrderExecutor(import_executor.Executor):
    """ImportExampleGen's executor copying each split's files in order (see the module doc)."""

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
        split_names = utils.generate_output_split_names(input_config, output_config)
        if len(split_names) != len(input_config.splits):
            raise ValueError(
                f"ImportExampleGen ({__name__}) copies input splits as they are; "
                f"the output config asks for splits {split_names} from {len(input_config.splits)} input split(s)"
            )
        examples.split_names = artifact_utils.encode_split_names(split_names)
        copies = []
        for split in input_config.splits:
            pattern = os.path.join(exec_properties[keys.INPUT_BASE_KEY], split.pattern)
            sources = sorted(tf.io.gfile.glob(pattern))
            if not sources:
                raise ValueError(f"ImportExampleGen: no file matches {pattern} (split {split.name})")
            target = artifact_utils.get_split_uri([examples], split.name)
            tf.io.gfile.makedirs(target)
            copies += [
                (source, os.path.join(target, f"{FILE_NAME}-{i:05d}-of-{len(sources):05d}.gz"))
                for i, source in enumerate(sources)
            ]
        # zlib releases the GIL: files are compressed side by side.
        with concurrent.futures.ThreadPoolExecutor(max(1, min(len(copies), os.cpu_count() or 1))) as pool:
            list(pool.map(lambda pair: copy_as_gzip(*pair), copies))
        examples_utils.set_payload_format(examples, example_gen_pb2.FORMAT_TF_EXAMPLE)


def copy_as_gzip(source: str, target: str, chunk_bytes: int = 8 << 20) -> None:
    """Copies a TFRecord file to a GZIP TFRecord file (a .gz source is copied as it is)."""
    if source.endswith(".gz"):
        tf.io.gfile.copy(source, target, overwrite=True)
        return
    with tf.io.gfile.GFile(source, "rb") as reader, tf.io.gfile.GFile(target, "wb") as out:
        with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=GZIP_LEVEL, mtime=0) as writer:
            shutil.copyfileobj(reader, writer, chunk_bytes)


class ImportExampleGen(tfx.components.ImportExampleGen):
    """tfx.components.ImportExampleGen run by InOrderExecutor (same node id and outputs)."""

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(InOrderExecutor)

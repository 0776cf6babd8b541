"""ExampleGen for the Kaggle CSV files: the pipeline starts at the raw data.

TFX's FileBasedExampleGen (its spec, its FileBasedDriver and its Examples artifact)
with an executor of our own, in TFX's custom-ExampleGen pattern:
- `input_base` is the folder of Kaggle CSV files, on any filesystem TensorFlow reads
  (local, `gs://`). Every split's input pattern is INPUT_PATTERN, which matches the
  three files the converter reads, so the driver's fingerprint (their sizes and
  modification times, to the second) keys TFX's cache: a changed file reruns ExampleGen
  and everything after it.
- The executor runs animerec.data.convert.write_examples on the component's Beam
  pipeline: it validates the files with the Kaggle readers (a DataError names the
  file, line and field), labels the interactions and writes the train, eval and catalog
  splits into the artifact as GZIP TFRecords, in one global random order with memory
  bounded by the spill buckets. The spill files go to a folder inside the artifact
  (SPILL_FOLDER, removed when done, and with the artifact when the execution fails):
  every Beam worker sees the pipeline root, while the executor's temporary folder is on
  the container's own disk under KFP. TFX's own executors send every record through
  `beam.Reshuffle` instead, which on the local runner holds the whole dataset in memory.
- The liked filter, the split and the converter's record format travel in
  `custom_config` (a JSON Struct, as TFX's custom ExampleGens carry their settings), so
  a change to any of them misses TFX's cache; `conversion_report.json` (rows read, set
  aside by reason, written per split) lands in the artifact beside the splits.
"""

from __future__ import annotations

import dataclasses
import os

from google.protobuf import json_format, struct_pb2
from tfx import v1 as tfx
from tfx.components.example_gen import component, write_split
from tfx.components.util import examples_utils
from tfx.dsl.components.base import base_beam_executor, executor_spec
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils
from tfx.types import standard_component_specs as keys
from tfx.utils import proto_utils

from animerec import features
from animerec.config import parse_config
from animerec.data import convert, interactions

# Every split reads (and the driver fingerprints) the files the converter reads:
# anime.csv, anime_with_synopsis.csv and animelist.csv.
INPUT_PATTERN = "anime*.csv"
SPILL_FOLDER = ".spill"


def custom_config(
    liked_filter: interactions.LikedFilter, split: interactions.SplitConfig
) -> example_gen_pb2.CustomConfig:
    """The converter's settings as ExampleGen's custom_config."""
    settings = struct_pb2.Struct()
    settings.update(
        {
            "liked_filter": dataclasses.asdict(liked_filter),
            "split": dataclasses.asdict(split),
            "record_format": convert.RECORD_FORMAT,
        }
    )
    config = example_gen_pb2.CustomConfig()
    config.custom_config.Pack(settings)
    return config


def settings(custom_config_json: str | None) -> tuple[interactions.LikedFilter, interactions.SplitConfig]:
    """The liked filter and split from custom_config's JSON (the defaults where it has none)."""
    if not custom_config_json:
        return interactions.LikedFilter(), interactions.SplitConfig()
    config = proto_utils.json_to_proto(custom_config_json, example_gen_pb2.CustomConfig())
    values = struct_pb2.Struct()
    if not config.custom_config.Unpack(values):
        raise ValueError(f"KaggleExampleGen: custom_config holds a {config.custom_config.TypeName()}, not a Struct")
    values = json_format.MessageToDict(values)
    values.pop("record_format", None)  # in the config for TFX's cache key only
    unknown = sorted(set(values) - {"liked_filter", "split"})
    if unknown:
        raise ValueError(f"KaggleExampleGen: custom_config has unknown setting(s) {unknown}")
    # Struct numbers are floats; the dataclasses' fields say which are integers.
    return (
        _from_dict(interactions.LikedFilter, values.get("liked_filter", {})),
        _from_dict(interactions.SplitConfig, values.get("split", {})),
    )


def _from_dict(cls, values: dict):
    """cls from a Struct's values, checked as every config of the package is
    (config.parse_config). Struct numbers are all floats: whole ones are read as ints."""
    values = {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in values.items()}
    return parse_config(cls, values, f"KaggleExampleGen: custom_config's {cls.__name__}")


class Executor(base_beam_executor.BaseBeamExecutor):
    """Converts the Kaggle CSV files under input_base into the Examples artifact (module doc)."""

    def Do(self, input_dict, output_dict, exec_properties) -> None:  # noqa: N802 - TFX API
        input_config = proto_utils.json_to_proto(exec_properties[keys.INPUT_CONFIG_KEY], example_gen_pb2.Input())
        split_names = [split.name for split in input_config.splits]
        if sorted(split_names) != sorted(features.SPLITS):
            raise ValueError(
                f"KaggleExampleGen writes the splits {list(features.SPLITS)}; the input config names {split_names}"
            )
        examples = artifact_utils.get_single_instance(output_dict[keys.EXAMPLES_KEY])
        examples.split_names = artifact_utils.encode_split_names(list(features.SPLITS))
        liked_filter, split = settings(exec_properties.get(keys.CUSTOM_CONFIG_KEY))
        report = convert.write_examples(
            exec_properties[keys.INPUT_BASE_KEY],
            {name: artifact_utils.get_split_uri([examples], name) for name in features.SPLITS},
            os.path.join(examples.uri, SPILL_FOLDER),
            liked_filter,
            split,
            make_pipeline=self._make_beam_pipeline,
            compressed=True,
        )
        convert.write_report(examples.uri, report)
        examples_utils.set_payload_format(examples, example_gen_pb2.FORMAT_TF_EXAMPLE)
        examples_utils.set_file_format(examples, write_split.to_file_format_str(example_gen_pb2.FORMAT_TFRECORDS_GZIP))


class KaggleExampleGen(component.FileBasedExampleGen):
    """FileBasedExampleGen over a folder of Kaggle CSV files, run by this module's Executor."""

    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(
        self,
        input_base: str,
        liked_filter: interactions.LikedFilter = interactions.LikedFilter(),
        split: interactions.SplitConfig = interactions.SplitConfig(),
    ):
        super().__init__(
            input_base=input_base,
            input_config=tfx.proto.Input(
                splits=[tfx.proto.Input.Split(name=name, pattern=INPUT_PATTERN) for name in features.SPLITS]
            ),
            custom_config=custom_config(liked_filter, split),
        )

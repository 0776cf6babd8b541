"""The one pipeline definition that every runner (local Beam, Kubeflow) compiles.

create_pipeline has no side effects: runners differ only in paths, the
metadata connection, beam_pipeline_args and the runner class.
"""

from __future__ import annotations

import dataclasses
import json
import os

from tfx import v1 as tfx

from animerec import features
from animerec.components.anomalies_gate import AnomaliesGate
from animerec.components.example_gen import KaggleExampleGen
from animerec.components.retrieval_evaluator.component import GateConfig, RetrievalEvaluator
from animerec.config import TrainingConfig
from animerec.data import interactions

SCHEMA_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "schema", "schema.pbtxt")
PREPROCESSING_FN = "animerec.preprocessing.preprocessing_fn"
RUN_FN = "animerec.trainer.run_fn"


def create_pipeline(
    pipeline_name: str,
    pipeline_root: str,
    data_root: str | tfx.dsl.experimental.RuntimeParameter,
    serving_dir: str,
    training: TrainingConfig | tfx.dsl.experimental.RuntimeParameter = TrainingConfig(),
    gate: GateConfig | tfx.dsl.experimental.RuntimeParameter = GateConfig(),
    train_steps: int | None = None,
    schema_file: str | None = SCHEMA_FILE,
    metadata_connection_config=None,
    beam_pipeline_args: list[str] | None = None,
    enable_cache: bool = True,
    liked_filter: interactions.LikedFilter = interactions.LikedFilter(),
    split: interactions.SplitConfig = interactions.SplitConfig(),
) -> tfx.dsl.Pipeline:
    """ExampleGen -> StatisticsGen -> schema -> ExampleValidator -> Transform -> Trainer -> Evaluator -> Pusher.

    data_root is the folder of Kaggle CSV files (local or `gs://`), which KaggleExampleGen
    validates, labels (liked_filter, split) and writes as the train, eval and catalog splits.
    data_root, training and gate may be RuntimeParameters (the Kubeflow runner makes them so). With schema_file=None the schema is inferred by
    SchemaGen (to regenerate schema/schema.pbtxt); otherwise it is imported.
    train_steps caps the optimizer steps (tests use a handful).
    """
    example_gen = KaggleExampleGen(input_base=data_root, liked_filter=liked_filter, split=split)
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    if schema_file:
        schema_gen = tfx.components.ImportSchemaGen(schema_file=schema_file)
    else:
        schema_gen = tfx.components.SchemaGen(statistics=statistics_gen.outputs["statistics"], infer_feature_shape=True)
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"]
    )
    anomalies_gate = AnomaliesGate(anomalies=example_validator.outputs["anomalies"])

    transform = tfx.components.Transform(
        examples=example_gen.outputs["examples"],
        schema=schema_gen.outputs["schema"],
        preprocessing_fn=PREPROCESSING_FN,
        # StatisticsGen already describes the raw data. Transform's own statistics would
        # make Beam hold every transformed record until the write finishes (the post-
        # transform statistics wait on it), so memory would grow with the dataset.
        disable_statistics=True,
        # With an analyzer cache to write, TFX analyzes each split on its own; without one it
        # flattens them into one joint analysis, whose rows Beam's local runner buffers: at
        # 20M rows Transform's process tree reached 11.4 GB (its main process 6.9 GB). On 4.5M
        # rows of that data, the Transform executor alone: 2.96 GB with the cache against
        # 4.65 GB without (main process 1.09 against 2.23 GB), 117 s against 119 s.
        disable_analyzer_cache=False,
        # Transform analyzes and exports its graph; the Trainer applies that graph to the raw
        # examples as it reads them (once). Materializing every split took half of Transform's
        # time (on the demo's data 78 s against 39 s for the analysis alone).
        materialize=False,
        # `transform` names what would be materialized: nothing while materialize is off.
        splits_config=tfx.proto.SplitsConfig(
            analyze=[features.TRAIN_SPLIT, features.CATALOG_SPLIT], transform=list(features.SPLITS)
        ),
    )
    # Transform waits for the gate, so a run with anomalous data stops before training.
    transform.add_upstream_node(anomalies_gate)

    trainer = tfx.components.Trainer(
        run_fn=RUN_FN,
        examples=example_gen.outputs["examples"],
        transform_graph=transform.outputs["transform_graph"],
        schema=schema_gen.outputs["schema"],
        # The catalog split travels with train: the Trainer embeds every candidate.
        train_args=tfx.proto.TrainArgs(splits=[features.TRAIN_SPLIT, features.CATALOG_SPLIT], num_steps=train_steps),
        eval_args=tfx.proto.EvalArgs(splits=[features.EVAL_SPLIT], num_steps=None),
        custom_config=training.to_json_dict() if isinstance(training, TrainingConfig) else training,
    )

    # Compared with the model Pusher serves from serving_dir (the last blessed one), which
    # the Evaluator reads itself: no Resolver, which open-source Kubeflow cannot run.
    evaluator = RetrievalEvaluator(
        examples=example_gen.outputs["examples"],
        model=trainer.outputs["model"],
        baseline_dir=serving_dir,
        gate_config=json.dumps(dataclasses.asdict(gate)) if isinstance(gate, GateConfig) else gate,
    )

    pusher = tfx.components.Pusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=serving_dir)
        ),
    )

    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=[
            example_gen,
            statistics_gen,
            schema_gen,
            example_validator,
            anomalies_gate,
            transform,
            trainer,
            evaluator,
            pusher,
        ],
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=beam_pipeline_args or [],
    )

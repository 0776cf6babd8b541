"""Compiles the same create_pipeline for Kubeflow Pipelines (KFP v2) with KubeflowV2DagRunner.

Only paths, the runner and Beam's arguments differ from the local run. The data
root and the training configuration are runtime parameters of the compiled
pipeline; the pipeline root is chosen per run by the KFP client (pipeline_root=).
"""

from __future__ import annotations

import json
import os

from animerec.components.retrieval_evaluator.metrics import GateConfig
from animerec.config import TrainingConfig
from animerec.pipeline.pipeline import create_pipeline

PIPELINE_NAME = "animerec"
DEFAULT_IMAGE = "animerec-pipeline:0.1.0"
# Where kubeflow/Dockerfile puts the repository inside the pipeline image.
IMAGE_SCHEMA_FILE = "/pipeline/schema/schema.pbtxt"
DATA_ROOT_PARAMETER = "data_root"
TRAINING_PARAMETER = "training_config"


def compile_pipeline(
    output_path: str,
    pipeline_root: str,
    data_root: str,
    serving_dir: str,
    image: str = DEFAULT_IMAGE,
    beam_pipeline_args: list[str] | None = None,
    training: TrainingConfig = TrainingConfig(),
    gate: GateConfig = GateConfig(),
    schema_file: str = IMAGE_SCHEMA_FILE,
) -> dict:
    """Writes the KFP v2 pipeline job (JSON) to output_path and returns it."""
    from tfx import v1 as tfx  # noqa: PLC0415 - heavy import

    data_root_parameter = tfx.dsl.experimental.RuntimeParameter(name=DATA_ROOT_PARAMETER, ptype=str, default=data_root)
    training_parameter = tfx.dsl.experimental.RuntimeParameter(
        name=TRAINING_PARAMETER, ptype=str, default=json.dumps(training.to_json_dict())
    )
    pipeline = create_pipeline(
        pipeline_name=PIPELINE_NAME,
        pipeline_root=pipeline_root,
        data_root=data_root_parameter,
        serving_dir=serving_dir,
        training=training_parameter,
        gate=gate,
        schema_file=schema_file,
        beam_pipeline_args=beam_pipeline_args or [],
    )
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        # Pipeline spec 2.1 (parameterType fields) is what KFP 2 backends and kfp loaders read.
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
            default_image=image, use_pipeline_spec_2_1=True
        ),
        output_dir=os.path.dirname(os.path.abspath(output_path)),
        output_filename=os.path.basename(output_path),
    )
    defaults = {DATA_ROOT_PARAMETER: data_root, TRAINING_PARAMETER: training_parameter.default}
    return runner.run(pipeline, parameter_values=defaults, write_out=True)

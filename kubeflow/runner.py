"""Compiles the same create_pipeline for Kubeflow Pipelines (KFP v2) with KubeflowV2DagRunner.

Only paths, the runner and Beam's arguments differ from the local run. The data
root and the training configuration are runtime parameters of the compiled
pipeline; the pipeline root is chosen per run by the KFP client (pipeline_root=).

Two package formats come out of one compilation, chosen by the output's extension:
- .yaml / .yml: the PipelineSpec, what kfp's compiler writes and what kfp.Client and
  the KFP API server load (upload_pipeline, create_run_from_pipeline_package). The
  runtime parameters' defaults are in the root component's inputDefinitions and the
  pipeline root in defaultPipelineRoot.
- .json: the PipelineJob (the PipelineSpec under pipelineSpec, the defaults in
  runtimeConfig), what KubeflowV2DagRunner writes; `kubeflow run-local` runs it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os

from animerec.config import TrainingConfig
from animerec.data import interactions
from animerec.evaluation import GateConfig
from animerec.features import PIPELINE_IMAGE, PIPELINE_NAME

# Where kubeflow/Dockerfile puts the repository inside the pipeline image.
IMAGE_SCHEMA_FILE = "/pipeline/schema/schema.pbtxt"
DATA_ROOT_PARAMETER = "data_root"
TRAINING_PARAMETER = "training_config"
# The blessing gate (animerec.evaluation.GateConfig as JSON): a promotion policy per run.
GATE_PARAMETER = "gate_config"
YAML_EXTENSIONS = (".yaml", ".yml")
JSON_EXTENSIONS = (".json",)


def package_format(output_path: str) -> str:
    """'yaml' (the PipelineSpec) or 'json' (the PipelineJob), from the file's extension."""
    lower = output_path.lower()
    if lower.endswith(YAML_EXTENSIONS):
        return "yaml"
    if lower.endswith(JSON_EXTENSIONS):
        return "json"
    raise ValueError(
        f"{output_path}: the output must end with .yaml or .yml (the pipeline spec that kfp.Client uploads) "
        "or .json (the pipeline job that `kubeflow run-local` runs)"
    )


def pipeline_spec_from_job(job: dict) -> dict:
    """The job's PipelineSpec with its runtime defaults in it, as kfp's compiler writes one.

    KubeflowV2DagRunner keeps the runtime parameters' defaults and the pipeline root in
    the job's runtimeConfig, which a PipelineSpec package does not carry: each default
    becomes the root input's defaultValue (optional, as kfp marks inputs with defaults)
    and the pipeline root becomes defaultPipelineRoot.
    """
    spec = copy.deepcopy(job["pipelineSpec"])
    runtime = job.get("runtimeConfig", {})
    parameters = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
    for name, value in runtime.get("parameterValues", {}).items():
        if name not in parameters:
            raise ValueError(f"the job's runtimeConfig sets {name!r}, which is not an input of the pipeline")
        parameters[name]["defaultValue"] = value
        parameters[name]["isOptional"] = True
    if runtime.get("gcsOutputDirectory"):
        spec["defaultPipelineRoot"] = runtime["gcsOutputDirectory"]
    return spec


def _yaml_header(spec: dict) -> str:
    lines = ["# PIPELINE DEFINITION", f"# Name: {spec['pipelineInfo']['name']}", "# Inputs:"]
    for name, parameter in sorted(spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {}).items()):
        default = f" [Default: {json.dumps(parameter['defaultValue'])}]" if "defaultValue" in parameter else ""
        lines.append(f"#    {name}: {parameter.get('parameterType', 'STRING')}{default}")
    return "\n".join(lines) + "\n"


def write_package(job: dict, output_path: str) -> None:
    """Writes the job as a PipelineSpec YAML or a PipelineJob JSON, by output_path's extension."""
    import yaml
    from tfx.dsl.io import fileio  # heavy import; also writes gs:// paths

    kind = package_format(output_path)
    folder = os.path.dirname(output_path)
    if folder and not fileio.exists(folder):
        fileio.makedirs(folder)
    with fileio.open(output_path, "w") as fh:
        if kind == "yaml":
            spec = pipeline_spec_from_job(job)
            fh.write(_yaml_header(spec))
            fh.write(yaml.safe_dump(spec, sort_keys=True))
        else:
            fh.write(json.dumps(job, sort_keys=True))


def compile_pipeline(
    output_path: str,
    pipeline_root: str,
    data_root: str,
    serving_dir: str,
    image: str = PIPELINE_IMAGE,
    beam_pipeline_args: list[str] | None = None,
    training: TrainingConfig = TrainingConfig(),
    gate: GateConfig = GateConfig(),
    schema_file: str = IMAGE_SCHEMA_FILE,
    liked_filter: interactions.LikedFilter = interactions.LikedFilter(),
    split: interactions.SplitConfig = interactions.SplitConfig(),
) -> dict:
    """Writes the pipeline to output_path (PipelineSpec YAML or PipelineJob JSON) and returns the job."""
    package_format(output_path)  # a bad extension fails before the compilation
    from tfx import v1 as tfx  # heavy import

    from animerec.pipeline.pipeline import create_pipeline  # imports TensorFlow

    data_root_parameter = tfx.dsl.experimental.RuntimeParameter(name=DATA_ROOT_PARAMETER, ptype=str, default=data_root)
    training_parameter = tfx.dsl.experimental.RuntimeParameter(
        name=TRAINING_PARAMETER, ptype=str, default=json.dumps(training.to_json_dict())
    )
    gate_parameter = tfx.dsl.experimental.RuntimeParameter(
        name=GATE_PARAMETER, ptype=str, default=json.dumps(dataclasses.asdict(gate))
    )
    pipeline = create_pipeline(
        pipeline_name=PIPELINE_NAME,
        pipeline_root=pipeline_root,
        data_root=data_root_parameter,
        serving_dir=serving_dir,
        training=training_parameter,
        gate=gate_parameter,
        schema_file=schema_file,
        beam_pipeline_args=beam_pipeline_args or [],
        liked_filter=liked_filter,
        split=split,
    )
    runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
        # Pipeline spec 2.1 (parameterType fields) is what KFP 2 backends and kfp loaders read.
        config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
            default_image=image, use_pipeline_spec_2_1=True
        ),
        output_dir=os.path.dirname(os.path.abspath(output_path)),
        output_filename=os.path.basename(output_path),
    )
    defaults = {
        DATA_ROOT_PARAMETER: data_root,
        TRAINING_PARAMETER: training_parameter.default,
        GATE_PARAMETER: gate_parameter.default,
    }
    job = runner.run(pipeline, parameter_values=defaults, write_out=False)
    write_package(job, output_path)
    return job

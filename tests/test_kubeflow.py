"""The KFP v2 pipeline compiled from the same create_pipeline is valid and wired as intended."""

import dataclasses
import json
import os

import pytest
import yaml
from google.protobuf import json_format
from kfp import components
from kfp.client import client as kfp_client
from kfp.pipeline_spec import pipeline_spec_pb2

from animerec import cli
from animerec.components import example_gen
from animerec.config import TrainingConfig
from animerec.data import interactions
from animerec.evaluation import GateConfig
from animerec.kubeflow import runner
from animerec.pipeline.pipeline import SCHEMA_FILE

IMAGE = "registry.example/animerec-pipeline:test"
BEAM_ARGS = ["--runner=DataflowRunner", "--project=demo-project", "--region=europe-west1"]
COMPONENTS = {
    "KaggleExampleGen",
    "StatisticsGen",
    "ImportSchemaGen",
    "ExampleValidator",
    "AnomaliesGate",
    "Transform",
    "Trainer",
    "RetrievalEvaluator",
    "Pusher",
}


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("kfp") / "animerec.json")
    runner.compile_pipeline(
        path,
        pipeline_root="gs://b/root",
        data_root="gs://b/data",
        serving_dir="gs://b/serving",
        image=IMAGE,
        beam_pipeline_args=BEAM_ARGS,
        training=TrainingConfig(epochs=3),
        gate=GateConfig(min_value=0.2),
        liked_filter=interactions.LikedFilter(min_score=8),
    )
    with open(path) as fh:
        return json.load(fh)


@pytest.fixture(scope="module")
def spec_package(tmp_path_factory):
    """The same pipeline as `job`, compiled by the CLI into the pipeline spec YAML."""
    path = str(tmp_path_factory.mktemp("kfp") / "pipeline.yaml")
    argv = ["kubeflow", "compile", "--output", path, "--image", IMAGE, "--pipeline-root", "gs://b/root"]
    argv += ["--data-root", "gs://b/data", "--serving-dir", "gs://b/serving", "--epochs", "3", "--min-score", "8"]
    argv += [f"--beam-arg={arg}" for arg in BEAM_ARGS]
    assert cli.main(argv) == 0
    return path


def test_the_yaml_package_is_what_kfp_client_loads(spec_package, job):
    # The loader behind kfp.Client.upload_pipeline and create_run_from_pipeline_package (strict proto parsing).
    spec = kfp_client._extract_pipeline_yaml(spec_package).pipeline_spec
    assert spec.pipeline_info.name == runner.PIPELINE_NAME
    assert spec.schema_version == "2.1.0"  # the only version the KFP 2 API server accepts
    # The runtime parameters keep their compiled defaults, and the pipeline root its default.
    parameters = spec.root.input_definitions.parameters
    assert parameters[runner.DATA_ROOT_PARAMETER].default_value.string_value == "gs://b/data"
    assert json.loads(parameters[runner.TRAINING_PARAMETER].default_value.string_value)["epochs"] == 3
    assert all(
        p.is_optional and p.parameter_type == pipeline_spec_pb2.ParameterType.STRING for p in parameters.values()
    )
    assert spec.default_pipeline_root == "gs://b/root"
    # Otherwise it is the job's spec, unchanged.
    for parameter in parameters.values():
        parameter.ClearField("default_value")
        parameter.ClearField("is_optional")
    spec.ClearField("default_pipeline_root")
    assert spec == json_format.ParseDict(job["pipelineSpec"], pipeline_spec_pb2.PipelineSpec())
    # kfp's component loader sees the defaults too.
    inputs = components.load_component_from_file(spec_package).component_spec.inputs
    assert inputs[runner.DATA_ROOT_PARAMETER].default == "gs://b/data"


def test_a_local_job_compiles_its_local_paths_absolute(tmp_path, monkeypatch):
    """run-local may run from another folder than compile did: relative paths are made
    absolute in the .json job; remote ones are left alone."""
    monkeypatch.chdir(tmp_path)
    argv = ["kubeflow", "compile", "--output", "job.json", "--pipeline-root", "gs://b/root"]
    assert cli.main(argv + ["--data-root", "data", "--serving-dir", "out/serving"]) == 0
    with open(tmp_path / "job.json") as fh:
        text = fh.read()
    serving, data = str(tmp_path / "out" / "serving"), str(tmp_path / "data")
    assert text.count(serving) >= 1 and text.count("out/serving") == text.count(serving)
    assert f'"{data}"' in text and '"data"' not in text and '"gs://b/root"' in text


def test_the_output_extension_chooses_the_format(tmp_path, capsys):
    assert (
        cli.main(["kubeflow", "compile", "--output", str(tmp_path / "pipeline.txt"), "--serving-dir", "gs://b/s"]) == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("animerec: error: ") and ".yaml or .yml" in err and ".json" in err
    assert err.count("\n") == 1
    # The serving dir is compiled in (a run cannot change it): no placeholder default that
    # would fail only at Pusher, after training.
    with pytest.raises(SystemExit) as missing:
        cli.main(["kubeflow", "compile", "--output", str(tmp_path / "pipeline.yaml")])
    assert missing.value.code == 2 and "--serving-dir" in capsys.readouterr().err
    assert cli.main(["kubeflow", "run-local", "--job", str(tmp_path / "p.yaml"), "--root", str(tmp_path)]) == 2
    assert "compile one with `--output NAME.json`" in capsys.readouterr().err


def test_kfp_loaders_accept_it(job):
    json_format.ParseDict(job, pipeline_spec_pb2.PipelineJob())  # strict: unknown fields fail
    component = components.load_component_from_text(yaml.safe_dump(job["pipelineSpec"]))
    assert component.name == runner.PIPELINE_NAME
    assert set(component.component_spec.inputs) == {
        runner.DATA_ROOT_PARAMETER,
        runner.TRAINING_PARAMETER,
        runner.GATE_PARAMETER,
    }


def test_every_component_is_a_task_with_the_image_and_entrypoint(job):
    spec = job["pipelineSpec"]
    tasks = spec["root"]["dag"]["tasks"]
    assert COMPONENTS <= set(tasks)
    executors = spec["deploymentSpec"]["executors"]
    for name in COMPONENTS:
        container = executors[f"{name}_executor"]["container"]
        assert container["image"] == IMAGE, name
        assert container["command"] == [
            "python",
            "-m",
            "tfx.orchestration.kubeflow.v2.container.kubeflow_v2_run_executor",
        ], name
    # Every task is a container: open-source KFP's Argo compiler refuses resolver executors
    # ("resolver executors not implemented"), so the Evaluator finds the served model itself,
    # under the Pusher's destination.
    assert all(set(executor) & {"container", "importer"} for executor in executors.values()), executors.keys()
    evaluator_args = executors["RetrievalEvaluator_executor"]["container"]["args"]
    assert "animerec.components.retrieval_evaluator.executor.Executor" in evaluator_args
    evaluator = tasks["RetrievalEvaluator"]["inputs"]["parameters"]
    pusher = json.loads(tasks["Pusher"]["inputs"]["parameters"]["push_destination"]["runtimeValue"]["constant"])
    assert evaluator["baseline_dir"]["runtimeValue"]["constant"] == pusher["filesystem"]["base_directory"]
    # ExampleGen runs our Kaggle executor (from the raw CSV files), in the container too,
    # after TFX's FileBasedExampleGen driver (compiled as the pre-cache-check hook), which
    # fingerprints the input files.
    example_gen = executors["KaggleExampleGen_executor"]["container"]
    assert "animerec.components.example_gen.Executor" in " ".join(example_gen["args"])
    driver = example_gen["lifecycle"]["preCacheCheck"]
    assert "tfx.orchestration.kubeflow.v2.file_based_example_gen.driver" in " ".join(driver["command"] + driver["args"])
    # Beam-based components get the distributed runner's arguments.
    for name in ("KaggleExampleGen", "Transform", "StatisticsGen"):
        args = executors[f"{name}_executor"]["container"]["args"]
        assert all(arg in args for arg in BEAM_ARGS), name


def test_dependencies_follow_the_pipeline(job):
    tasks = job["pipelineSpec"]["root"]["dag"]["tasks"]
    depends = {name: set(task.get("dependentTasks", [])) for name, task in tasks.items()}
    assert {"KaggleExampleGen", "ImportSchemaGen", "AnomaliesGate"} <= depends["Transform"]
    assert "ExampleValidator" in depends["AnomaliesGate"]
    assert {"Transform", "ImportSchemaGen"} <= depends["Trainer"]
    assert {"Trainer", "KaggleExampleGen"} <= depends["RetrievalEvaluator"]
    assert {"Trainer", "RetrievalEvaluator"} <= depends["Pusher"]


def test_runtime_parameters_are_wired(job):
    tasks = job["pipelineSpec"]["root"]["dag"]["tasks"]
    assert tasks["KaggleExampleGen"]["inputs"]["parameters"]["input_base"] == {
        "componentInputParameter": runner.DATA_ROOT_PARAMETER
    }
    assert tasks["Trainer"]["inputs"]["parameters"]["custom_config"] == {
        "componentInputParameter": runner.TRAINING_PARAMETER
    }
    # The blessing gate is a run-time parameter too: a promotion policy per run.
    assert tasks["RetrievalEvaluator"]["inputs"]["parameters"]["gate_config"] == {
        "componentInputParameter": runner.GATE_PARAMETER
    }
    runtime = job["runtimeConfig"]
    assert runtime["gcsOutputDirectory"] == "gs://b/root"
    assert runtime["parameterValues"][runner.DATA_ROOT_PARAMETER] == "gs://b/data"
    assert json.loads(runtime["parameterValues"][runner.TRAINING_PARAMETER])["epochs"] == 3
    assert json.loads(runtime["parameterValues"][runner.GATE_PARAMETER]) == dataclasses.asdict(
        GateConfig(min_value=0.2)
    )
    # The liked filter compiled in (`compile --min-score 8`), in ExampleGen's custom_config.
    custom_config = tasks["KaggleExampleGen"]["inputs"]["parameters"]["custom_config"]["runtimeValue"]["constant"]
    assert example_gen.settings(custom_config)[0] == interactions.LikedFilter(min_score=8)
    pusher = json.loads(tasks["Pusher"]["inputs"]["parameters"]["push_destination"]["runtimeValue"]["constant"])
    assert pusher["filesystem"]["base_directory"] == "gs://b/serving"
    schema = tasks["ImportSchemaGen"]["inputs"]["parameters"]["schema_file"]["runtimeValue"]["constant"]
    assert schema == runner.IMAGE_SCHEMA_FILE


def test_the_compiled_schema_path_is_where_the_image_puts_the_schema():
    """kubeflow/Dockerfile's WORKDIR and its COPY of schema/ decide where the schema is
    inside the image; the compiled ImportSchemaGen reads runner.IMAGE_SCHEMA_FILE."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "kubeflow", "Dockerfile")) as fh:
        lines = [line.split() for line in fh if line.strip() and not line.startswith("#")]
    workdir = [words[1] for words in lines if words[0] == "WORKDIR"][-1]
    copied = [words[2] for words in lines if words[:2] == ["COPY", "schema"]]
    assert copied, "the Dockerfile copies schema/ into the image"
    image_schema = os.path.normpath(os.path.join(workdir, copied[0], os.path.basename(SCHEMA_FILE)))
    assert image_schema == runner.IMAGE_SCHEMA_FILE
    assert os.path.basename(os.path.dirname(SCHEMA_FILE)) == "schema"

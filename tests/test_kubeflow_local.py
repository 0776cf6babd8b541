"""The compiled KFP job's containers, run locally in dependency order as the KFP launcher would (minutes: e2e)."""

import json
import os

import pytest

from animerec.config import TrainingConfig
from animerec.data import synth
from animerec.evaluation import GateConfig
from animerec.kubeflow import local_launcher, runner
from animerec.pipeline import artifacts, beam_args
from tests.test_e2e import assert_never_recommends_seen

pytestmark = pytest.mark.e2e
SCHEMA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "schema", "schema.pbtxt")


def test_compiled_task_commands_run_the_pipeline(tmp_path):
    data_dir = str(tmp_path / "data")
    synth.synthesize(data_dir, synth.SynthConfig(users=300, anime=200, seed=5), progress=lambda _: None)
    serving_dir = str(tmp_path / "serving")
    job_path = str(tmp_path / "animerec.json")
    runner.compile_pipeline(
        job_path,
        pipeline_root=str(tmp_path / "root"),
        data_root="/nowhere",  # the runtime parameter below replaces it
        serving_dir=serving_dir,
        schema_file=SCHEMA,
        gate=GateConfig(min_value=0.0, min_lift_over_popularity=-1.0, max_regression=1.0),
        # Tiny data: Beam in each container's own process, no worker start-ups.
        beam_pipeline_args=list(beam_args.IN_PROCESS),
    )
    training = json.dumps(TrainingConfig(epochs=1, batch_size=256).to_json_dict())

    def run(lines: list, training: str = training) -> dict:
        outputs = local_launcher.run_compiled_pipeline(
            job_path,
            str(tmp_path / "kfp"),
            parameters={runner.DATA_ROOT_PARAMETER: data_dir, runner.TRAINING_PARAMETER: training},
            env={"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"},
            progress=lines.append,
        )
        print("\n".join(lines))
        return outputs

    first_lines: list = []
    outputs = run(first_lines)
    # Every container ran, from the raw CSV files; the runtime parameters reached ExampleGen
    # and the Trainer.
    assert json.loads(outputs["KaggleExampleGen"]["examples"][0]["metadata"]["split_names"]) == [
        "train",
        "eval",
        "catalog",
    ]
    with open(os.path.join(outputs["Trainer"]["model_run"][0]["uri"], artifacts.HISTORY_FILE)) as fh:
        assert json.load(fh)["config"]["batch_size"] == 256
    # A first run: no model is served yet, nothing to compare with.
    blessing = outputs["RetrievalEvaluator"]["blessing"][0]["metadata"]
    # The blessing crossed from the Evaluator's container to the Pusher's through the executor output.
    assert blessing["blessed"] == 1 and "baseline_model" not in blessing
    versions = artifacts.complete_versions(serving_dir)
    assert len(versions) == 1
    assert_never_recommends_seen(os.path.join(serving_dir, str(versions[0])), data_dir)

    # A second run with another training seed: the Evaluator compares the new model with
    # the one the first run pushed, which it finds under the Pusher's destination, as on a
    # cluster. As KFP caches, the tasks whose inputs, parameters and code are unchanged
    # reuse the first run's outputs; the Trainer and what follows run.
    second_lines: list = []
    second = run(second_lines, json.dumps(TrainingConfig(epochs=1, batch_size=256, seed=1).to_json_dict()))
    for task in ("KaggleExampleGen", "ImportSchemaGen", "StatisticsGen", "ExampleValidator", "Transform"):
        assert second[task] == outputs[task], f"{task} was not reused from the first run"
        assert any(line.startswith(f"{task}: cached") for line in second_lines)
    first_model = outputs["Trainer"]["model"][0]["uri"]
    assert second["Trainer"]["model"][0]["uri"] != first_model, "the changed parameter trains a new model"
    second_blessing = second["RetrievalEvaluator"]["blessing"][0]["metadata"]
    assert second_blessing["baseline_model"] == os.path.join(serving_dir, str(versions[0]))
    with open(os.path.join(second["RetrievalEvaluator"]["evaluation"][0]["uri"], artifacts.METRICS_FILE)) as fh:
        assert "last_blessed" in json.load(fh)
    assert len(artifacts.complete_versions(serving_dir)) == 1 + second_blessing["blessed"]

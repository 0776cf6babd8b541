"""The compiled KFP job's containers, run locally in dependency order as the KFP launcher would (minutes: e2e)."""

import json
import os

import pytest

from animerec.config import TrainingConfig
from animerec.data import convert, synth
from animerec.evaluation import GateConfig
from animerec.kubeflow import local_launcher, runner
from animerec.serving import server
from tests.test_e2e import assert_never_recommends_seen

pytestmark = pytest.mark.e2e
SCHEMA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "schema", "schema.pbtxt")


def test_compiled_task_commands_run_the_pipeline(tmp_path):
    data_dir = str(tmp_path / "data")
    synth.synthesize(data_dir, synth.SynthConfig(users=300, anime=200, seed=5), progress=lambda _: None)
    examples = str(tmp_path / "examples_input")
    convert.convert_kaggle(data_dir, examples, progress=lambda _: None)
    serving_dir = str(tmp_path / "serving")
    job_path = str(tmp_path / "animerec.json")
    runner.compile_pipeline(
        job_path,
        pipeline_root=str(tmp_path / "root"),
        data_root="/nowhere",  # the runtime parameter below replaces it
        serving_dir=serving_dir,
        schema_file=SCHEMA,
        gate=GateConfig(min_value=0.0, min_lift_over_popularity=-1.0, max_regression=1.0),
    )
    training = json.dumps(TrainingConfig(epochs=1, batch_size=256).to_json_dict())
    lines = []
    outputs = local_launcher.run_compiled_pipeline(
        job_path,
        str(tmp_path / "kfp"),
        parameters={runner.DATA_ROOT_PARAMETER: examples, runner.TRAINING_PARAMETER: training},
        env={"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"},
        progress=lines.append,
    )
    print("\n".join(lines))
    # Every container ran; the runtime parameters reached ExampleGen and the Trainer.
    assert json.loads(outputs["ImportExampleGen"]["examples"][0]["metadata"]["split_names"]) == [
        "train",
        "eval",
        "catalog",
    ]
    with open(os.path.join(outputs["Trainer"]["model_run"][0]["uri"], "training_history.json")) as fh:
        assert json.load(fh)["config"]["batch_size"] == 256
    # The blessing crossed from the Evaluator's container to the Pusher's through the executor output.
    assert outputs["RetrievalEvaluator"]["blessing"][0]["metadata"]["blessed"] == 1
    versions = server.complete_versions(serving_dir)
    assert len(versions) == 1
    assert_never_recommends_seen(os.path.join(serving_dir, str(versions[0])), data_dir)

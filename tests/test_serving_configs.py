"""The TF Serving deployment files parse as TF Serving and Kubernetes read them, and agree with the code."""

import os

import yaml
from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from animerec.serving import server
from animerec.serving.batching import BatchingConfig

SERVING = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "serving")


def test_models_config_names_the_model_clients_ask_for():
    config = model_server_config_pb2.ModelServerConfig()
    with open(os.path.join(SERVING, "models.config")) as fh:
        text_format.Parse(fh.read(), config)
    (model,) = config.model_config_list.config
    assert model.name == server.DEFAULT_MODEL_NAME
    assert model.model_platform == "tensorflow"
    assert model.model_version_policy.latest.num_versions == 1


def test_batching_config_keeps_latency_low():
    config = BatchingConfig.read(os.path.join(SERVING, "batching.config"))
    assert config.batch_timeout_micros <= 5000, "a batch must not add more than a few ms of latency"


def test_kubernetes_manifest_wires_the_configs():
    with open(os.path.join(SERVING, "kubernetes.yaml")) as fh:
        deployment, service = yaml.safe_load_all(fh)
    assert deployment["kind"] == "Deployment" and service["kind"] == "Service"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].startswith("tensorflow/serving:")
    args = " ".join(container["args"])
    assert (
        "--model_config_file=/config/models.config" in args
        and "--batching_parameters_file=/config/batching.config" in args
    )
    assert {p["port"] for p in service["spec"]["ports"]} >= {server.DEFAULT_PORT}
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]

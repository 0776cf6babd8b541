"""Uploads a compiled pipeline (the PipelineSpec YAML) to a KFP v2 API server and starts a run, with kfp.Client.

The steps follow kfp 2.5's client against the v2beta1 REST API: a health check,
a pipeline lookup by name, then either an upload (a new pipeline and its first
version) or a new version of the pipeline that exists, the experiment (looked up
by name, created if absent) and a run of that version in it. The run's parameters
are typed by the package's own root inputs (parameterType), so a value the KFP
API server would refuse, or a parameter the pipeline does not have, fails here
first, before anything is uploaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import io
import json
import math
import os
import re
import tempfile

from animerec.config import TrainingConfig, parse_config
from animerec.evaluation import GateConfig
from animerec.kubeflow.runner import GATE_PARAMETER, TRAINING_PARAMETER, YAML_EXTENSIONS

DEFAULT_TIMEOUT_S = 60.0
# JSON parameters and the dataclass their component builds from them.
CONFIG_PARAMETERS = {TRAINING_PARAMETER: TrainingConfig, GATE_PARAMETER: GateConfig}


class SubmitError(Exception):
    """A one-line reason the package could not be submitted."""


@dataclasses.dataclass(frozen=True)
class Submission:
    pipeline_id: str
    pipeline_version_id: str
    experiment_id: str
    run_id: str
    run_url: str
    parameters: dict
    pipeline_root: str | None


def load_package(path: str) -> dict:
    """The PipelineSpec (as a dict) in a compiled package; the checks kfp.Client's loader makes."""
    import yaml
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    if not path.lower().endswith(YAML_EXTENSIONS):
        hint = (
            " (a .json package is the PipelineJob for `kubeflow run-local`; "
            "compile with `--output NAME.yaml` for a cluster)"
            if path.lower().endswith(".json")
            else ""
        )
        raise SubmitError(f"{path}: the package must be the pipeline spec YAML (.yaml or .yml){hint}")
    try:
        with open(path) as fh:
            documents = [doc for doc in yaml.safe_load_all(fh) if doc is not None]
    except OSError as error:
        raise SubmitError(f"{path}: cannot read the package: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise SubmitError(f"{path}: not YAML: {' '.join(str(error).split())}") from None
    if not documents or not isinstance(documents[0], dict):
        raise SubmitError(f"{path}: no pipeline spec in the package")
    spec = documents[0]
    if "pipelineSpec" in spec:
        raise SubmitError(f"{path}: this is a PipelineJob, not a PipelineSpec; compile with `--output NAME.yaml`")
    try:
        json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())  # strict, as kfp.Client parses it
    except json_format.ParseError as error:
        raise SubmitError(f"{path}: not a KFP pipeline spec: {' '.join(str(error).split())}") from None
    if not spec.get("pipelineInfo", {}).get("name") or "root" not in spec:
        raise SubmitError(f"{path}: not a KFP pipeline spec (no pipelineInfo.name or root component)")
    return spec


def root_parameters(spec: dict) -> dict[str, dict]:
    """The pipeline's runtime parameters: the root component's input parameters by name."""
    return spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})


# Pipeline spec 2.0's deprecated `type` field, for packages that have no parameterType.
_LEGACY_TYPES = {"INT": "NUMBER_INTEGER", "DOUBLE": "NUMBER_DOUBLE", "STRING": "STRING"}


def _parameter_type(definition: dict) -> str:
    return definition.get("parameterType") or _LEGACY_TYPES.get(definition.get("type", ""), "STRING")


def _typed_value(name: str, ptype: str, text: str):
    """text as the JSON value the KFP API server accepts for a parameter of type ptype."""

    def bad(expected: str) -> SubmitError:
        return SubmitError(f"--param {name}={text}: {name} is {ptype}; expected {expected}")

    if ptype == "STRING":
        return text
    if ptype == "NUMBER_INTEGER":
        try:
            return int(text)
        except ValueError:
            raise bad("an integer") from None
    if ptype == "NUMBER_DOUBLE":
        try:
            value = float(text)
        except ValueError:
            raise bad("a number") from None
        if not math.isfinite(value):
            raise bad("a finite number")
        return value
    if ptype == "BOOLEAN":
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise bad("true or false")
    if ptype in ("LIST", "STRUCT"):
        expected, kind = ("a JSON list", list) if ptype == "LIST" else ("a JSON object", dict)
        try:
            value = json.loads(text)
        except ValueError:
            raise bad(expected) from None
        if not isinstance(value, kind):
            raise bad(expected)
        return value
    raise SubmitError(f"--param {name}: parameters of type {ptype} cannot be set at submission")


def _check_config(name: str, text: str, config_class) -> None:
    """The components read these parameters with config.parse_config: what it refuses
    would fail a run after ExampleGen, or at its end, so it fails the submission."""
    try:
        parse_config(config_class, text, name)
    except ValueError as error:
        raise SubmitError(f"--param {error}") from None


def parse_parameters(spec: dict, items: list[str]) -> dict:
    """NAME=VALUE strings as the run's parameters, typed by the pipeline's root inputs."""
    definitions = root_parameters(spec)
    parameters: dict = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise SubmitError(f"--param {item!r}: expected NAME=VALUE")
        if name not in definitions:
            known = ", ".join(sorted(definitions)) or "none"
            raise SubmitError(f"--param {name}: the pipeline has no parameter {name!r} (its parameters: {known})")
        if name in parameters:
            raise SubmitError(f"--param {name}: given more than once")
        ptype = _parameter_type(definitions[name])
        parameters[name] = _typed_value(name, ptype, text)
        if name in CONFIG_PARAMETERS and ptype == "STRING":
            _check_config(name, text, CONFIG_PARAMETERS[name])
    return parameters


def _api_error_message(error) -> str:
    """The reason in an ApiException: the API server's JSON error body, or the HTTP reason."""
    body = getattr(error, "body", None)
    detail = ""
    if body:
        try:
            payload = json.loads(body)
            detail = payload.get("message") or payload.get("error_message") or payload.get("error") or ""
        except (ValueError, AttributeError):
            detail = body.decode(errors="replace") if isinstance(body, bytes) else str(body)
    status = f"HTTP {error.status}" if error.status else "no HTTP answer"
    reason = " ".join(str(detail or error.reason or "").split())
    return f"{status}: {reason}" if reason else status


def _client_class():
    import kfp  # kfp imports the Kubernetes client

    class Client(kfp.Client):
        """kfp.Client whose start-up health check asks once and raises, instead of 5 tries 5 s apart."""

        def get_kfp_healthz(self, sleep_duration: int = 5):
            return self._healthz_api.get_healthz()

    return Client


@contextlib.contextmanager
def _request_timeout(timeout_s: float):
    """Gives kfp.Client's HTTP requests a connect and read timeout: it sets none (urllib3 waits forever)."""
    from kfp_server_api import rest

    original = rest.RESTClientObject.request

    def request(self, *args, _request_timeout=None, **kwargs):
        return original(self, *args, _request_timeout=_request_timeout or (timeout_s, timeout_s), **kwargs)

    rest.RESTClientObject.request = request
    try:
        yield
    finally:
        rest.RESTClientObject.request = original


def without_caching(package: str, folder: str) -> str:
    """A copy of `package` in `folder` (same file name) whose tasks have caching off, as
    kfp.Client sets them for `enable_caching=False` on a package it sends with a run
    (client._override_caching_options). kfp 2.5 applies that option only to such a
    package, not to a run of an uploaded version, which is how `submit` starts runs."""
    import yaml

    with open(package) as fh:
        documents = [doc for doc in yaml.safe_load_all(fh) if doc is not None]
    for task in documents[0].get("root", {}).get("dag", {}).get("tasks", {}).values():
        task["cachingOptions"] = {"enableCache": False}
    copy = os.path.join(folder, os.path.basename(package))
    with open(copy, "w") as fh:
        yaml.safe_dump_all(documents, fh, sort_keys=False)
    return copy


def _find_pipeline(client, name: str, namespace: str | None) -> str | None:
    flt = json.dumps({"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]})
    pipelines = client.list_pipelines(filter=flt, namespace=namespace, page_size=2).pipelines or []
    if len(pipelines) > 1:
        raise SubmitError(f"the KFP API server has {len(pipelines)} pipelines named {name!r}")
    return pipelines[0].pipeline_id if pipelines else None


def _upload(client, package: str, name: str, version_name: str, namespace: str | None) -> tuple[str, str]:
    """(pipeline id, version id): a new pipeline with its first version, or a new version of `name`."""
    pipeline_id = _find_pipeline(client, name, namespace)
    if pipeline_id is None:
        pipeline = client.upload_pipeline(package, pipeline_name=name, namespace=namespace)
        # Uploading a pipeline creates its first version; the upload answers with the pipeline only.
        versions = client.list_pipeline_versions(pipeline.pipeline_id, page_size=1, sort_by="created_at desc")
        if not versions.pipeline_versions:
            raise SubmitError(f"the KFP API server lists no version of the pipeline {name!r} it just created")
        return pipeline.pipeline_id, versions.pipeline_versions[0].pipeline_version_id
    version = client.upload_pipeline_version(package, pipeline_version_name=version_name, pipeline_id=pipeline_id)
    return pipeline_id, version.pipeline_version_id


def _url(host: str) -> str:
    host = host.rstrip("/")
    return host if host.startswith(("http://", "https://")) else "https://" + host


def submit(
    host: str,
    package: str,
    params: list[str] | None = None,
    experiment: str = "Default",
    run_name: str | None = None,
    pipeline_name: str | None = None,
    version_name: str | None = None,
    pipeline_root: str | None = None,
    namespace: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    cache: bool = True,
    token: str | None = None,
    cookies: str | None = None,
) -> Submission:
    """Uploads package (or a new version of it) to the KFP API at host and runs it in
    experiment. cache=False uploads it with every task's caching off, so that every step
    runs (new data under the same data_root, say). `token` (sent as a bearer token) and
    `cookies` (a Cookie header, such as a multi-user Kubeflow's session cookie) reach the
    API server as kfp.Client's `existing_token` and `cookies` send them."""
    with tempfile.TemporaryDirectory() as folder:
        return _submit(
            host,
            package if cache else without_caching(package, folder),
            params,
            experiment,
            run_name,
            pipeline_name,
            version_name,
            pipeline_root,
            namespace,
            timeout_s,
            {"existing_token": token, "cookies": cookies},
        )


def _submit(
    host: str,
    package: str,
    params: list[str] | None,
    experiment: str,
    run_name: str | None,
    pipeline_name: str | None,
    version_name: str | None,
    pipeline_root: str | None,
    namespace: str | None,
    timeout_s: float,
    auth: dict,
) -> Submission:
    import kfp_server_api
    import urllib3

    spec = load_package(package)
    parameters = parse_parameters(spec, params or [])
    name = pipeline_name or spec["pipelineInfo"]["name"]
    # The compiled root goes with the run, so the run does not depend on whether the
    # server falls back to the spec's defaultPipelineRoot or to the cluster's default.
    pipeline_root = pipeline_root or spec.get("defaultPipelineRoot") or None
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H-%M-%S")
    host = _url(host)
    step = f"connecting to the KFP API server at {host}"
    try:
        # The client prints "... details: URL" lines of its own; the caller prints the result.
        with _request_timeout(timeout_s), contextlib.redirect_stdout(io.StringIO()):
            client = _client_class()(host=host, **auth)
            step = f"uploading {os.path.basename(package)} as the pipeline {name!r}"
            pipeline_id, version_id = _upload(client, package, name, version_name or f"{name} {stamp}", namespace)
            step = f"finding or creating the experiment {experiment!r}"
            experiment_id = client.create_experiment(name=experiment, namespace=namespace).experiment_id
            step = "creating the run"
            run = client.run_pipeline(
                experiment_id=experiment_id,
                job_name=run_name or f"{name} {stamp}",
                pipeline_id=pipeline_id,
                version_id=version_id,
                params=parameters,
                pipeline_root=pipeline_root,
            )
    except kfp_server_api.ApiException as error:
        raise SubmitError(f"{step}: {_api_error_message(error)}") from None
    except (urllib3.exceptions.HTTPError, OSError) as error:
        reason = str(getattr(error, "reason", None) or error)
        # urllib3 prefixes the reason with the connection's or the pool's repr.
        reason = re.sub(r"^(<[^>]*>|HTTPS?ConnectionPool\([^)]*\)):\s*", "", reason)
        raise SubmitError(f"{step}: cannot reach {host}: {' '.join(reason.split())}") from None
    except ValueError as error:  # kfp's own checks, e.g. two experiments with the name
        raise SubmitError(f"{step}: {' '.join(str(error).split())}") from None
    return Submission(
        pipeline_id=pipeline_id,
        pipeline_version_id=version_id,
        experiment_id=experiment_id,
        run_id=run.run_id,
        run_url=f"{host}/#/runs/details/{run.run_id}",
        parameters=parameters,
        pipeline_root=pipeline_root,
    )

"""`animerec kubeflow submit` against a stand-in KFP API server on 127.0.0.1.

The stand-in answers the KFP v2beta1 REST endpoints that kfp 2.5's Client calls
(kfp_server_api 2.0.5: healthz, pipelines list/upload/upload_version, pipeline
versions, experiments list/create, runs create) with the JSON the real API server
writes (proto field names), and it refuses what the real one refuses: a package
that is not a PipelineSpec of schema 2.1.0 (strict proto parsing), a duplicate
pipeline, version or experiment name, a run parameter the pipeline does not
declare, one of the wrong type, or a required one left unset.
"""

import dataclasses
import datetime
import email.parser
import email.policy
import json
import os
import socket
import subprocess
import sys
import threading
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import kfp
import kfp_server_api
import pytest
import yaml
from google.protobuf import json_format
from kfp import compiler, dsl
from kfp.pipeline_spec import pipeline_spec_pb2
from kfp_server_api import ApiException

from animerec import cli
from animerec.kubeflow import runner, submit

API = "/apis/v2beta1"
TRAINING = json.dumps({"epochs": 7, "batch_size": 2048})


class ApiError(Exception):
    def __init__(self, http_status: int, grpc_code: int, message: str, upload: bool = False):
        super().__init__(message)
        self.http_status, self.grpc_code, self.message, self.upload = http_status, grpc_code, message, upload


def _invalid(message: str, upload: bool = False) -> ApiError:
    return ApiError(400, 3, message, upload)


@dataclasses.dataclass
class Recorded:
    method: str
    path: str
    query: dict
    headers: dict
    body: bytes
    files: dict = dataclasses.field(default_factory=dict)

    @property
    def json(self):
        return json.loads(self.body)


def _is_pipeline_spec(document) -> bool:
    return isinstance(document, dict) and "pipelineInfo" in document and "root" in document


def _read_pipeline_file(filename: str, data: bytes) -> dict:
    """The PipelineSpec in an uploaded file, with the API server's checks (template.NewV2SpecTemplate)."""
    if not filename.lower().endswith((".yaml", ".yml", ".json")):
        raise _invalid("Unexpected pipeline file format. Support .zip, .tar.gz, .json or YAML.", upload=True)
    try:
        documents = [doc for doc in yaml.safe_load_all(data) if doc is not None]
    except yaml.YAMLError as error:
        raise _invalid(f"unable to decode yaml document: {error}", upload=True) from None
    specs = [doc for doc in documents if _is_pipeline_spec(doc)]
    if not specs:
        raise _invalid("Invalid input error: no pipeline spec is provided", upload=True)
    if len(specs) > 1:
        raise _invalid("Invalid input error: multiple pipeline specs provided", upload=True)
    return _check_spec(specs[0], upload=True)


def _check_spec(spec: dict, upload: bool = False) -> dict:
    try:
        json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())
    except json_format.ParseError as error:
        raise _invalid(f"invalid v2 pipeline spec: {error}", upload) from None
    if spec.get("schemaVersion") != "2.1.0":
        raise _invalid(
            f"KFP only supports schema version 2.1.0, but the pipeline spec has version {spec.get('schemaVersion')}",
            upload,
        )
    if not spec["pipelineInfo"].get("name"):
        raise _invalid("invalid v2 pipeline spec: name is empty", upload)
    return spec


_KINDS = {
    "NUMBER_DOUBLE": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "NUMBER_INTEGER": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "STRING": lambda v: isinstance(v, str),
    "BOOLEAN": lambda v: isinstance(v, bool),
    "LIST": lambda v: isinstance(v, list),
    "STRUCT": lambda v: isinstance(v, dict),
}


def _check_run_parameters(spec: dict, parameters: dict) -> None:
    """The API server's validatePipelineJobInputs: required, typed, and no extra parameters."""
    definitions = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    for name, definition in definitions.items():
        if name not in parameters:
            if not definition.get("isOptional") and "defaultValue" not in definition:
                raise _invalid(
                    f"parameter {name} is not optional, yet has neither default value nor user provided value"
                )
            continue
        ptype = definition.get("parameterType")
        if ptype not in _KINDS:
            raise _invalid(f"input parameter {name} has unspecified type")
        if not _KINDS[ptype](parameters[name]):
            raise _invalid(f"input parameter {name} requires type {ptype}, but the parameter value is not")
    extra = sorted(set(parameters) - set(definitions))
    if extra:
        raise _invalid(f"parameter(s) provided are not required by pipeline: {', '.join(extra)}")


def _filtered(items: list[dict], filter_json: str | None) -> list[dict]:
    if not filter_json:
        return items
    try:
        predicates = json.loads(filter_json).get("predicates", [])
    except ValueError:
        raise _invalid("Invalid filter") from None
    for predicate in predicates:
        if predicate.get("operation") not in (1, "EQUALS") or predicate.get("key") != "display_name":
            raise _invalid(f"unsupported predicate {predicate}")
        value = predicate.get("stringValue", predicate.get("string_value"))
        items = [item for item in items if item["display_name"] == value]
    return items


def _listing(key: str, items: list[dict]) -> dict:
    # protojson leaves out empty lists and zero counts.
    return {key: items, "total_size": len(items)} if items else {}


class FakeKfpApiServer:
    """An in-memory KFP API server (v2beta1 REST), recording each request it gets."""

    def __init__(self):
        self.requests: list[Recorded] = []
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, dict] = {}
        self.specs: dict[str, dict] = {}  # pipeline_version_id -> PipelineSpec
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self._clock = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802 - http.server API
                fake._handle(self, "GET")

            def do_POST(self):  # noqa: N802 - http.server API
                fake._handle(self, "POST")

            def do_DELETE(self):  # noqa: N802 - http.server API
                fake._handle(self, "DELETE")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def calls(self, method: str, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.path == API + path]

    def _now(self) -> str:
        self._clock += datetime.timedelta(seconds=1)
        return self._clock.strftime("%Y-%m-%dT%H:%M:%SZ")

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        url = urllib.parse.urlsplit(handler.path)
        query = {k: v[-1] for k, v in urllib.parse.parse_qs(url.query, keep_blank_values=True).items()}
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        record = Recorded(method, url.path, query, dict(handler.headers), body)
        if handler.headers.get_content_type() == "multipart/form-data":
            record.files = self._multipart(handler.headers["Content-Type"], body)
        with self._lock:
            self.requests.append(record)
            try:
                status, payload = 200, self._route(record)
            except ApiError as error:
                status = error.http_status
                if error.upload:  # the upload handlers' own error body
                    payload = {"error_message": error.message, "error_details": error.message}
                else:  # grpc-gateway's
                    payload = {"error": error.message, "code": error.grpc_code, "message": error.message, "details": []}
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    @staticmethod
    def _multipart(content_type: str, body: bytes) -> dict:
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
        )
        return {
            part.get_param("name", header="content-disposition"): (part.get_filename(), part.get_payload(decode=True))
            for part in message.iter_parts()
        }

    def _route(self, r: Recorded) -> dict:
        parts = r.path[len(API) :].strip("/").split("/") if r.path.startswith(API) else None
        if r.method == "GET" and parts == ["healthz"]:
            return {"multi_user": False}
        if r.method == "GET" and parts == ["pipelines"]:
            namespace = r.query.get("namespace", "")
            items = [p for p in self.pipelines.values() if p.get("namespace", "") == namespace]
            return _listing("pipelines", _filtered(items, r.query.get("filter")))
        if r.method == "POST" and parts == ["pipelines", "upload"]:
            return self._upload(r)
        if r.method == "POST" and parts == ["pipelines", "upload_version"]:
            return self._upload_version(r)
        if r.method == "GET" and parts and len(parts) == 3 and parts[0] == "pipelines" and parts[2] == "versions":
            if parts[1] not in self.pipelines:
                raise ApiError(404, 5, f"Pipeline {parts[1]} not found")
            items = [v for v in self.versions.values() if v["pipeline_id"] == parts[1]]
            items.sort(key=lambda v: v["created_at"], reverse=r.query.get("sort_by", "").endswith(" desc"))
            items = _filtered(items, r.query.get("filter"))[: int(r.query.get("page_size") or 10)]
            return _listing("pipeline_versions", items)
        if r.method == "GET" and parts == ["experiments"]:
            namespace = r.query.get("namespace", "")
            items = [e for e in self.experiments.values() if e.get("namespace", "") == namespace]
            return _listing("experiments", _filtered(items, r.query.get("filter")))
        if r.method == "POST" and parts == ["experiments"]:
            return self._create_experiment(r.json)
        if r.method == "POST" and parts == ["runs"]:
            return self._create_run(r.json)
        raise ApiError(404, 5, "Not Found")

    def _uploaded_file(self, r: Recorded) -> tuple[str, dict]:
        if "uploadfile" not in r.files:
            raise _invalid("Failed to read pipeline from file", upload=True)
        filename, data = r.files["uploadfile"]
        return filename, _read_pipeline_file(filename, data)

    def _upload(self, r: Recorded) -> dict:
        filename, spec = self._uploaded_file(r)
        name = r.query.get("name") or os.path.splitext(filename)[0]
        namespace = r.query.get("namespace", "")
        if any(p["display_name"] == name and p.get("namespace", "") == namespace for p in self.pipelines.values()):
            raise ApiError(409, 6, "Failed to create a pipeline and a pipeline version", upload=True)
        pipeline = {"pipeline_id": str(uuid.uuid4()), "display_name": name, "created_at": self._now()}
        if namespace:
            pipeline["namespace"] = namespace
        if r.query.get("description"):
            pipeline["description"] = r.query["description"]
        self.pipelines[pipeline["pipeline_id"]] = pipeline
        self._add_version(pipeline["pipeline_id"], name, spec)
        return pipeline

    def _upload_version(self, r: Recorded) -> dict:
        filename, spec = self._uploaded_file(r)
        pipeline_id = r.query.get("pipelineid", "")
        if pipeline_id not in self.pipelines:
            raise _invalid("Failed to create a pipeline version", upload=True)
        name = r.query.get("name") or os.path.splitext(filename)[0]
        if any(v["display_name"] == name for v in self.versions.values() if v["pipeline_id"] == pipeline_id):
            raise ApiError(409, 6, "Failed to create a pipeline version", upload=True)
        return self._add_version(pipeline_id, name, spec)

    def _add_version(self, pipeline_id: str, name: str, spec: dict) -> dict:
        version = {
            "pipeline_id": pipeline_id,
            "pipeline_version_id": str(uuid.uuid4()),
            "display_name": name,
            "created_at": self._now(),
            "pipeline_spec": spec,
        }
        self.versions[version["pipeline_version_id"]] = version
        self.specs[version["pipeline_version_id"]] = spec
        return version

    def _create_experiment(self, body: dict) -> dict:
        name, namespace = body.get("display_name", ""), body.get("namespace", "")
        if not name:
            raise _invalid("Invalid input error: Experiment must have a non-empty name")
        if any(e["display_name"] == name and e.get("namespace", "") == namespace for e in self.experiments.values()):
            raise ApiError(409, 6, f"Already exist error: Failed to create a new experiment {name}")
        experiment = {
            "experiment_id": str(uuid.uuid4()),
            "display_name": name,
            "created_at": self._now(),
            "storage_state": "AVAILABLE",
        }
        if namespace:
            experiment["namespace"] = namespace
        self.experiments[experiment["experiment_id"]] = experiment
        return experiment

    def _create_run(self, body: dict) -> dict:
        if not body.get("display_name"):
            raise _invalid("Invalid input error: The run name is empty")
        experiment_id = body.get("experiment_id", "")
        if experiment_id not in self.experiments:
            raise ApiError(404, 5, f"Experiment {experiment_id} not found")
        reference = body.get("pipeline_version_reference")
        if reference:
            version = self.versions.get(reference.get("pipeline_version_id", ""))
            if version is None or version["pipeline_id"] != reference.get("pipeline_id"):
                raise ApiError(404, 5, f"Pipeline version {reference} not found")
            spec = self.specs[version["pipeline_version_id"]]
        elif body.get("pipeline_spec"):
            spec = _check_spec(body["pipeline_spec"])
        else:
            raise _invalid("Invalid input error: the run has neither a pipeline version nor a pipeline spec")
        runtime_config = body.get("runtime_config", {})
        _check_run_parameters(spec, runtime_config.get("parameters", {}))
        now = self._now()
        run = {
            "experiment_id": experiment_id,
            "run_id": str(uuid.uuid4()),
            "display_name": body["display_name"],
            "storage_state": "AVAILABLE",
            "runtime_config": runtime_config,
            "created_at": now,
            "scheduled_at": now,
            "finished_at": "1970-01-01T00:00:00Z",
            "state": "PENDING",
            "state_history": [{"update_time": now, "state": "PENDING"}],
        }
        run.update({key: body[key] for key in ("pipeline_version_reference", "pipeline_spec") if body.get(key)})
        self.runs[run["run_id"]] = run
        return run


# Small pipelines for the parameter types that the animerec pipeline (two strings) has not.
@dsl.component(base_image="python:3.10")
def show(epochs: int, rate: float, full: bool, tags: list, options: dict, label: str):
    print(epochs, rate, full, tags, options, label)


@dsl.pipeline(name="typed-parameters")
def typed_parameters(
    epochs: int = 1,
    rate: float = 0.5,
    full: bool = False,
    tags: list = ["a"],  # noqa: B006 - kfp reads defaults from the signature
    options: dict = {"k": 1},  # noqa: B006
    label: str = "x",
):
    show(epochs=epochs, rate=rate, full=full, tags=tags, options=options, label=label)


@dsl.pipeline(name="required-parameter")
def required_parameter(epochs: int):
    show(epochs=epochs, rate=0.5, full=False, tags=[], options={}, label="x")


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    """The animerec pipeline compiled by the CLI as a spec (YAML) and as a job (JSON)."""
    folder = tmp_path_factory.mktemp("packages")
    paths = {}
    for kind in ("yaml", "json"):
        paths[kind] = str(folder / f"animerec.{kind}")
        argv = ["kubeflow", "compile", "--output", paths[kind], "--pipeline-root", "gs://b/root"]
        argv += ["--data-root", "gs://b/data", "--serving-dir", "gs://b/serving", "--epochs", "3"]
        assert cli.main(argv) == 0
    compiler.Compiler().compile(typed_parameters, str(folder / "typed.yaml"))
    compiler.Compiler().compile(required_parameter, str(folder / "required.yaml"))
    paths["typed"], paths["required"] = str(folder / "typed.yaml"), str(folder / "required.yaml")
    return paths


@pytest.fixture
def kfp_api(monkeypatch, tmp_path):
    # No kfp context file (namespace, cookies) or KF_PIPELINES_* variables from the machine running the tests.
    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp" / "context.json"))
    for name in list(os.environ):
        if name.startswith("KF_PIPELINES_"):
            monkeypatch.delenv(name)
    with FakeKfpApiServer() as server:
        yield server


def animerec_submit(capsys, *args) -> tuple[int, str, str]:
    code = cli.main(["kubeflow", "submit", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _spec_proto(data) -> pipeline_spec_pb2.PipelineSpec:
    return json_format.ParseDict(next(yaml.safe_load_all(data)), pipeline_spec_pb2.PipelineSpec())


def test_submit_uploads_the_spec_and_runs_it_with_the_parameters(kfp_api, packages, capsys):
    code, out, err = animerec_submit(
        capsys,
        "--host",
        kfp_api.url,
        "--package",
        packages["yaml"],
        "--param",
        "data_root=gs://b/kaggle",
        "--param",
        f"training_config={TRAINING}",
        "--experiment",
        "nightly",
        "--pipeline-root",
        "gs://b/root-2026-11",
    )
    assert code == 0, err
    assert "Traceback" not in err
    # The client's calls, in order: what the real API server sees from kfp 2.5.
    assert [(r.method, r.path[len(API) :]) for r in kfp_api.requests] == [
        ("GET", "/healthz"),
        ("GET", "/pipelines"),
        ("POST", "/pipelines/upload"),
        ("GET", f"/pipelines/{next(iter(kfp_api.pipelines))}/versions"),
        ("GET", "/experiments"),
        ("POST", "/experiments"),
        ("POST", "/runs"),
    ]
    # The uploaded file is the package: the same PipelineSpec, named as the spec names it.
    (upload,) = kfp_api.calls("POST", "/pipelines/upload")
    filename, content = upload.files["uploadfile"]
    assert filename == "animerec.yaml"
    with open(packages["yaml"], "rb") as fh:
        assert _spec_proto(content) == _spec_proto(fh.read())
    assert upload.query["name"] == runner.PIPELINE_NAME
    (pipeline,) = kfp_api.pipelines.values()
    (version,) = kfp_api.versions.values()
    # The experiment, absent, was created, and the run is in it.
    (lookup,) = kfp_api.calls("GET", "/experiments")
    assert json.loads(lookup.query["filter"])["predicates"][0]["stringValue"] == "nightly"
    (experiment,) = kfp_api.experiments.values()
    assert experiment["display_name"] == "nightly"
    (create_run,) = kfp_api.calls("POST", "/runs")
    body = create_run.json
    assert body["experiment_id"] == experiment["experiment_id"]
    assert body["pipeline_version_reference"] == {
        "pipeline_id": pipeline["pipeline_id"],
        "pipeline_version_id": version["pipeline_version_id"],
    }
    assert body["runtime_config"] == {
        "parameters": {runner.DATA_ROOT_PARAMETER: "gs://b/kaggle", runner.TRAINING_PARAMETER: TRAINING},
        "pipeline_root": "gs://b/root-2026-11",
    }
    (run,) = kfp_api.runs.values()
    assert f"Run ID: {run['run_id']}" in out
    assert f"Run URL: {kfp_api.url}/#/runs/details/{run['run_id']}" in out
    assert "details:" not in out, "kfp's own link lines are not printed"


def test_a_token_and_a_cookie_reach_every_call(kfp_api, packages, capsys, tmp_path):
    """Multi-user Kubeflow behind its auth proxy wants a session cookie or a bearer token on
    every request, as kfp.Client sends its existing_token and cookies."""
    token = tmp_path / "token"
    token.write_text("sa-token-123\n")
    code, _, err = animerec_submit(
        capsys,
        "--host",
        kfp_api.url,
        "--package",
        packages["yaml"],
        "--token-file",
        str(token),
        "--cookie",
        "authservice_session=abc",
    )
    assert code == 0, err
    assert kfp_api.requests, "nothing reached the server"
    for request in kfp_api.requests:
        headers = {key.lower(): value for key, value in request.headers.items()}
        assert headers.get("authorization") == "Bearer sa-token-123", (request.path, headers)
        assert headers.get("cookie") == "authservice_session=abc", (request.path, headers)
    # A token file that cannot be read stops submit before anything is sent.
    sent = len(kfp_api.requests)
    code, _, err = animerec_submit(
        capsys, "--host", kfp_api.url, "--package", packages["yaml"], "--token-file", str(tmp_path / "none")
    )
    assert code == 2 and err.strip() == f"animerec: error: --token-file {tmp_path / 'none'}: No such file or directory"
    assert len(kfp_api.requests) == sent


def test_no_cache_uploads_the_spec_with_every_tasks_caching_off(kfp_api, packages, capsys):
    with open(packages["yaml"], "rb") as fh:
        compiled = _spec_proto(fh.read())
    # As compiled, the component tasks cache.
    cached = {name for name, task in compiled.root.dag.tasks.items() if task.caching_options.enable_cache}
    assert {"KaggleExampleGen", "Transform", "Trainer"} <= cached
    code, _, err = animerec_submit(capsys, "--host", kfp_api.url, "--package", packages["yaml"], "--no-cache")
    assert code == 0, err
    (upload,) = kfp_api.calls("POST", "/pipelines/upload")
    filename, content = upload.files["uploadfile"]
    uploaded = _spec_proto(content)
    assert filename == os.path.basename(packages["yaml"])
    assert not any(task.caching_options.enable_cache for task in uploaded.root.dag.tasks.values())
    # Nothing else changes: with the compiled caching options put back, it is the package.
    for name, task in uploaded.root.dag.tasks.items():
        if compiled.root.dag.tasks[name].HasField("caching_options"):
            task.caching_options.CopyFrom(compiled.root.dag.tasks[name].caching_options)
        else:  # kfp's override sets the option on every task, even one compiled without it
            task.ClearField("caching_options")
    assert uploaded == compiled


def test_a_second_submit_adds_a_version_and_reuses_the_experiment(kfp_api, packages, capsys):
    for _ in range(2):
        code, _, err = animerec_submit(
            capsys, "--host", kfp_api.url, "--package", packages["yaml"], "--experiment", "nightly"
        )
        assert code == 0, err
    assert len(kfp_api.calls("POST", "/pipelines/upload")) == 1
    (add_version,) = kfp_api.calls("POST", "/pipelines/upload_version")
    (pipeline,) = kfp_api.pipelines.values()
    assert add_version.query["pipelineid"] == pipeline["pipeline_id"]
    assert len(kfp_api.calls("POST", "/experiments")) == 1
    (experiment,) = kfp_api.experiments.values()
    first, second = (r.json for r in kfp_api.calls("POST", "/runs"))
    assert first["experiment_id"] == second["experiment_id"] == experiment["experiment_id"]
    assert first["pipeline_version_reference"] != second["pipeline_version_reference"]
    versions = [v["pipeline_version_id"] for v in kfp_api.versions.values()]
    assert [r["pipeline_version_reference"]["pipeline_version_id"] for r in (first, second)] == versions
    # Without --param and --pipeline-root the run keeps the compiled defaults (the server has them in the spec).
    assert second["runtime_config"] == {"parameters": {}, "pipeline_root": "gs://b/root"}


def test_names_and_namespace_reach_the_server(kfp_api, packages, capsys):
    names = ["--pipeline-name", "animerec-dev", "--namespace", "team-a", "--experiment", "tuning"]
    for extra in (["--run-name", "first"], ["--run-name", "second", "--version-name", "v2"]):
        code, _, err = animerec_submit(capsys, "--host", kfp_api.url, "--package", packages["yaml"], *names, *extra)
        assert code == 0, err
    (lookup, _) = kfp_api.calls("GET", "/pipelines")
    assert lookup.query["namespace"] == "team-a"
    assert json.loads(lookup.query["filter"])["predicates"][0]["stringValue"] == "animerec-dev"
    (upload,) = kfp_api.calls("POST", "/pipelines/upload")
    assert (upload.query["name"], upload.query["namespace"]) == ("animerec-dev", "team-a")
    (add_version,) = kfp_api.calls("POST", "/pipelines/upload_version")
    assert add_version.query["name"] == "v2"
    (create_experiment,) = kfp_api.calls("POST", "/experiments")
    assert create_experiment.json == {"display_name": "tuning", "namespace": "team-a"}
    assert [r.json["display_name"] for r in kfp_api.calls("POST", "/runs")] == ["first", "second"]


def test_parameters_are_typed_by_the_pipeline(kfp_api, packages, capsys):
    code, out, err = animerec_submit(
        capsys,
        "--host",
        kfp_api.url,
        "--package",
        packages["typed"],
        "--param",
        "epochs=7",
        "--param",
        "rate=0.25",
        "--param",
        "full=true",
        "--param",
        'tags=["x", "y"]',
        "--param",
        'options={"a": 2}',
        "--param",
        "label=7",
    )
    assert code == 0, err
    (create_run,) = kfp_api.calls("POST", "/runs")
    assert create_run.json["runtime_config"]["parameters"] == {
        "epochs": 7,
        "rate": 0.25,
        "full": True,
        "tags": ["x", "y"],
        "options": {"a": 2},
        "label": "7",
    }
    assert "pipeline_root" not in create_run.json["runtime_config"]


@pytest.mark.parametrize(
    "param, message",
    [
        ("epoch=3", "--param epoch: the pipeline has no parameter 'epoch' (its parameters: epochs, full, label"),
        ("epochs=3.5", "--param epochs=3.5: epochs is NUMBER_INTEGER; expected an integer"),
        ("rate=fast", "--param rate=fast: rate is NUMBER_DOUBLE; expected a number"),
        ("full=yes", "--param full=yes: full is BOOLEAN; expected true or false"),
        ("tags={}", "--param tags={}: tags is LIST; expected a JSON list"),
        ("options=[1]", "--param options=[1]: options is STRUCT; expected a JSON object"),
        ("epochs", "--param 'epochs': expected NAME=VALUE"),
    ],
)
def test_bad_parameters_are_one_line_errors_before_any_request(kfp_api, packages, capsys, param, message):
    code, out, err = animerec_submit(capsys, "--host", kfp_api.url, "--package", packages["typed"], "--param", param)
    assert code == 2
    assert err.startswith(f"animerec: error: {message}")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert kfp_api.requests == []


def test_training_config_must_be_a_training_config(packages):
    spec = submit.load_package(packages["yaml"])
    with pytest.raises(submit.SubmitError, match="unknown key.*epoch; known: batch_size"):
        submit.parse_parameters(spec, ['training_config={"epoch": 3}'])
    with pytest.raises(submit.SubmitError, match="training_config: not JSON"):
        submit.parse_parameters(spec, ["training_config=epochs=3"])


def test_gate_config_is_a_run_parameter_checked_at_submission(packages):
    spec = submit.load_package(packages["yaml"])
    parameters = submit.parse_parameters(spec, ['gate_config={"min_value": 0.3, "max_regression": 0.0}'])
    assert json.loads(parameters["gate_config"]) == {"min_value": 0.3, "max_regression": 0.0}
    with pytest.raises(submit.SubmitError, match="gate_config: unknown key"):
        submit.parse_parameters(spec, ['gate_config={"min_recall": 0.3}'])
    # A threshold of the wrong type would fail the Evaluator after the whole run.
    with pytest.raises(submit.SubmitError, match='gate_config: min_value must be a number; got "x"'):
        submit.parse_parameters(spec, ['gate_config={"min_value": "x"}'])
    with pytest.raises(submit.SubmitError, match="training_config: epochs must be an integer; got 2.5"):
        submit.parse_parameters(spec, ['training_config={"epochs": 2.5}'])
    with pytest.raises(submit.SubmitError, match="given more than once"):
        submit.parse_parameters(spec, ["data_root=a", "data_root=b"])
    assert submit.parse_parameters(spec, ["data_root=a=b"]) == {"data_root": "a=b"}


def test_a_required_parameter_left_unset_is_refused_by_the_server(kfp_api, packages, capsys):
    code, _, err = animerec_submit(capsys, "--host", kfp_api.url, "--package", packages["required"])
    assert code == 2
    assert err == (
        "animerec: error: creating the run: HTTP 400: "
        "parameter epochs is not optional, yet has neither default value nor user provided value\n"
    )
    code, _, err = animerec_submit(
        capsys, "--host", kfp_api.url, "--package", packages["required"], "--param", "epochs=2"
    )
    assert code == 0, err


def test_the_pipeline_job_json_is_refused_with_a_hint(kfp_api, packages, capsys):
    code, _, err = animerec_submit(capsys, "--host", kfp_api.url, "--package", packages["json"])
    assert code == 2
    assert "run-local" in err and "--output NAME.yaml" in err and err.count("\n") == 1
    assert kfp_api.requests == []


def test_a_spec_the_server_refuses_is_a_one_line_error(kfp_api, packages, capsys, tmp_path):
    with open(packages["yaml"]) as fh:
        spec = yaml.safe_load(fh)
    spec["schemaVersion"] = "2.0.0"
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump(spec))
    code, _, err = animerec_submit(capsys, "--host", kfp_api.url, "--package", str(old))
    assert code == 2
    assert err == (
        "animerec: error: uploading old.yaml as the pipeline 'animerec': HTTP 400: "
        "KFP only supports schema version 2.1.0, but the pipeline spec has version 2.0.0\n"
    )


def test_what_the_old_recipe_sent_fails_and_the_spec_yaml_works_with_kfp_client(kfp_api, packages):
    """kfp.Client itself: the PipelineJob JSON fails (client-side, and at the server); the spec YAML runs."""
    client = kfp.Client(host=kfp_api.url)
    with pytest.raises(ValueError, match="should end with one of the following formats"):
        client.create_run_from_pipeline_package(packages["json"], arguments={})
    with pytest.raises(ApiException) as refused:
        client.upload_pipeline(packages["json"], pipeline_name="animerec-job")
    assert refused.value.status == 400 and "no pipeline spec is provided" in refused.value.body
    result = client.create_run_from_pipeline_package(
        packages["yaml"],
        arguments={runner.DATA_ROOT_PARAMETER: "gs://b/kaggle", runner.TRAINING_PARAMETER: TRAINING},
        pipeline_root="gs://b/root-2026-11",
    )
    (create_run,) = kfp_api.calls("POST", "/runs")
    assert create_run.json["experiment_id"] == next(iter(kfp_api.experiments))
    with open(packages["yaml"], "rb") as fh:
        assert json_format.ParseDict(create_run.json["pipeline_spec"], pipeline_spec_pb2.PipelineSpec()) == (
            _spec_proto(fh.read())
        )
    assert create_run.json["runtime_config"]["parameters"][runner.TRAINING_PARAMETER] == TRAINING
    assert result.run_id in kfp_api.runs


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_host_is_a_one_line_error(packages, tmp_path):
    """As a user runs it: the console entry point, nothing listening on the port."""
    env = dict(os.environ, HOME=str(tmp_path), TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore")
    host = f"http://127.0.0.1:{_free_port()}"
    out = subprocess.run(
        [sys.executable, "-m", "animerec.cli", "kubeflow", "submit", "--host", host, "--package", packages["yaml"]],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.startswith(f"animerec: error: connecting to the KFP API server at {host}: cannot reach {host}")
    assert "Connection refused" in out.stderr
    assert out.stderr.count("\n") == 1, out.stderr
    assert out.stdout == ""


def test_a_server_that_never_answers_times_out(packages, tmp_path, monkeypatch):
    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "context.json"))
    request = kfp_server_api.rest.RESTClientObject.request
    with socket.socket() as silent:  # accepts connections (the backlog) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        host = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(submit.SubmitError, match=r"connecting to the KFP API server .*timed out"):
            submit.submit(host, packages["yaml"], timeout_s=0.2)
    assert kfp_server_api.rest.RESTClientObject.request is request, "the timeout is for the submission only"

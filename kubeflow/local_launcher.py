"""Runs a compiled KFP v2 pipeline job's containers locally, as the KFP launcher would.

For each task in dependency order it builds the ExecutorInput the KFP launcher
writes for `{{$}}` (parameter values, input artifacts with their URIs and
metadata, output artifact URIs, an output file), runs the executor container's
command and arguments as a local process, and reads the ExecutorOutput it
writes back, so the next tasks get the artifacts' metadata (split names, the
blessing) as they would on a cluster. It checks that the entrypoints in the
compiled spec work outside LocalDagRunner. It is not a KFP backend, but it keeps ML
Metadata and caches as one: each task's output artifacts go to an SQLite store under
the root (kubeflow/local_metadata.py). Each run's artifacts live under
<root>/<run id>/<task>/. A resolver task is refused, as open-source KFP refuses it when
it compiles a run into an Argo workflow ("resolver executors not implemented",
backend/src/v2/compiler/argocompiler/dag.go): the pipeline has none.

Caching follows KFP v2's driver (backend/src/v2/driver, cacheutils.GenerateCacheKey): a
task whose `cachingOptions.enableCache` is set and whose cache key (its input artifacts'
names, its parameter values, its output artifacts' types, its image, command and
arguments as compiled) matches a completed execution reuses that execution's output
artifacts instead of running. A changed parameter or a re-run upstream task changes the
key. As on KFP, the key does not see the files under a path parameter: data replaced
in place under the same data_root is not noticed (KFP's open-source backend does not
run TFX's preCacheCheck hook either); run with caching off, or give each data refresh
its own folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import uuid


class TaskFailed(RuntimeError):  # noqa: N818 - a task failing is what it reports
    pass


def _task_order(tasks: dict) -> list[str]:
    """Tasks in dependency order (dependentTasks and artifact producers), ties by name."""
    needs = {}
    for name, task in tasks.items():
        deps = set(task.get("dependentTasks", []))
        for spec in task.get("inputs", {}).get("artifacts", {}).values():
            if "taskOutputArtifact" in spec:
                deps.add(spec["taskOutputArtifact"]["producerTask"])
        needs[name] = deps
    order: list[str] = []
    while len(order) < len(tasks):
        ready = sorted(n for n, deps in needs.items() if n not in order and deps <= set(order))
        if not ready:
            raise ValueError(f"the pipeline's tasks have a dependency cycle among {sorted(set(tasks) - set(order))}")
        order.extend(ready)
    return order


def _parameter_value(spec: dict, parameters: dict):
    if "componentInputParameter" in spec:
        return parameters[spec["componentInputParameter"]]
    if "runtimeValue" in spec:
        return spec["runtimeValue"]["constant"]
    raise ValueError(f"unsupported parameter source {sorted(spec)}")


def _substitute(arg: str, executor_input: dict) -> str:
    if "{{$}}" in arg:
        return arg.replace("{{$}}", json.dumps(executor_input))
    if "{{$" in arg:
        raise ValueError(f"unsupported placeholder in container argument {arg[:80]!r}")
    return arg


METADATA_FILE = "metadata.sqlite"


def cache_fingerprint(container: dict, executor_input: dict) -> str:
    """The task's cache key as KFP's driver builds it (cacheutils.GenerateCacheKey): input
    artifact names and parameter values, the output artifacts without their URIs (and,
    as the driver provisions them, without names), the image, command and arguments
    before placeholders are filled; hashed with SHA-256 over its JSON."""
    key = {
        "inputArtifactNames": {
            name: {"artifactNames": [a["name"] for a in listed["artifacts"]]}
            for name, listed in executor_input["inputs"]["artifacts"].items()
        },
        "inputParameterValues": executor_input["inputs"]["parameterValues"],
        "outputArtifactsSpec": {
            name: {"type": listed["artifacts"][0]["type"], "metadata": listed["artifacts"][0].get("metadata", {})}
            for name, listed in executor_input["outputs"]["artifacts"].items()
            if listed["artifacts"]
        },
        "outputParametersSpec": {},
        "containerSpec": {
            "image": container.get("image", ""),
            "cmdArgs": list(container.get("command", [])) + list(container.get("args", [])),
        },
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def run_compiled_pipeline(
    job_path: str,
    root: str,
    parameters: dict | None = None,
    env: dict | None = None,
    progress=print,
    enable_caching: bool | None = None,
) -> dict:
    """Runs every task of the compiled job under `root` (ML Metadata in <root>/metadata.sqlite);
    returns each task's output artifacts. `enable_caching` overrides every task's compiled
    caching option, as kfp.Client's run option does (None keeps them)."""
    from animerec.kubeflow.local_metadata import LocalMetadata

    with open(job_path) as fh:
        job = json.load(fh)
    spec = job["pipelineSpec"]
    tasks = spec["root"]["dag"]["tasks"]
    components = spec["components"]
    executors = spec["deploymentSpec"]["executors"]
    values = {**job.get("runtimeConfig", {}).get("parameterValues", {}), **(parameters or {})}
    root = os.path.abspath(root)
    metadata = LocalMetadata(os.path.join(root, METADATA_FILE))
    run_id = time.strftime("run-%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8]
    env = {**os.environ, **(env or {})}
    outputs: dict[str, dict[str, list]] = {}
    for name in _task_order(tasks):
        task = tasks[name]
        component = components[task["componentRef"]["name"]]
        executor = executors[component["executorLabel"]]
        output_keys = list(component.get("outputDefinitions", {}).get("artifacts", {}))
        inputs = {}
        for key, source in task.get("inputs", {}).get("artifacts", {}).items():
            producer = source["taskOutputArtifact"]
            inputs[key] = outputs[producer["producerTask"]][producer["outputArtifactKey"]]
        if "resolver" in executor:
            raise TaskFailed(
                f"{name}: resolver executors are not implemented by open-source Kubeflow Pipelines "
                "(backend/src/v2/compiler/argocompiler/dag.go); the pipeline must not use one"
            )
        if "container" not in executor:
            raise TaskFailed(f"{name}: run-local runs container tasks only; this one is {next(iter(executor), 'none')}")
        task_dir = os.path.join(root, run_id, name)
        executor_input = {
            "inputs": {
                "parameterValues": {
                    key: _parameter_value(p, values) for key, p in task.get("inputs", {}).get("parameters", {}).items()
                },
                "artifacts": {},
            },
            "outputs": {
                "artifacts": {
                    key: {
                        "artifacts": [
                            {
                                "name": f"{run_id}/{name}-{key}",
                                "type": definition["artifactType"],
                                "uri": os.path.join(task_dir, key),
                                "metadata": {},
                            }
                        ]
                    }
                    for key, definition in component["outputDefinitions"]["artifacts"].items()
                }
                if output_keys
                else {},
                "outputFile": os.path.join(task_dir, "executor_output.json"),
            },
        }
        for key, artifacts in inputs.items():
            executor_input["inputs"]["artifacts"][key] = {"artifacts": artifacts}
        container = executor["container"]
        fingerprint = cache_fingerprint(container, executor_input)
        caching = task.get("cachingOptions", {}).get("enableCache", False) if enable_caching is None else enable_caching
        hit = metadata.cached(name, fingerprint) if caching else None
        if hit is not None:
            execution, outputs[name], artifact_ids = hit
            metadata.record(run_id, name, outputs[name], fingerprint, cached_ids=artifact_ids)
            progress(f"{name}: cached, the outputs of {execution}")
            continue
        os.makedirs(task_dir, exist_ok=True)
        command = [sys.executable if c == "python" else c for c in container["command"]]
        command += [_substitute(arg, executor_input) for arg in container.get("args", [])]
        args = container.get("args", [])
        what = args[args.index("--executor_class_path") + 1] if "--executor_class_path" in args else args[:1]
        progress(f"{name}: {' '.join(container['command'])} {what} ...")
        start = time.time()
        log_path = os.path.join(task_dir, "log.txt")
        with open(log_path, "w") as log:
            result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        if result.returncode != 0:
            with open(log_path) as log:
                tail = log.read()[-3000:]
            raise TaskFailed(f"task {name} exited with {result.returncode}; log {log_path}:\n{tail}")
        produced = {key: value["artifacts"] for key, value in executor_input["outputs"]["artifacts"].items()}
        output_file = executor_input["outputs"]["outputFile"]
        if os.path.exists(output_file):
            with open(output_file) as fh:
                written = json.load(fh)
            for key, value in written.get("artifacts", {}).items():
                # The executor reports URIs and metadata; the type and name stay as declared.
                declared = produced.get(key, [{}])
                produced[key] = [{**declared[min(i, len(declared) - 1)], **a} for i, a in enumerate(value["artifacts"])]
        outputs[name] = produced
        metadata.record(run_id, name, produced, fingerprint)
        progress(f"{name}: done in {time.time() - start:.1f}s")
    return outputs

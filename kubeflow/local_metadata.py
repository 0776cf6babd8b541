"""ML Metadata for `kubeflow run-local`: the artifacts each task produced and each
execution's cache fingerprint, kept across runs in an SQLite store, as a KFP backend keeps
them for its cache.
"""

from __future__ import annotations

import json
import os

# What run-local keeps of an artifact: the ExecutorInput form the next task receives.
RUNTIME_ARTIFACT = "runtime_artifact"
# An execution's cache fingerprint (local_launcher.cache_fingerprint), as KFP keeps it per task.
CACHE_FINGERPRINT = "cache_fingerprint"


def schema_title(artifact_type: dict) -> str:
    """The type's name ("tfx.Model"): its schemaTitle, or the title of its instanceSchema
    (the form TFX's compiler writes)."""
    if "schemaTitle" in artifact_type:
        return artifact_type["schemaTitle"]
    for line in artifact_type.get("instanceSchema", "").splitlines():
        if line.startswith("title:"):
            return line.split(":", 1)[1].strip()
    raise ValueError(f"artifact type {artifact_type} names no schema title")


class LocalMetadata:
    """An MLMD SQLite store of run-local's tasks and their output artifacts."""

    def __init__(self, path: str):
        from ml_metadata.proto import metadata_store_pb2

        from animerec.pipeline import artifacts

        self._pb = metadata_store_pb2
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.store = artifacts.open_store(path, "create")
        self.path = path

    def _type_id(self, kind: str, name: str) -> int:
        pb = self._pb
        if kind == "artifact":
            return self.store.put_artifact_type(pb.ArtifactType(name=name), can_add_fields=True)
        if kind == "execution":
            return self.store.put_execution_type(pb.ExecutionType(name=name), can_add_fields=True)
        return self.store.put_context_type(pb.ContextType(name=name))

    def record(
        self,
        run_id: str,
        task: str,
        produced: dict[str, list[dict]],
        fingerprint: str | None = None,
        cached_ids: dict[str, list[int]] | None = None,
    ) -> None:
        """Records task `task` of run `run_id` as complete with its output artifacts
        (ExecutorInput form, by output key) and its cache fingerprint; or, given
        `cached_ids` (the artifact ids of a cached execution, by output key), as CACHED
        with those same artifacts as its outputs, as KFP records a cache hit."""
        pb = self._pb
        artifacts, events = [], []
        for key, items in produced.items():
            for index, item in enumerate(items):
                if cached_ids is not None:
                    [artifact] = self.store.get_artifacts_by_id([cached_ids[key][index]])
                else:
                    artifact = pb.Artifact(
                        type_id=self._type_id("artifact", schema_title(item["type"])),
                        uri=item["uri"],
                        name=item["name"],
                        state=pb.Artifact.LIVE,
                    )
                    artifact.custom_properties[RUNTIME_ARTIFACT].string_value = json.dumps(item)
                    for name, value in item.get("metadata", {}).items():
                        if isinstance(value, bool | int | float):
                            artifact.custom_properties[name].double_value = float(value)
                        elif isinstance(value, str):
                            artifact.custom_properties[name].string_value = value
                artifacts.append(artifact)
                event = pb.Event(type=pb.Event.OUTPUT)
                event.path.steps.add().key = key
                event.path.steps.add().index = index
                events.append(event)
        state = pb.Execution.CACHED if cached_ids is not None else pb.Execution.COMPLETE
        execution = pb.Execution(
            type_id=self._type_id("execution", task), name=f"{run_id}/{task}", last_known_state=state
        )
        if fingerprint is not None:
            execution.custom_properties[CACHE_FINGERPRINT].string_value = fingerprint
        context = pb.Context(type_id=self._type_id("context", "pipeline_run"), name=run_id)
        existing = self.store.get_context_by_type_and_name("pipeline_run", run_id)
        if existing is not None:
            context = existing
        self.store.put_execution(execution, list(zip(artifacts, events)), [context])

    def cached(self, task: str, fingerprint: str) -> tuple[str, dict[str, list[dict]], dict[str, list[int]]] | None:
        """The newest complete execution of `task` with this cache fingerprint, as (its
        name, its output artifacts by key in ExecutorInput form, their ids), or None. As KFP,
        the artifacts are reused as they are recorded (their files are not checked)."""
        from ml_metadata import errors

        pb = self._pb
        try:
            executions = self.store.get_executions_by_type(task)
        except errors.NotFoundError:  # no execution of this task yet
            return None
        hits = [
            e
            for e in executions
            if e.last_known_state == pb.Execution.COMPLETE
            and e.custom_properties.get(CACHE_FINGERPRINT) is not None
            and e.custom_properties[CACHE_FINGERPRINT].string_value == fingerprint
        ]
        if not hits:
            return None
        newest = max(hits, key=lambda e: (e.create_time_since_epoch, e.id))
        events = [e for e in self.store.get_events_by_execution_ids([newest.id]) if e.type == pb.Event.OUTPUT]
        by_id = {a.id: a for a in self.store.get_artifacts_by_id([e.artifact_id for e in events])}
        outputs: dict[str, list[dict]] = {}
        ids: dict[str, list[int]] = {}
        for event in sorted(events, key=lambda e: (e.path.steps[0].key, e.path.steps[1].index)):
            key = event.path.steps[0].key
            outputs.setdefault(key, []).append(
                json.loads(by_id[event.artifact_id].custom_properties[RUNTIME_ARTIFACT].string_value)
            )
            ids.setdefault(key, []).append(event.artifact_id)
        return newest.name, outputs, ids

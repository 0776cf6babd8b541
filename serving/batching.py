"""TF Serving's batching session (--enable_batching), as the stand-in server runs it.

Followed from tensorflow_serving/batching (batching_session.cc, batching_util.cc,
shared_batch_scheduler.h), so that a signature that would fail under real TF Serving's
batching fails here too:
- every signature is batched; a request ("task") is refused when an input has no
  batch dimension, when its inputs' batch sizes differ, or when it has more rows
  than max_batch_size;
- a batch holds tasks of one signature of one version, at most max_batch_size rows;
  it runs when full or when batch_timeout_micros have passed since its first task
  (at once with 0), on one of num_batch_threads threads;
- inputs are concatenated along dim 0; with pad_variable_length_inputs, each task's
  tensor is first padded to the batch's largest dims with its own first element
  (an empty tensor that needs padding fails the batch);
- outputs are split along dim 0 by the tasks' sizes; an output without a batch
  dimension, or with another dim 0, fails the batch, as does any error of the
  model call: every task of a failed batch gets the error;
- a task that does not fit its signature's open batch when max_enqueued_batches are
  queued for that signature and version is refused (UNAVAILABLE), and
  a batch whose tasks' deadlines have all passed while they waited is not run: each
  gets RESOURCE_EXHAUSTED "Run() timeout exceeded while waiting in batching queue"
  (BatchingSession::ProcessBatch); a batch with one task still in time runs whole.
The parameters come from the same batching.config file TF Serving reads.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
import threading
import time
from collections.abc import Callable

import grpc
import numpy as np
from absl import logging

CONFIG_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "batching.config")


class RequestError(Exception):
    """A request TF Serving would refuse, with the gRPC code it would use."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


@dataclasses.dataclass(frozen=True)
class BatchingConfig:
    """TF Serving's BatchingParameters; a field the file leaves out keeps TF Serving's default."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = os.cpu_count() or 1
    pad_variable_length_inputs: bool = False

    @classmethod
    def read(cls, path: str = CONFIG_PATH) -> BatchingConfig:
        """Reads a batching parameters file (protobuf text format, the fields above)."""
        numbers = {f.name for f in dataclasses.fields(cls) if f.type == "int"}
        values: dict = {}
        with open(path) as fh:
            for line_number, line in enumerate(fh, start=1):
                line = line.split("#", 1)[0].strip()
                if not line:
                    continue
                number = re.fullmatch(r"(\w+)\s*\{\s*value\s*:\s*(\d+)\s*\}", line)
                flag = re.fullmatch(r"(\w+)\s*:\s*(true|false)", line)
                if number and number.group(1) in numbers:
                    values[number.group(1)] = int(number.group(2))
                elif flag and flag.group(1) == "pad_variable_length_inputs":
                    values[flag.group(1)] = flag.group(2) == "true"
                else:
                    raise ValueError(
                        f"{path}, line {line_number}: {line!r} is not a batching parameter the stand-in "
                        f"server knows ({', '.join(sorted(numbers))}, pad_variable_length_inputs)"
                    )
        return cls(**values)


def task_size(inputs: dict, max_batch_size: int) -> int:
    """Rows of a task: the inputs' shared dim 0, or TF Serving's refusal (batching_util.h,
    ComputeTensorBatchSize, which BatchingSession::ComputeInputSize calls; then the
    scheduler's, for a task larger than a batch)."""
    sizes = set()
    for value in inputs.values():
        if np.ndim(value) == 0:
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "Batching Run() input tensors must have at least one dimension",
            )
        sizes.add(np.shape(value)[0])
    if len(sizes) != 1:
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT, "Batching Run() input tensors must have equal 0th-dimension size"
        )
    size = sizes.pop()
    if size > max_batch_size:
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"Task size {size} is larger than maximum input batch size {max_batch_size}",
        )
    return size


def merge_inputs(tasks: list[dict], pad: bool) -> dict:
    """The tasks' inputs concatenated along dim 0 (batching_session.cc MergeInputTensors)."""
    merged = {}
    for alias in tasks[0]:
        values = [np.asarray(task[alias]) for task in tasks]
        widest = np.max([v.shape for v in values], axis=0)
        parts = []
        for value in values:
            if pad:
                value = pad_to(value, widest)
            elif value.shape[1:] != values[0].shape[1:]:
                raise RequestError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"Tensors with name '{alias}' from different tasks have different shapes and padding is "
                    "turned off. Set pad_variable_length_inputs to true, or ensure that all tensors with the "
                    "same name have equal dimensions starting with the first dim.",
                )
            parts.append(value)
        merged[alias] = np.concatenate(parts)
    return merged


def pad_to(value: np.ndarray, dims) -> np.ndarray:
    """`value` padded after its own rows to `dims` (dim 0 kept) with its first element
    (batching_util.cc AddPadding)."""
    target = (value.shape[0], *[int(d) for d in dims[1:]])
    if target == value.shape:
        return value
    if value.size == 0:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "Got empty tensor in batch of non-empty tensors.")
    if value.ndim > 6:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "Only tensors with rank from 1 to 6 can be padded.")
    out = np.full(target, value.reshape(-1)[0], dtype=value.dtype)
    out[tuple(slice(0, n) for n in value.shape)] = value
    return out


def split_outputs(outputs: dict, sizes: list[int]) -> list[dict]:
    """The batch's outputs split along dim 0 by the tasks' sizes (SplitOutputTensors)."""
    for value in outputs.values():
        if np.ndim(value) == 0:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, "Batched output tensor has 0 dimensions")
        if np.shape(value)[0] != sum(sizes):
            raise RequestError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "Batched output tensor's 0th dimension does not equal the sum of the 0th dimension sizes of the "
                "input tensors",
            )
    bounds = np.cumsum([0, *sizes])
    return [{k: v[bounds[i] : bounds[i + 1]] for k, v in outputs.items()} for i in range(len(sizes))]


class _Task:
    __slots__ = ("key", "inputs", "size", "enqueued", "deadline", "done", "outputs", "error")

    def __init__(self, key, inputs: dict, size: int, deadline: float | None):
        self.key, self.inputs, self.size, self.deadline = key, inputs, size, deadline
        self.enqueued = time.monotonic()
        self.done = threading.Event()
        self.outputs: dict | None = None
        self.error: RequestError | None = None

    def finish(self, outputs: dict | None = None, error: RequestError | None = None) -> None:
        self.outputs, self.error = outputs, error
        self.done.set()


class Batcher:
    """Batches the calls of every signature of every version: `run(key, inputs)` is
    called with the merged inputs of the tasks that share `key` (version, signature).

    Under light load with batch_timeout_micros 0, a task finds no queue and no batch
    running and runs on the request's own thread at once, which is what TF Serving's
    idle batch thread would do, without two thread hand-offs.
    """

    def __init__(self, run: Callable[[object, dict], dict], config: BatchingConfig | None = None):
        self.run = run
        self.config = config or BatchingConfig.read()
        self.batch_sizes: collections.deque = collections.deque(maxlen=1000)  # tasks per call, newest last
        self._queue: list[_Task] = []
        self._busy = 0  # calls running, inline or on a batch thread
        self._cond = threading.Condition()
        self._stop = False
        self._threads = [
            threading.Thread(target=self._work, name=f"batch-{i}", daemon=True)
            for i in range(self.config.num_batch_threads)
        ]
        for thread in self._threads:
            thread.start()

    def call(self, key, inputs: dict, timeout: float | None = None) -> dict:
        """The outputs of `inputs` (one task) once its batch has run; RequestError as TF Serving's."""
        size = task_size(inputs, self.config.max_batch_size)
        task = _Task(key, inputs, size, None if timeout is None else time.monotonic() + timeout)
        with self._cond:
            if self._stop:
                raise RequestError(grpc.StatusCode.UNAVAILABLE, "the server is stopping")
            inline = self.config.batch_timeout_micros == 0 and not self._queue and not self._busy and not self._stop
            if inline:
                self._busy += 1
            else:
                # Each version's signature has its own queue of batches (shared_batch_scheduler.h,
                # ValidateBatchTaskQueueCapacity): full when the task does not fit its open
                # batch and max_enqueued_batches are queued already.
                batches = self._queued_batches(key)
                if batches and batches[-1] + size > self.config.max_batch_size:
                    if len(batches) >= self.config.max_enqueued_batches:
                        raise RequestError(
                            grpc.StatusCode.UNAVAILABLE,
                            "The batch scheduling queue to which this task was submitted is full; currently "
                            f"{len(batches)} batches enqueued and max_enqueued_batches is "
                            f"{self.config.max_enqueued_batches}",
                        )
                self._queue.append(task)
                self._cond.notify()
        if inline:
            try:
                self._run([task])
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify()
        task.done.wait()
        if task.error is not None:
            raise task.error
        return task.outputs

    def _queued_batches(self, key) -> list[int]:
        """The sizes of the batches queued for `key`, in order, the last one open: its tasks
        as they fill batches of max_batch_size rows."""
        sizes: list[int] = []
        for task in self._queue:
            if task.key == key:
                if sizes and sizes[-1] + task.size <= self.config.max_batch_size:
                    sizes[-1] += task.size
                else:
                    sizes.append(task.size)
        return sizes

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        for task in self._queue:
            task.finish(error=RequestError(grpc.StatusCode.UNAVAILABLE, "the server is stopping"))
        # A batch being run finishes first: no batch thread outlives the batcher.
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join()

    def _next_batch(self) -> list[_Task]:
        """Waits for a batch that is full or whose first task has waited batch_timeout_micros."""
        timeout = self.config.batch_timeout_micros / 1e6
        with self._cond:
            while True:
                if self._stop:
                    return []
                # As many calls at once as TF Serving has batch threads (a call run inline counts).
                if self._queue and self._busy < self.config.num_batch_threads:
                    first = self._queue[0]
                    # The signature's tasks in arrival order, while they fit (its open batch).
                    batch, size, full = [], 0, False
                    for task in self._queue:
                        if task.key != first.key:
                            continue
                        if size + task.size > self.config.max_batch_size:
                            full = True
                            break
                        batch.append(task)
                        size += task.size
                    full = full or size == self.config.max_batch_size
                    waited = time.monotonic() - first.enqueued
                    if full or waited >= timeout:
                        chosen = set(map(id, batch))
                        self._queue = [t for t in self._queue if id(t) not in chosen]
                        self._busy += 1
                        return batch
                    self._cond.wait(timeout - waited)
                else:
                    self._cond.wait()

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if not batch:
                return
            try:
                self._run(batch)
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify()

    def _run(self, batch: list[_Task]) -> None:
        now = time.monotonic()
        if all(task.deadline is not None and task.deadline <= now for task in batch):
            expired = RequestError(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "Run() timeout exceeded while waiting in batching queue"
            )
            for task in batch:
                task.finish(error=expired)
            return
        live = batch
        self.batch_sizes.append(len(live))
        try:
            pad = self.config.pad_variable_length_inputs
            merged = live[0].inputs if len(live) == 1 else merge_inputs([t.inputs for t in live], pad)
            parts = split_outputs(self.run(live[0].key, merged), [t.size for t in live])
        except RequestError as error:
            for task in live:
                task.finish(error=error)
            return
        except Exception as error:  # noqa: BLE001 - every waiting request must get an answer
            logging.exception("batched call failed")
            for task in live:
                task.finish(error=RequestError(grpc.StatusCode.INTERNAL, f"model call failed: {error}"))
            return
        for task, outputs in zip(live, parts):
            task.finish(outputs)

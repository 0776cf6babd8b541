"""Stopping a local run cleanly on SIGTERM or Ctrl-C: the component that was running is
recorded as failed in ML Metadata, Beam's worker processes stop with it, and the command
exits with one line instead of a traceback.

The signal becomes `RunInterruptedError`, an Exception (Ctrl-C's KeyboardInterrupt is not one):
TFX's launcher catches Exceptions from an executor and publishes its execution as
FAILED before it re-raises, which it does not do for a KeyboardInterrupt. Whatever a
signal caught outside an executor left RUNNING is marked CANCELED afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading


class RunInterruptedError(Exception):
    """The run was stopped by a signal (SIGTERM, or SIGINT from Ctrl-C)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"stopped by {signal.Signals(self.signum).name}"

    @property
    def exit_code(self) -> int:
        """128 + the signal's number, as a shell reports a process killed by it."""
        return 128 + self.signum


def stop_descendants(timeout: float = 10.0) -> list[int]:
    """Terminates every process this one started (Beam's SDK workers and their children),
    then kills those still alive after `timeout` seconds. Returns their pids."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=timeout)
    for child in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(alive, timeout=timeout)
    return [child.pid for child in children]


def cancel_running_executions(metadata_path: str) -> list[int]:
    """Marks the executions a stopped run left NEW or RUNNING as CANCELED. Returns their ids."""
    from ml_metadata.proto import metadata_store_pb2

    from animerec.pipeline import artifacts

    if not os.path.exists(metadata_path):
        return []
    store = artifacts.open_store(metadata_path, "write")
    unfinished = {metadata_store_pb2.Execution.NEW, metadata_store_pb2.Execution.RUNNING}
    executions = [e for e in store.get_executions() if e.last_known_state in unfinished]
    for execution in executions:
        execution.last_known_state = metadata_store_pb2.Execution.CANCELED
    if executions:
        store.put_executions(executions)
    return [e.id for e in executions]


@contextlib.contextmanager
def stops_cleanly(metadata_path: str | None = None):
    """Within the block, SIGTERM and SIGINT raise RunInterruptedError; on the way out the child
    processes are stopped and unfinished executions in `metadata_path` (if given) cancelled.
    A second signal stops the process the default way. Outside the main thread (where
    Python cannot handle signals) the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    received: list[int] = []

    def interrupt(signum, _frame):
        # Once: a second signal stops the process the default way, clean-up or not.
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, signal.SIG_DFL if s == signal.SIGTERM else signal.default_int_handler)
        received.append(signum)
        # From here on the console gets the command's one line: threads that lose their
        # worker, and the launcher's note of the failed step, go to the log alone.
        quiet.extend((h, h.level) for h in console_handlers())
        for handler, _ in quiet:
            handler.setLevel(logging.CRITICAL)
        threading.excepthook = _log_thread_error
        # The workers first: code the exception unwinds through (Beam's runner closing its
        # worker connections) would otherwise wait on workers that are still busy.
        stop_descendants()
        raise RunInterruptedError(signum)

    quiet: list = []
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    previous_excepthook = threading.excepthook
    try:
        for s in previous:
            signal.signal(s, interrupt)
        yield
    except BaseException as error:
        # A library between the signal and here may have wrapped RunInterruptedError in its own error.
        if not received:
            raise
        stop_descendants()
        if metadata_path:
            cancel_running_executions(metadata_path)
        if isinstance(error, RunInterruptedError):
            raise
        raise RunInterruptedError(received[0]) from error
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        threading.excepthook = previous_excepthook
        for handler, level in quiet:
            handler.setLevel(level)


def console_handlers() -> list:
    """The logging handlers that write to the console (not to a file): the root's, and
    those libraries gave their own loggers (TensorFlow gives its logger one when it is
    first used before logging is set up)."""
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    # Every handler but files and the null ones: absl's handler writes to stderr too.
    return [h for lg in loggers for h in lg.handlers if not isinstance(h, logging.FileHandler | logging.NullHandler)]


def _log_thread_error(args) -> None:
    """threading.excepthook once a run is stopping: a thread's error goes to the log."""
    logging.getLogger(__name__).info(
        "thread %s stopped with the run: %s", args.thread.name if args.thread else "?", args.exc_value
    )

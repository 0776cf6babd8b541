"""Per-component progress lines for LocalDagRunner, the one place that touches TFX internals.

TFX 1.16 offers no public hook for "a component started / finished / came from the
cache": LocalDagRunner reports that only through absl INFO logs, which the Trainer's
libraries silence. So this wraps two methods of TFX's private portable Launcher
(`launch`, and `_run_executor`, which is called only when the component really runs)
and reads the node id from `self._pipeline_node`. tests/test_progress.py checks those
names against the installed TFX and fails loudly when TFX changes them.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

# What the wrapper relies on in tfx.orchestration.portable.launcher.Launcher.
LAUNCHER_METHODS = ("launch", "_run_executor")
LAUNCHER_ATTRIBUTES = ("_pipeline_node",)


class ComponentProgress:
    """Prints a line as each component starts and ends, and whether it ran or came from cache.

    LocalDagRunner reports progress only through absl INFO logs, which the
    Trainer's libraries silence; wrapping the launcher does not depend on log levels.
    """

    def __init__(self, progress: Callable[[str], None]):
        self.progress = progress
        self.seconds: dict[str, float] = {}
        self.cached: dict[str, bool] = {}

    @contextlib.contextmanager
    def installed(self):
        from tfx.orchestration.portable import launcher

        original_launch = launcher.Launcher.launch
        original_run_executor = launcher.Launcher._run_executor
        tracker = self

        def launch(self_, *args, **kwargs):
            name = self_._pipeline_node.node_info.id
            tracker.cached[name] = True
            tracker.progress(f"[{time.strftime('%H:%M:%S')}] {name} ...")
            start = time.time()
            result = original_launch(self_, *args, **kwargs)
            tracker.seconds[name] = time.time() - start
            how = "cached" if tracker.cached[name] else "done"
            tracker.progress(f"[{time.strftime('%H:%M:%S')}] {name} {how} in {tracker.seconds[name]:.1f}s")
            return result

        def run_executor(self_, *args, **kwargs):
            tracker.cached[self_._pipeline_node.node_info.id] = False
            return original_run_executor(self_, *args, **kwargs)

        launcher.Launcher.launch = launch
        launcher.Launcher._run_executor = run_executor
        try:
            yield self
        finally:
            launcher.Launcher.launch = original_launch
            launcher.Launcher._run_executor = original_run_executor

"""The progress wrapper relies on TFX private names: this fails loudly when TFX changes them."""

import inspect

from tfx.orchestration.portable import launcher

from animerec.pipeline import progress


def test_tfx_launcher_still_has_what_the_progress_wrapper_wraps():
    for name in progress.LAUNCHER_METHODS:
        assert callable(getattr(launcher.Launcher, name, None)), f"TFX's Launcher has no {name}() any more"
    source = inspect.getsource(launcher.Launcher)
    for name in progress.LAUNCHER_ATTRIBUTES:
        assert f"self.{name}" in source, f"TFX's Launcher no longer sets self.{name}"
    # _run_executor is called from launch() only when the component really runs (not cached).
    assert "self._run_executor(" in inspect.getsource(launcher.Launcher)


def test_wrapper_reports_runs_and_cache_hits_and_restores_the_launcher(monkeypatch):
    class Node:
        class node_info:  # noqa: N801 - the proto's field name
            id = "Trainer"

    class Fake:
        _pipeline_node = Node()

        def __init__(self, runs: bool):
            self.runs = runs

    # Stand-ins for TFX's methods: launch() calls _run_executor() only when the component runs.
    def launch(self_):
        if self_.runs:
            launcher.Launcher._run_executor(self_)
        return "result"

    monkeypatch.setattr(launcher.Launcher, "launch", launch)
    monkeypatch.setattr(launcher.Launcher, "_run_executor", lambda self_: None)
    lines = []
    tracker = progress.ComponentProgress(lines.append)
    with tracker.installed():
        assert launcher.Launcher.launch(Fake(runs=True)) == "result"
        assert tracker.cached == {"Trainer": False} and "Trainer" in tracker.seconds
        launcher.Launcher.launch(Fake(runs=False))
        assert tracker.cached == {"Trainer": True}
    assert launcher.Launcher.launch is launch, "the original method is back"
    assert [line.split("] ")[1].split(" in ")[0] for line in lines] == [
        "Trainer ...",
        "Trainer done",
        "Trainer ...",
        "Trainer cached",
    ]

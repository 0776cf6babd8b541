"""Run by Python at start-up in the Beam worker processes of a local run: local_runner puts
this folder on their PYTHONPATH, and Python imports `sitecustomize` from there.

When a worker exits, TensorFlow's traced functions are collected after the interpreter
has cleared their module's globals, and `AtomicFunction.__del__` fails on them
("Exception ignored in: <function AtomicFunction.__del__>", a TypeError and its
traceback, a dozen per worker). Nothing is lost by then; those alone are not printed.
Every other unraisable exception still is.
"""

import sys

_print_unraisable = sys.unraisablehook


def _unraisable(unraisable) -> None:
    if getattr(unraisable.object, "__qualname__", "") == "AtomicFunction.__del__" and unraisable.exc_type is TypeError:
        return
    _print_unraisable(unraisable)


sys.unraisablehook = _unraisable

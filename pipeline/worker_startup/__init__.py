"""Start-up code for the Beam worker processes of a local run (see sitecustomize.py), and
the one place that sets up what those processes inherit."""

import contextlib
import logging
import os

# The local job service forwards each worker's log lines: start-up warnings ("No
# semi_persistent_directory found") and, as an ERROR line, a failing worker's traceback,
# which Beam re-raises to the caller itself.
JOB_SERVICE_LOGGER = "apache_beam.runners.portability.local_job_service"


# Library warnings no user of a command can act on: the Google client libraries'
# FutureWarning about Python 3.10 (TFX 1.16 needs it) on every import, and deprecations
# inside TFX and Beam. The command line sets it for itself and the processes it starts.
QUIET_WARNINGS = "ignore::FutureWarning,ignore::DeprecationWarning"


@contextlib.contextmanager
def quiet_job_service():
    """Mutes the local job service's forwarded worker lines (see JOB_SERVICE_LOGGER)."""
    log = logging.getLogger(JOB_SERVICE_LOGGER)
    previous = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(previous)


@contextlib.contextmanager
def quiet_workers():
    """Beam's local worker processes started inside inherit this environment: no
    per-worker TensorFlow banners or library warnings, and this folder on PYTHONPATH, so
    that they run sitecustomize.py at start-up (TensorFlow's failures at exit kept quiet).
    Restored on the way out."""
    previous = {k: os.environ.get(k) for k in ("TF_CPP_MIN_LOG_LEVEL", "PYTHONWARNINGS", "PYTHONPATH")}
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    os.environ["PYTHONWARNINGS"] = QUIET_WARNINGS + ",ignore::UserWarning"
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(__file__)] + ([previous["PYTHONPATH"]] if previous["PYTHONPATH"] else [])
    )
    try:
        yield
    finally:
        for k, v in previous.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

"""Files on this machine or on any filesystem TensorFlow reads (`gs://`, `s3://` with
tensorflow-io, `ram://` in tests): for the Kaggle readers and the converter, and for what
the pipeline's own code reads and writes in artifacts (a Kubeflow run's are on `gs://`).

Local paths go through Python's own calls (fast line reading, no TensorFlow import);
a path with a scheme goes through `tf.io.gfile`, which is also what TFX's components
and Beam's TFRecord sinks read and write with.
"""

from __future__ import annotations

import glob as _glob
import io
import os
import shutil

# Read-ahead for a remote file: each read is a request to the store.
REMOTE_BUFFER_BYTES = 8 << 20


def is_local(path: str) -> bool:
    return "://" not in path


def _gfile():
    import tensorflow as tf  # heavy import, only for remote paths

    return tf.io.gfile


class _GFileReader(io.RawIOBase):
    """tf.io.gfile.GFile as a raw binary stream, so that io.BufferedReader gives it
    Python's line reading (readline, readlines with a size hint) and pandas can parse it."""

    def __init__(self, path: str):
        self._file = None
        self._file = _gfile().GFile(path, "rb")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self._file.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readall(self) -> bytes:
        return self._file.read()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._file.seek(offset, whence)
        return self._file.tell()

    def tell(self) -> int:
        return self._file.tell()

    def close(self) -> None:
        if not self.closed and self._file is not None:
            self._file.close()
        super().close()


def open_read(path: str):
    """The file as a binary stream with readline, seek and tell."""
    if is_local(path):
        return open(path, "rb")
    return io.BufferedReader(_GFileReader(path), REMOTE_BUFFER_BYTES)


def open_write(path: str):
    """A new binary file (replacing one of that name)."""
    if is_local(path):
        return open(path, "wb")
    return _gfile().GFile(path, "wb")


def read_bytes(path: str) -> bytes:
    with open_read(path) as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path: str, data: bytes) -> None:
    """A new file holding `data` (replacing one of that name)."""
    with open_write(path) as f:
        f.write(data)


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def glob(pattern: str) -> list[str]:
    """The paths matching `pattern` (`*` within one folder level), sorted."""
    return sorted(_glob.glob(pattern) if is_local(pattern) else _gfile().glob(pattern))


def absolute(path: str) -> str:
    """A local path made absolute; a remote one as it is."""
    return os.path.abspath(path) if is_local(path) else path


def exists(path: str) -> bool:
    return os.path.exists(path) if is_local(path) else _gfile().exists(path)


def size(path: str) -> int:
    return os.path.getsize(path) if is_local(path) else _gfile().stat(path).length


def mtime_ns(path: str) -> int:
    return os.stat(path).st_mtime_ns if is_local(path) else _gfile().stat(path).mtime_nsec


def isdir(path: str) -> bool:
    return os.path.isdir(path) if is_local(path) else _gfile().isdir(path)


def listdir(path: str) -> list[str]:
    return os.listdir(path) if is_local(path) else [name.rstrip("/") for name in _gfile().listdir(path)]


def makedirs(path: str) -> None:
    if is_local(path):
        os.makedirs(path, exist_ok=True)
    else:
        _gfile().makedirs(path)


def remove(path: str) -> None:
    if is_local(path):
        os.remove(path)
    else:
        _gfile().remove(path)


def rmtree(path: str) -> None:
    """Removes a folder and what it holds; nothing when it is not there."""
    if is_local(path):
        shutil.rmtree(path, ignore_errors=True)
    elif _gfile().exists(path):
        _gfile().rmtree(path)

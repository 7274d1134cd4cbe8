"""Read W&B run files (``run-*.wandb``) without syncing them: config, history rows and summary.

W&B writes an offline run as a binary log of protobuf records; this module decodes it with
wandb's own protobuf definitions, so tests and experiment scripts can check what was logged.
"""

from __future__ import annotations

import json
import os
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["OfflineRun", "read_offline_run", "wait_for_offline_run"]


@dataclass
class OfflineRun:
    """What a W&B run file holds: its config, its history rows (in order) and its final summary."""

    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


# The .wandb file is a LevelDB-style log: a 7-byte header (":W&B", magic 0xBEE1, version),
# then 32 KiB blocks of chunks, each with a 7-byte header (crc32c, length, type). A record
# (a serialised wandb.proto Record) is one FULL chunk or FIRST, MIDDLE..., LAST chunks.
_FILE_HEADER = struct.Struct("<4sHB")
_CHUNK_HEADER = struct.Struct("<IHB")
_BLOCK = 32768
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _records(data: bytes, path: Path) -> list[bytes]:
    ident, magic, _ = _FILE_HEADER.unpack_from(data)
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path} is not a W&B run file (header {data[:7]!r})")
    records, parts, pos = [], [], _FILE_HEADER.size
    while pos + _CHUNK_HEADER.size <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _CHUNK_HEADER.size:  # block trailer padding
            pos += left
            continue
        _, length, kind = _CHUNK_HEADER.unpack_from(data, pos)
        pos += _CHUNK_HEADER.size
        if pos + length > len(data):  # the writer was cut off mid-record
            break
        chunk = data[pos : pos + length]
        pos += length
        if kind == _FULL:
            records.append(chunk)
        elif kind == _FIRST:
            parts = [chunk]
        elif kind == _MIDDLE:
            parts.append(chunk)
        elif kind == _LAST:
            records.append(b"".join([*parts, chunk]))
            parts = []
    return records


def _items(items: Any) -> dict[str, Any]:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}


def read_offline_run(path: str | os.PathLike[str]) -> OfflineRun:
    """Read an offline run without syncing it.

    Args:
        path: an ``offline-run-*`` folder or the ``run-*.wandb`` file in it.

    Nested keys are joined with ``/``. W&B media (tables, plots) appear in the history as their
    file references (``<key>/path`` etc., relative to the run's ``files/`` folder).
    """
    from wandb.proto import wandb_internal_pb2

    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("run-*.wandb"))
        if len(files) != 1:
            raise ValueError(f"expected one run-*.wandb file in {path}, found {[f.name for f in files]}")
        path = files[0]
    if not path.is_file():
        raise ValueError(f"W&B run file not found: {path}")
    run = OfflineRun()
    for data in _records(path.read_bytes(), path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.config.update(_items(record.run.config.update))
        elif kind == "config":
            run.config.update(_items(record.config.update))
        elif kind == "history":
            run.history.append(_items(record.history.item))
        elif kind == "summary":
            run.summary.update(_items(record.summary.update))
            for item in record.summary.remove:
                run.summary.pop(item.key or "/".join(item.nested_key), None)
    return run


def wait_for_offline_run(path: str | os.PathLike[str], key: str, timeout_s: float = 60.0) -> OfflineRun:
    """:func:`read_offline_run` once the run's summary holds ``key`` (the metric logged last).

    W&B's service writes the run file asynchronously and may still be writing after ``finish()``
    returned, so the file is read again until ``key`` is in it; ``TimeoutError`` after ``timeout_s``.
    """
    from google.protobuf.message import DecodeError

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            run = read_offline_run(path)
        except (ValueError, DecodeError):  # not written yet, or a record cut off mid-write
            run = None
        if run is not None and key in run.summary:
            return run
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: W&B did not write {key!r} within {timeout_s:g} s")
        time.sleep(0.2)

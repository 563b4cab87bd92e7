"""The content-addressed, resumable on-disk store of a sweep.

A folder holds one JSON entry per trained model, ``<key>.json``, where ``key`` is a hash of
everything the result depends on (the *spec*: the configuration, the model and loss, the data
set's fingerprint, the dtype, the device type and the engine version). Each entry repeats its key
and its spec, and :meth:`Store.load` checks both against the request, so an entry is used only
for the exact computation it came from: a mismatch, a torn or truncated file, bytes that are not
UTF-8, or a directory in the entry's place count as missing, and the point is recomputed (the
bad entry is replaced when the new result is saved).

Entries are written atomically (a temporary file in the same folder, fsync, ``os.replace``), so a
kill never leaves a half-written entry; temporary files left by a killed writer are removed by
:meth:`Store.clean` once they are older than a few minutes.

Besides the entries, a store holds, in hidden files:

- ``.partial/<group>.pt``: the state of a batched group in training (parameters, optimizer
  buffers, random-number generators, metrics so far), saved every few minutes so that an
  interrupted sweep resumes a long group where it stopped instead of from scratch;
- ``journal.jsonl``: one line per event (a group started, resumed, checkpointed or saved, with
  the host and process), for following a sweep on a cluster and for the tests.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "ENGINE_VERSION",
    "STALE_AFTER_S",
    "canonical",
    "spec_key",
    "normalized",
    "tensor_fingerprint",
    "Store",
]

ENGINE_VERSION = 6  # bump when a change alters the numbers a point produces
STALE_AFTER_S = 600.0  # a temporary file this old belongs to a dead writer (a write takes milliseconds)


def canonical(obj: Any) -> str:
    """Canonical JSON of a spec (sorted keys, no whitespace): what a key hashes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=_json_default)


def _json_default(obj):
    if isinstance(obj, (torch.dtype, torch.device)):
        return str(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot put {type(obj).__name__} into a sweep spec")


def spec_key(spec: dict) -> str:
    """The key of a spec: 20 hex digits of the SHA-256 of its canonical JSON."""
    return hashlib.sha256(canonical(spec).encode()).hexdigest()[:20]


def normalized(spec: dict) -> Any:
    """The spec as it reads back from JSON (tuples become lists), for comparison with an entry."""
    return json.loads(canonical(spec))


def tensor_fingerprint(*tensors: torch.Tensor, h=None) -> str:
    """A hash of tensors' shapes, dtypes and values (on the host)."""
    h = hashlib.sha256() if h is None else h
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:20]


class Store:
    """A sweep store in folder ``path`` (created on first write)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    # ------------------------------------------------------------ entries
    def entry_path(self, key: str) -> Path:
        return self.path / f"{key}.json"

    def load(self, key: str, spec: dict | None = None) -> dict | None:
        """The stored result for ``key``, or None when there is none that can be trusted.

        ``spec``: the requested computation; an entry whose recorded spec differs is not used.
        Unreadable entries (missing, a directory, not UTF-8, not JSON, torn, wrong layout) are
        None too: the caller recomputes them."""
        path = self.entry_path(key)
        try:
            entry = json.loads(path.read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):  # FileNotFound, IsADirectory, JSONDecodeError
            return None
        if not isinstance(entry, dict) or entry.get("key") != key or not isinstance(entry.get("result"), dict):
            return None
        if entry.get("engine") != ENGINE_VERSION:
            return None
        if spec is not None and entry.get("spec") != normalized(spec):
            return None
        return entry["result"]

    def save(self, key: str, spec: dict, result: dict, meta: dict | None = None) -> Path:
        """Write the entry for ``key`` atomically, replacing whatever is there (a bad entry, a
        directory)."""
        entry = {"key": key, "engine": ENGINE_VERSION, "spec": normalized(spec), "result": result,
                 "meta": {**_whoami(), **(meta or {})}}
        data = json.dumps(entry).encode("utf-8")
        return self._atomic_write(self.entry_path(key), data)

    def keys(self) -> list[str]:
        """Keys of the entries present (not checked)."""
        if not self.path.is_dir():
            return []
        return sorted(p.stem for p in self.path.glob("*.json") if not p.name.startswith("."))

    def save_state(self, key: str, state: dict) -> Path:
        """A trained model's ``state_dict`` beside its entry, as ``<key>.pt`` (atomically)."""
        buf = io.BytesIO()
        torch.save(state, buf)
        return self._atomic_write(self.path / f"{key}.pt", buf.getvalue())

    def load_state(self, key: str) -> dict | None:
        path = self.path / f"{key}.pt"
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # missing, a directory, torn: recompute
            return None
        return state if isinstance(state, dict) else None

    # ------------------------------------------------------------ partial groups (checkpoints)
    def partial_path(self, group_id: str) -> Path:
        return self.path / ".partial" / f"{group_id}.pt"

    def save_partial(self, group_id: str, state: dict) -> Path:
        buf = io.BytesIO()
        torch.save(state, buf)
        return self._atomic_write(self.partial_path(group_id), buf.getvalue())

    def load_partial(self, group_id: str) -> dict | None:
        """A group's checkpoint, or None if absent or unreadable (an unreadable one is removed)."""
        path = self.partial_path(group_id)
        if not path.is_file():
            if path.exists():
                _remove(path)
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a torn or foreign file: start the group afresh
            _remove(path)
            return None
        if not isinstance(state, dict) or state.get("group") != group_id or state.get("engine") != ENGINE_VERSION:
            _remove(path)
            return None
        return state

    def partial_groups(self) -> dict[str, list[str]]:
        """``{group_id: member keys}`` of the checkpoints present (read from each file's name and
        header only when loaded: here every readable checkpoint is loaded once)."""
        folder = self.path / ".partial"
        out = {}
        if folder.is_dir():
            for p in sorted(folder.glob("*.pt")):
                state = self.load_partial(p.stem)
                if state is not None:
                    out[p.stem] = list(state["keys"])
        return out

    def drop_partial(self, group_id: str) -> None:
        path = self.partial_path(group_id)
        if path.exists():
            _remove(path)

    # ------------------------------------------------------------ journal and cleaning
    def journal(self, event: str, **fields) -> None:
        """Append one JSON line to ``journal.jsonl`` (one ``write`` of a short line: atomic on
        local file systems, so concurrent workers do not interleave)."""
        self.path.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"event": event, "time": time.time(), **_whoami(), **fields}) + "\n"
        fd = os.open(self.path / "journal.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)

    def read_journal(self) -> list[dict]:
        path = self.path / "journal.jsonl"
        out = []
        if path.is_file():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass  # a line torn by a kill
        return out

    def clean(self, older_than_s: float = STALE_AFTER_S) -> list[Path]:
        """Remove temporary files (``.*.tmp``) older than ``older_than_s`` seconds, left by
        writers that were killed between creating and renaming them. Returns what was removed."""
        removed = []
        now = time.time()
        for folder in (self.path, self.path / ".partial"):
            if not folder.is_dir():
                continue
            for p in folder.glob(".*.tmp"):
                try:
                    if now - p.lstat().st_mtime >= older_than_s:
                        _remove(p)
                        removed.append(p)
                except FileNotFoundError:
                    pass
        return removed

    # ------------------------------------------------------------ plumbing
    def _atomic_write(self, path: Path, data: bytes) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(3):
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)  # a directory where an entry belongs cannot be replaced by rename
                os.replace(tmp, path)
                return path
            except FileNotFoundError:
                # another process's clean() removed our temporary file: write it again
                if attempt == 2:
                    raise
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        return path  # pragma: no cover


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


def _whoami() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}

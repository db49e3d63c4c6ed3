"""Atomic file writes and verified, pickle-free checkpoints.

Every output goes to a temporary sibling that is fsynced and then renamed onto its final path, so a
crash never leaves a half-written file where a reader expects a whole one.

A checkpoint is a directory with two files:

- ``tensors.safetensors``: every torch tensor and numpy array of the tree, under flattened keys;
- ``meta.json``: format and version, the sha256 and size of the tensors file, and the tree's
  skeleton: its dicts (str or int keys, order kept), lists, tuples and scalars, with a reference
  to a safetensors key in place of each tensor or array.

The two files check each other: ``meta.json`` holds the sha256 of the tensors file, and the
tensors file's own metadata holds the sha256 of ``meta.json``'s canonical JSON less those two
fields, so an edit of either file (a step count, a learning rate, a weight) is detected.

Loading reads only JSON and safetensors, so a malicious file cannot run code: nothing is ever
unpickled. Any defect raises :class:`CheckpointError`, and :func:`latest_valid_checkpoint` skips
defective checkpoints so that a resume falls back to the previous good one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from safetensors import SafetensorError
from torch import Tensor

from hope_agent.version import __version__

PathLike = str | os.PathLike[str]

CHECKPOINT_FORMAT = "hope_agent.checkpoint"
# Version 2: the tensors file's metadata holds the sha256 of meta.json (version 1 had none).
CHECKPOINT_VERSION = 2
TENSORS_FILE = "tensors.safetensors"
META_FILE = "meta.json"

# Markers of the JSON skeleton. Every dict of the tree is wrapped in a "__dict__" node, so a
# user dict can never be mistaken for a marker node.
_DICT, _TUPLE, _FLOAT = "__dict__", "__tuple__", "__float__"
_TENSOR, _NDARRAY, _NPSCALAR = "__tensor__", "__ndarray__", "__npscalar__"
_ARRAY_MARKERS = (_TENSOR, _NDARRAY, _NPSCALAR)

# numpy dtype kinds that map onto a safetensors dtype: bool, signed/unsigned int, float.
_NUMPY_KINDS = "biuf"

# The fields of meta.json that describe the tensors file: checked against that file, and left out
# of the checksum of meta.json that the tensors file stores (each file cannot hold its own hash).
_TENSORS_FIELDS = ("tensors_sha256", "tensors_bytes")

_RESUME_FIX = (
    "resume from an earlier checkpoint (latest_valid_checkpoint(run_dir) finds the newest good "
    "one) or re-create this one with save_checkpoint"
)
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol >= 2; zip archive of torch.save


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupted, of an unknown format, or not a checkpoint."""


def _scratch_path(path: Path, tag: str) -> Path:
    # Hidden sibling on the same filesystem (so os.replace is atomic) that keeps the suffix, so
    # writers that infer the format from it (matplotlib, imageio) still work.
    return path.with_name(f".{path.name}.{tag}-{secrets.token_hex(4)}{path.suffix}")


def _is_scratch(path: Path) -> bool:
    return path.name.startswith(".") and (".tmp-" in path.name or ".old-" in path.name)


def _fsync_dir(path: Path) -> None:
    # Makes a rename durable; directories cannot be opened for fsync outside POSIX.
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    if path.is_dir():
        for child in path.rglob("*"):
            if child.is_file():
                _fsync_file(child)
        _fsync_dir(path)
    else:
        _fsync_file(path)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _replace(tmp: Path, target: Path) -> None:
    if tmp.is_dir() and target.exists():
        if not target.is_dir():
            raise FileExistsError(
                f"cannot replace the file {target} with a directory; remove it or pick another path"
            )
        # A non-empty directory cannot be renamed over: move the old one aside first. Between the
        # two renames the old copy survives under the hidden backup name.
        backup = _scratch_path(target, "old")
        os.replace(target, backup)
        try:
            os.replace(tmp, target)
        except BaseException:
            os.replace(backup, target)
            raise
        shutil.rmtree(backup)
    else:
        os.replace(tmp, target)
    _fsync_dir(target.parent)


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write to; it becomes ``path`` only on success.

    The temporary name is hidden and keeps the suffix (``.plot.png.tmp-1a2b3c4d.png``). The caller
    writes a file, or creates a directory, there. On a clean exit it is fsynced and renamed onto
    ``path`` (replacing an existing file or directory); on an exception it is removed. Missing
    parent directories are created.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _scratch_path(target, "tmp")
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(
                f"nothing was written for {target}: write to the path that atomic_path "
                f"yields ({tmp})"
            )
        _fsync_tree(tmp)
        _replace(tmp, target)
    except BaseException:
        _remove(tmp)
        raise


def atomic_remove(path: PathLike) -> None:
    """Remove the file or directory ``path`` as one step: it is renamed to a hidden scratch name
    (which :func:`latest_valid_checkpoint` skips) and then deleted, so a crash never leaves half
    of a checkpoint under its own name. A missing ``path`` is no error."""
    target = Path(path)
    if not target.exists():
        return
    scratch = _scratch_path(target, "old")
    os.replace(target, scratch)
    _fsync_dir(target.parent)
    _remove(scratch)


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


class _Encoder:
    """Splits a tree into a JSON skeleton and a flat dict of CPU tensors."""

    def __init__(self) -> None:
        self.tensors: dict[str, Tensor] = {}

    def _store(self, where: tuple[str, ...], tensor: Tensor) -> str:
        base = "/".join(where) or "root"
        key, n = base, 1
        while key in self.tensors:  # e.g. dict keys "a/b" and nested a -> b
            key, n = f"{base}#{n}", n + 1
        self.tensors[key] = tensor
        return key

    def encode(self, value: Any, where: tuple[str, ...]) -> Any:
        if isinstance(value, Tensor):
            if value.layout != torch.strided:
                raise TypeError(
                    f"{_name(where)}: only dense tensors can be saved, got {value.layout}; "
                    "convert it with .to_dense()"
                )
            # A private contiguous CPU copy: safetensors refuses views that share storage.
            cpu = value.detach().to("cpu", copy=True).contiguous()
            return {_TENSOR: self._store(where, cpu)}
        if isinstance(value, (np.ndarray, np.generic)):
            return self._encode_numpy(value, where)
        if value is None or isinstance(value, (bool, int, str)):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else {_FLOAT: repr(value)}
        if isinstance(value, Mapping):
            items = []
            for k, v in value.items():
                if isinstance(k, bool) or not isinstance(k, (str, int)):
                    raise TypeError(
                        f"{_name(where)}: dict keys must be str or int to be saved, got "
                        f"{type(k).__name__} key {k!r}"
                    )
                items.append([k, self.encode(v, (*where, str(k)))])
            return {_DICT: items}
        if isinstance(value, tuple):
            return {_TUPLE: [self.encode(v, (*where, str(i))) for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [self.encode(v, (*where, str(i))) for i, v in enumerate(value)]
        raise TypeError(
            f"{_name(where)}: cannot save a {type(value).__name__}; a checkpoint holds dicts, "
            "lists, tuples, tensors, numpy arrays, int, float, bool, None and str; convert it "
            "first (e.g. a dataclass with dataclasses.asdict, a Path with str)"
        )

    def _encode_numpy(self, value: np.ndarray | np.generic, where: tuple[str, ...]) -> Any:
        arr = np.asarray(value)
        if arr.dtype.kind not in _NUMPY_KINDS:
            raise TypeError(
                f"{_name(where)}: numpy dtype {arr.dtype} cannot be saved without pickle; use a "
                "bool, integer or float array"
            )
        native = np.array(arr, dtype=arr.dtype.newbyteorder("="), order="C", copy=True)
        key = self._store(where, torch.from_numpy(native))
        return {(_NPSCALAR if isinstance(value, np.generic) else _NDARRAY): key}


def _name(where: tuple[str, ...]) -> str:
    return "tree" + "".join(f"[{w!r}]" for w in where)


def save_checkpoint(path: PathLike, tree: Mapping[str, Any]) -> Path:
    """Save ``tree`` as a checkpoint directory at ``path``, atomically; returns the path.

    ``tree`` nests dicts (str or int keys: optimizer state dicts use int keys), lists, tuples,
    torch tensors, numpy arrays and scalars, and Python int, float, bool, None and str. Tensors are
    stored from CPU copies; :func:`load_checkpoint` returns tensors as tensors, numpy arrays and
    scalars with their dtype, ints as ints (also dict keys), tuples as tuples, and every mapping
    (e.g. a state_dict's OrderedDict) as a plain dict in the same key order.

    An existing checkpoint at ``path`` is replaced only once the new one is complete. Raises
    ``TypeError`` for a value that cannot be stored without pickle, ``FileExistsError`` when
    ``path`` is something other than a checkpoint.
    """
    target = Path(path)
    if not isinstance(tree, Mapping) or not all(isinstance(k, str) for k in tree):
        raise TypeError("save_checkpoint expects a mapping with str keys at the top of the tree")
    if target.exists() and not _looks_like_checkpoint(target):
        raise FileExistsError(
            f"refusing to overwrite {target}: it is not a checkpoint directory (expected only "
            f"{META_FILE} and {TENSORS_FILE}); remove it or pick another path"
        )
    encoder = _Encoder()
    skeleton = encoder.encode(tree, ())
    body = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "library_version": __version__,
        "torch_version": torch.__version__,
        "tree": skeleton,
    }
    # One key only: safetensors writes its metadata map in no fixed order, and a save must be
    # byte for byte reproducible.
    data = safetensors.torch.save(encoder.tensors, metadata={"meta_sha256": _meta_sha256(body)})
    meta = {**body, "tensors_sha256": hashlib.sha256(data).hexdigest(), "tensors_bytes": len(data)}
    meta_text = json.dumps(meta, allow_nan=False)
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / TENSORS_FILE).write_bytes(data)
        (tmp / META_FILE).write_text(meta_text, encoding="utf-8")
    return target


def _meta_sha256(meta: Mapping[str, Any]) -> str:
    """sha256 of ``meta``'s canonical JSON, less the fields that describe the tensors file.

    JSON floats, ints and strings round-trip exactly, so the value recomputed from a parsed
    ``meta.json`` equals the one computed from the dict it was written from.
    """
    body = {k: v for k, v in meta.items() if k not in _TENSORS_FIELDS}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _looks_like_checkpoint(path: Path) -> bool:
    return path.is_dir() and {p.name for p in path.iterdir()} <= {META_FILE, TENSORS_FILE}


def _refuse_file(path: Path) -> CheckpointError:
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        return CheckpointError(f"{path} cannot be read ({e}); {_RESUME_FIX}")
    if head.startswith(_PICKLE_MAGIC):
        return CheckpointError(
            f"{path} looks like a pickle or torch.save file, not a checkpoint: hope_agent never "
            "unpickles files, since unpickling can run arbitrary code. If you trust it, load it "
            "yourself with torch.load(path, weights_only=True) and re-save with save_checkpoint"
        )
    return CheckpointError(
        f"{path} is a file, not a checkpoint: pass the checkpoint directory that save_checkpoint "
        f"wrote (holding {META_FILE} and {TENSORS_FILE})"
    )


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(
            f"{path} is missing: the checkpoint is incomplete or was not written by "
            f"save_checkpoint; {_RESUME_FIX}"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); {_RESUME_FIX}") from None
    if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not hope_agent checkpoint metadata (no format {CHECKPOINT_FORMAT!r}); "
            "pass a directory written by save_checkpoint"
        )
    version = meta.get("format_version")
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version!r}, this hope_agent "
            f"({__version__}) reads version {CHECKPOINT_VERSION}; load it with the hope_agent "
            f"version that wrote it ({meta.get('library_version')!r})"
        )
    if (
        not isinstance(meta.get("tensors_sha256"), str)
        or not isinstance(meta.get("tensors_bytes"), int)
        or "tree" not in meta
    ):
        raise CheckpointError(f"{path} lacks tensors_sha256, tensors_bytes or tree; {_RESUME_FIX}")
    return meta


def _read_tensors(path: Path, meta: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The verified tensors of ``path`` and the metadata of its header."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing; {_RESUME_FIX}") from None
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read ({e}); {_RESUME_FIX}") from None
    if len(data) != meta["tensors_bytes"]:
        raise CheckpointError(
            f"{path} is truncated or overwritten: {len(data)} bytes, expected "
            f"{meta['tensors_bytes']}; {_RESUME_FIX}"
        )
    if hashlib.sha256(data).hexdigest() != meta["tensors_sha256"]:
        raise CheckpointError(
            f"{path} is corrupted: its sha256 does not match {META_FILE}; {_RESUME_FIX}"
        )
    try:
        tensors = safetensors.torch.load(data)
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"{path} is not a valid safetensors file ({e}); {_RESUME_FIX}"
        ) from None
    # The header parsed above: 8 bytes of little-endian length, then JSON.
    size = int.from_bytes(data[:8], "little")
    metadata = json.loads(data[8 : 8 + size]).get("__metadata__") or {}
    return tensors, metadata


def _verify_meta(path: Path, meta: dict[str, Any], metadata: dict[str, str]) -> None:
    expected = metadata.get("meta_sha256")
    if not isinstance(expected, str):
        raise CheckpointError(
            f"{path.parent / TENSORS_FILE} records no checksum of {META_FILE}; {_RESUME_FIX}"
        )
    try:
        found = _meta_sha256(meta)
    except ValueError:  # a NaN or infinity written in as a bare JSON number
        found = ""
    if found != expected:
        raise CheckpointError(
            f"{path} was edited or corrupted after it was saved: its sha256 does not match the "
            f"one {TENSORS_FILE} records; {_RESUME_FIX}"
        )


class _Decoder:
    """Rebuilds a tree from its JSON skeleton, using each stored tensor exactly once."""

    def __init__(self, tensors: dict[str, Tensor], device: torch.device, meta_path: Path) -> None:
        self.tensors = tensors
        self.unused = set(tensors)
        self.device = device
        self.meta_path = meta_path

    def fail(self, problem: str) -> CheckpointError:
        return CheckpointError(f"{self.meta_path} has a malformed tree ({problem}); {_RESUME_FIX}")

    def _take(self, key: Any) -> Tensor:
        if not isinstance(key, str) or key not in self.unused:
            raise self.fail(f"tensor key {key!r} is not in {TENSORS_FILE} or is used twice")
        self.unused.discard(key)
        return self.tensors[key]

    def decode(self, node: Any) -> Any:
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, list):
            return [self.decode(v) for v in node]
        if not isinstance(node, dict) or len(node) != 1:
            raise self.fail(f"unexpected node {str(node)[:80]}")
        ((tag, body),) = node.items()
        if tag == _TENSOR:
            return self._take(body).to(self.device)
        if tag == _NDARRAY:
            return self._take(body).numpy()
        if tag == _NPSCALAR:
            return self._take(body).numpy()[()]
        if tag == _FLOAT and body in ("nan", "inf", "-inf"):
            return float(body)
        if tag == _TUPLE and isinstance(body, list):
            return tuple(self.decode(v) for v in body)
        if tag == _DICT and isinstance(body, list):
            out: dict[Any, Any] = {}
            for item in body:
                if (
                    not isinstance(item, list)
                    or len(item) != 2
                    or isinstance(item[0], bool)
                    or not isinstance(item[0], (str, int))
                ):
                    raise self.fail(f"bad dict item {str(item)[:80]}")
                out[item[0]] = self.decode(item[1])
            return out
        raise self.fail(f"unknown node {tag!r}")


def load_checkpoint(path: PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Verify and load a checkpoint written by :func:`save_checkpoint`, tensors on ``map_location``.

    Raises :class:`CheckpointError` naming the faulty file for a missing directory or file, a
    truncated or corrupted tensors file (size and sha256 checked), an edited or corrupted
    ``meta.json`` (sha256 checked), bad JSON, an unknown format version, or a pickle /
    torch.save file given instead (refused, never unpickled).
    """
    root = Path(path)
    if not root.exists():
        raise CheckpointError(f"no checkpoint at {root}: the path does not exist; {_RESUME_FIX}")
    if not root.is_dir():
        raise _refuse_file(root)
    meta = _read_meta(root / META_FILE)
    tensors, metadata = _read_tensors(root / TENSORS_FILE, meta)
    _verify_meta(root / META_FILE, meta, metadata)
    decoder = _Decoder(tensors, torch.device(map_location), root / META_FILE)
    tree = decoder.decode(meta["tree"])
    if decoder.unused:
        raise decoder.fail(f"{len(decoder.unused)} stored tensors are not referenced")
    if not isinstance(tree, dict):
        raise decoder.fail("the top level is not a dict")
    return tree


def _natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    # "step_10" sorts after "step_9": digit runs compare as numbers.
    return tuple((1, int(tok)) if tok.isdigit() else (0, tok) for tok in re.split(r"(\d+)", name))


def latest_valid_checkpoint(
    directory: PathLike,
    pattern: str = "*",
    accept: Callable[[dict[str, Any]], bool] | None = None,
) -> Path | None:
    """The newest checkpoint under ``directory`` that loads and verifies, or ``None``.

    Candidates are the directories matching ``pattern`` (a glob relative to ``directory``) that
    hold ``meta.json`` or ``tensors.safetensors``, minus scratch directories of unfinished writes.
    "Newest" is by name in natural order (``step_10`` after ``step_9``), so name checkpoints by a
    step count; modification time only breaks ties, since copies and restores change it. Each
    defective candidate is skipped with a warning, so a resume falls back to the previous good
    one. A checkpoint that loads but whose tree ``accept`` (if given) rejects is passed over
    silently. A missing ``directory`` gives ``None`` (nothing to resume).
    """
    root = Path(directory)
    if not root.exists():
        return None
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a directory; pass the folder holding checkpoints")
    candidates = [
        p
        for p in root.glob(pattern)
        if p.is_dir()
        and not _is_scratch(p)
        and ((p / META_FILE).exists() or (p / TENSORS_FILE).exists())
    ]
    candidates.sort(key=lambda p: (_natural_key(p.name), p.stat().st_mtime), reverse=True)
    for candidate in candidates:
        try:
            tree = load_checkpoint(candidate)
        except CheckpointError as e:
            warnings.warn(f"skipping a defective checkpoint: {e}", stacklevel=2)
            continue
        if accept is None or accept(tree):
            return candidate
    return None


def safe_name(name: str) -> str:
    """``name`` (a task's) usable as a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "task"

"""Atomic writes and verified, pickle-free checkpoints."""

from __future__ import annotations

import hashlib
import json
import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch

from hope_agent.io import (
    META_FILE,
    TENSORS_FILE,
    CheckpointError,
    atomic_path,
    atomic_remove,
    atomic_write_bytes,
    atomic_write_text,
    latest_valid_checkpoint,
    load_checkpoint,
    save_checkpoint,
)


class _Payload:
    """Unpickling this object creates ``marker``: proof that a loader executed pickled code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return open, (str(self.marker), "w")


def _payload(marker: Path) -> bytes:
    return pickle.dumps(_Payload(marker))


def _trained_model_and_optimizer() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(5, 4)).pow(2).sum().backward()
    opt.step()
    return model, opt


def _tree() -> dict[str, Any]:
    model, opt = _trained_model_and_optimizer()
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "obs_rms": {"mean": np.arange(3, dtype=np.float64), "count": np.float64(7.0)},
        "rng": {
            "torch": torch.get_rng_state(),
            "numpy": np.random.get_state(legacy=False),  # noqa: NPY002
            "generator": np.random.default_rng(5).bit_generator.state,  # 128-bit ints
        },
        "progress": {"task": 2, "env_steps": 123_456, "done": False, "note": None, "name": "cw"},
        "mixed_keys": {1: "int key", "1": "str key"},
        "odd_floats": [math.inf, -math.inf, 0.5],
        "shapes": (torch.zeros(0), np.zeros((2, 0), dtype=np.int16), torch.tensor(3)),
        "dtypes": [
            torch.ones(2, dtype=torch.bfloat16),
            np.array([1, 2], dtype=np.uint32),
            np.array([True, False]),
            np.int8(-3),
        ],
        "empty": {"list": [], "dict": {}, "tuple": ()},
        # Both flatten to the key "clash/a/b": stored under distinct keys all the same.
        "clash": {"a/b": torch.ones(1), "a": {"b": torch.zeros(1)}},
    }


def _assert_same(a: Any, b: Any, where: str = "tree") -> None:
    # Mappings (e.g. the OrderedDict of a state_dict) come back as plain dicts.
    expected = dict if isinstance(a, dict) else type(a)
    assert type(b) is expected, f"{where}: {type(a)} != {type(b)}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, dict):
        assert list(a) == list(b), where  # same keys, same key types, same order
        for k in a:
            _assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), where
    else:
        assert a == b, where


def test_round_trip_keeps_every_value_and_type(tmp_path: Path) -> None:
    tree = _tree()
    tree["odd_floats"].append(math.nan)
    path = save_checkpoint(tmp_path / "ckpt", tree)
    assert sorted(p.name for p in path.iterdir()) == [META_FILE, TENSORS_FILE]
    _assert_same(tree, load_checkpoint(path))


def test_restored_optimizer_and_rng_continue_identically(tmp_path: Path) -> None:
    model, opt = _trained_model_and_optimizer()
    gen = np.random.default_rng(11)
    np.random.seed(11)  # noqa: NPY002 -- the trainer checkpoints the legacy global RNG too
    save_checkpoint(
        tmp_path / "ckpt",
        {
            "model": model.state_dict(),
            "opt": opt.state_dict(),
            "gen": gen.bit_generator.state,
            "np": np.random.get_state(legacy=False),  # noqa: NPY002
        },
    )
    loaded = load_checkpoint(tmp_path / "ckpt")
    model2, opt2 = _trained_model_and_optimizer()  # different weights and moments
    model2.load_state_dict(loaded["model"])
    opt2.load_state_dict(loaded["opt"])
    x = torch.randn(5, 4)
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m(x).pow(2).sum().backward()
        o.step()
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(p, q)

    expected_gen, expected_np = gen.random(4), np.random.random(4)  # noqa: NPY002
    gen2 = np.random.default_rng(0)
    gen2.bit_generator.state = loaded["gen"]
    np.random.set_state(loaded["np"])  # noqa: NPY002
    np.testing.assert_array_equal(gen2.random(4), expected_gen)
    np.testing.assert_array_equal(np.random.random(4), expected_np)  # noqa: NPY002


def test_save_is_deterministic_and_replaces_an_old_checkpoint(tmp_path: Path) -> None:
    tree = {"w": torch.arange(6.0), "step": 1}
    save_checkpoint(tmp_path / "a", tree)
    save_checkpoint(tmp_path / "b", tree)
    assert (tmp_path / "a" / TENSORS_FILE).read_bytes() == (
        tmp_path / "b" / TENSORS_FILE
    ).read_bytes()
    save_checkpoint(tmp_path / "a", {"w": torch.zeros(2), "step": 2})
    assert load_checkpoint(tmp_path / "a")["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]  # no scratch left over


def test_tensors_are_moved_to_map_location(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "c", {"w": torch.ones(3), "a": np.ones(2)})
    loaded = load_checkpoint(tmp_path / "c", map_location="meta")
    assert loaded["w"].device.type == "meta"
    assert isinstance(loaded["a"], np.ndarray)


@pytest.mark.parametrize(
    "bad",
    [
        {"x": {1, 2}},
        {"x": np.array(["a", "b"])},
        {"x": {(1, 2): 3}},
        {"x": Path("p")},
    ],
)
def test_unsupported_values_are_refused_on_save(tmp_path: Path, bad: dict[str, Any]) -> None:
    with pytest.raises(TypeError, match=r"tree\['x'\]"):
        save_checkpoint(tmp_path / "c", bad)
    assert list(tmp_path.iterdir()) == []


def test_save_refuses_to_overwrite_something_else(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "events.log").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a checkpoint directory"):
        save_checkpoint(run, {"x": 1})
    assert (run / "events.log").read_text() == "keep me"


def _saved(tmp_path: Path, name: str = "ckpt") -> Path:
    return save_checkpoint(tmp_path / name, {"w": torch.randn(64), "step": 3})


def test_truncated_tensors_file_is_detected(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    data = (path / TENSORS_FILE).read_bytes()
    (path / TENSORS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"{TENSORS_FILE} is truncated"):
        load_checkpoint(path)


def test_flipped_byte_is_detected(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    data = bytearray((path / TENSORS_FILE).read_bytes())
    data[-5] ^= 0x01  # inside the tensor payload: still a parseable safetensors file
    (path / TENSORS_FILE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{TENSORS_FILE} is corrupted"):
        load_checkpoint(path)


def test_metadata_defects_are_named(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    meta = json.loads((path / META_FILE).read_text())
    (path / META_FILE).write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(path)
    (path / META_FILE).write_text('{"format": ')
    with pytest.raises(CheckpointError, match=f"{META_FILE} is not valid JSON"):
        load_checkpoint(path)
    (path / META_FILE).unlink()
    with pytest.raises(CheckpointError, match=f"{META_FILE} is missing"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")


def _forge(path: Path, meta: dict[str, Any], checksum: str | None) -> None:
    """Rewrite a checkpoint with ``meta`` and consistent checksums, as a deliberate forger would:
    the tensors file's metadata gets ``checksum`` (the meta.json checksum, or none at all)."""
    tensors = safetensors.torch.load((path / TENSORS_FILE).read_bytes())
    metadata = None if checksum is None else {"meta_sha256": checksum}
    data = safetensors.torch.save(tensors, metadata=metadata)
    (path / TENSORS_FILE).write_bytes(data)
    meta.update(tensors_sha256=hashlib.sha256(data).hexdigest(), tensors_bytes=len(data))
    (path / META_FILE).write_text(json.dumps(meta))


def _canonical_sha256(meta: dict[str, Any]) -> str:
    body = {k: v for k, v in meta.items() if k not in ("tensors_sha256", "tensors_bytes")}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def test_tree_referencing_a_missing_tensor_is_refused(tmp_path: Path) -> None:
    # Even with checksums that match, the tree is checked against the stored tensors.
    path = _saved(tmp_path)
    meta = json.loads((path / META_FILE).read_text())
    meta["tree"] = {"__dict__": [["w", {"__tensor__": "nope"}]]}
    _forge(path, meta, _canonical_sha256(meta))
    with pytest.raises(CheckpointError, match="malformed tree"):
        load_checkpoint(path)


def _edit_step(meta: dict[str, Any], value: Any) -> None:
    items = meta["tree"]["__dict__"]
    assert items[1][0] == "step"
    items[1][1] = value


@pytest.mark.parametrize("value", [4, 3.0, float("nan")], ids=["edited", "retyped", "nan"])
def test_edited_meta_json_is_detected_and_named(tmp_path: Path, value: Any) -> None:
    path = _saved(tmp_path)
    meta = json.loads((path / META_FILE).read_text())
    # Layout alone is free: the checksum covers the canonical JSON, not the bytes.
    (path / META_FILE).write_text(json.dumps(meta, indent=2))
    assert load_checkpoint(path)["step"] == 3
    _edit_step(meta, value)  # e.g. a global step or learning rate changed by hand
    (path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=f"{META_FILE} was edited or corrupted"):
        load_checkpoint(path)


def test_tensors_file_without_a_meta_checksum_is_refused(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    _forge(path, json.loads((path / META_FILE).read_text()), checksum=None)
    with pytest.raises(CheckpointError, match=f"{TENSORS_FILE} records no checksum of {META_FILE}"):
        load_checkpoint(path)


def test_planted_pickle_file_is_refused_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = _payload(marker)
    # The payload is live: unpickling it really creates a marker.
    probe = tmp_path / "probe"
    pickle.loads(_payload(probe)).close()
    assert probe.exists()

    planted = tmp_path / "model.pt"
    planted.write_bytes(payload)
    with pytest.raises(CheckpointError, match="pickle or torch.save file"):
        load_checkpoint(planted)
    assert not marker.exists()


def test_torch_save_file_is_refused(tmp_path: Path) -> None:
    planted = tmp_path / "model.pt"
    torch.save({"w": torch.ones(2)}, planted)
    with pytest.raises(CheckpointError, match="never unpickles"):
        load_checkpoint(planted)


def test_pickle_inside_a_checkpoint_directory_is_not_executed(tmp_path: Path) -> None:
    # Even a payload whose checksum matches the metadata only reaches the safetensors parser.
    marker = tmp_path / "pwned"
    path = _saved(tmp_path)
    payload = _payload(marker)
    (path / TENSORS_FILE).write_bytes(payload)
    meta = json.loads((path / META_FILE).read_text())
    meta["tensors_bytes"] = len(payload)
    meta["tensors_sha256"] = hashlib.sha256(payload).hexdigest()
    (path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_checkpoint(path)
    assert not marker.exists()


def test_latest_valid_checkpoint_skips_corrupted_ones(tmp_path: Path) -> None:
    for step in (9, 10, 11):
        save_checkpoint(tmp_path / f"step_{step}", {"step": step, "w": torch.full((4,), step)})
    (tmp_path / "step_11" / TENSORS_FILE).write_bytes(b"")  # crashed mid-copy
    (tmp_path / "tensorboard").mkdir()  # not a checkpoint: ignored silently
    (tmp_path / "step_99.pt").write_bytes(_payload(tmp_path / "pwned"))  # a file: ignored
    with pytest.warns(UserWarning, match="step_11"):
        found = latest_valid_checkpoint(tmp_path)
    # Natural order: step_10 is newer than step_9, and step_11 is defective.
    assert found == tmp_path / "step_10"
    assert not (tmp_path / "pwned").exists()
    assert latest_valid_checkpoint(tmp_path, pattern="step_9") == tmp_path / "step_9"


def test_latest_valid_checkpoint_falls_back_past_an_edited_meta_json(tmp_path: Path) -> None:
    for step in (1, 2):
        save_checkpoint(tmp_path / f"step_{step}", {"step": step})
    meta_file = tmp_path / "step_2" / META_FILE
    meta_file.write_text(meta_file.read_text().replace('["step", 2]', '["step", 7]'))
    with pytest.warns(UserWarning, match=f"step_2.{META_FILE} was edited"):
        assert latest_valid_checkpoint(tmp_path) == tmp_path / "step_1"


def test_latest_valid_checkpoint_passes_over_rejected_ones(tmp_path: Path) -> None:
    for step in (1, 2, 3):
        save_checkpoint(tmp_path / f"step_{step}", {"step": step, "clean": step != 3})
    found = latest_valid_checkpoint(tmp_path, accept=lambda tree: tree["clean"])
    assert found == tmp_path / "step_2"
    assert latest_valid_checkpoint(tmp_path, accept=lambda tree: False) is None


def test_atomic_remove(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "step_1", {"w": torch.ones(3)})
    atomic_remove(path)
    assert not path.exists() and list(tmp_path.iterdir()) == []
    atomic_remove(path)  # already gone: nothing to do
    atomic_write_text(tmp_path / "a.txt", "x")
    atomic_remove(tmp_path / "a.txt")
    assert list(tmp_path.iterdir()) == []


def test_latest_valid_checkpoint_when_there_is_none(tmp_path: Path) -> None:
    assert latest_valid_checkpoint(tmp_path / "missing") is None
    assert latest_valid_checkpoint(tmp_path) is None
    bad = _saved(tmp_path, "step_1")
    (bad / META_FILE).write_text("{}")
    with pytest.warns(UserWarning, match="step_1"):
        assert latest_valid_checkpoint(tmp_path) is None


def test_atomic_writes(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "notes.txt"
    atomic_write_text(target, "hello")
    atomic_write_bytes(target, b"world")
    assert target.read_bytes() == b"world"
    assert [p.name for p in target.parent.iterdir()] == ["notes.txt"]


def test_atomic_path_keeps_the_suffix_and_the_old_file_on_error(tmp_path: Path) -> None:
    target = tmp_path / "plot.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]


def test_atomic_path_removes_a_partial_directory_on_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "ckpt") as tmp:
        tmp.mkdir()
        (tmp / "part").write_bytes(b"x")
        raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_requires_a_write(tmp_path: Path) -> None:
    with (
        pytest.raises(FileNotFoundError, match="nothing was written"),
        atomic_path(tmp_path / "x.txt"),
    ):
        pass
    assert list(tmp_path.iterdir()) == []

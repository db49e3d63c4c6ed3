"""Plots (retention heatmap, curves) and videos (mp4/gif writing, grid tiling, blank check)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import imageio.v3 as iio3
import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from hope_agent.video import is_blank, tile_videos, write_video
from hope_agent.viz import plot_curves, plot_perf_matrix

NAMES = ["reach", "push-wall", "faucet-close"]


def _image(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def _only(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_perf_matrix_plot_depends_on_the_values(tmp_path: Path) -> None:
    perf = np.array([[0.9, 0.1, 0.0], [0.5, 0.8, 0.2], [0.3, 0.6, 1.0]])
    a = plot_perf_matrix(perf, NAMES, tmp_path / "a.png")
    b = plot_perf_matrix(perf[::-1], NAMES, tmp_path / "b.png")
    img_a, img_b = _image(a), _image(b)
    assert img_a.shape == img_b.shape and img_a.shape[0] > 200
    assert not is_blank([img_a])
    assert not np.array_equal(img_a, img_b)
    assert _only(tmp_path) == ["a.png", "b.png"]  # no temporary files left


def test_perf_matrix_plot_of_a_partial_run(tmp_path: Path) -> None:
    # Rows of tasks not trained yet are NaN: drawn blank, not an error.
    perf = np.full((3, 3), np.nan)
    perf[0] = [0.7, 0.1, 0.0]
    out = plot_perf_matrix(perf, NAMES, tmp_path / "partial.svg", title="after task 1")
    assert out.read_text().lstrip().startswith("<?xml")


def test_perf_matrix_plot_validates_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="square"):
        plot_perf_matrix(np.zeros((2, 3)), NAMES, tmp_path / "x.png")
    with pytest.raises(ValueError, match="one name per task"):
        plot_perf_matrix(np.zeros((3, 3)), NAMES[:2], tmp_path / "x.png")
    assert _only(tmp_path) == []


def test_curves_plot(tmp_path: Path) -> None:
    steps = np.arange(31) * 1000
    curves = np.clip(np.cumsum(np.random.default_rng(0).normal(0, 0.1, (31, 3)), axis=0), 0, 1)
    path = plot_curves(steps, curves, NAMES, [0, 10_000, 20_000], tmp_path / "curves.png")
    img = _image(path)
    assert img.shape[1] > img.shape[0] > 200
    assert not is_blank([img])
    # Stage labels may differ from task names (a curriculum that repeats its tasks).
    plot_curves(
        steps,
        curves,
        NAMES,
        [0, 8_000, 16_000, 24_000],
        tmp_path / "stages.pdf",
        ylabel="success",
        stage_names=["reach", "push-wall", "faucet-close", "reach (again)"],
    )
    assert (tmp_path / "stages.pdf").read_bytes().startswith(b"%PDF")


def test_curves_plot_validates_input(tmp_path: Path) -> None:
    steps, curves = np.arange(4), np.zeros((4, 3))
    with pytest.raises(ValueError, match=r"\(T, N\)"):
        plot_curves(steps[:3], curves, NAMES, [0, 1, 2], tmp_path / "x.png")
    with pytest.raises(ValueError, match="non-decreasing"):
        plot_curves(steps, curves, NAMES, [0, 2, 1], tmp_path / "x.png")
    with pytest.raises(ValueError, match="one name per column"):
        plot_curves(steps, curves, NAMES[:1], [0, 1, 2], tmp_path / "x.png")


def _decode_mp4(path: Path) -> np.ndarray:
    """All frames of an mp4, ``(T, H, W, 3)`` uint8, decoded by imageio's bundled ffmpeg.

    imageio's own ffmpeg reader leaves a pipe open once ffmpeg has exited (a ResourceWarning),
    so we run the same binary directly.
    """
    proc = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)]
        + ["-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True,
        check=True,
    )
    size = re.search(r"Video: .*?, (\d+)x(\d+)", proc.stderr.decode())
    assert size is not None, proc.stderr.decode()
    w, h = int(size.group(1)), int(size.group(2))
    return np.frombuffer(proc.stdout, dtype=np.uint8).reshape(-1, h, w, 3)


def _frames(n: int, h: int = 48, w: int = 64) -> list[np.ndarray]:
    # Flat colours survive lossy coding almost exactly, so read-back values can be compared.
    return [np.full((h, w, 3), (10 * t, 200 - 10 * t, 90), dtype=np.uint8) for t in range(n)]


def test_mp4_round_trip(tmp_path: Path) -> None:
    frames = _frames(12)
    path = write_video(tmp_path / "rollout.mp4", frames, fps=10)
    back = _decode_mp4(path)
    assert back.shape == (12, 48, 64, 3)
    assert np.abs(back.astype(int) - np.stack(frames)).max() <= 4
    assert _only(tmp_path) == ["rollout.mp4"]


def test_mp4_with_odd_sides_is_padded_to_even(tmp_path: Path) -> None:
    path = write_video(tmp_path / "odd.mp4", _frames(3, h=47, w=63))
    assert _decode_mp4(path).shape == (3, 48, 64, 3)


def test_gif_round_trip(tmp_path: Path) -> None:
    frames = _frames(6)
    path = write_video(tmp_path / "rollout.gif", frames, fps=20)
    back = iio3.imread(path, index=None)
    assert back.shape == (6, 48, 64, 3)
    np.testing.assert_array_equal(back, np.stack(frames))  # few colours: no palette loss


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        ([], "empty"),
        ([np.zeros((8, 8, 3), dtype=np.float32)], "uint8"),
        ([np.zeros((8, 8), dtype=np.uint8)], r"\(H, W, 3\)"),
        ([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 6, 3), np.uint8)], r"frames\[1\]"),
    ],
)
def test_write_video_rejects_bad_frames(
    tmp_path: Path, frames: list[np.ndarray], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        write_video(tmp_path / "bad.mp4", frames)
    assert _only(tmp_path) == []


def test_write_video_rejects_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="suffix"):
        write_video(tmp_path / "bad.avi", _frames(2))


def test_tile_videos_grid_and_padding() -> None:
    videos = [_frames(5), _frames(2), _frames(4), _frames(1), _frames(3)]
    grid = tile_videos(videos)  # 5 videos -> 3 columns, 2 rows
    assert len(grid) == 5
    assert all(f.shape == (96, 192, 3) for f in grid)
    # Tile (0, 1) holds video 1, which repeats its last frame once it has ended.
    np.testing.assert_array_equal(grid[4][0:48, 64:128], videos[1][-1])
    np.testing.assert_array_equal(grid[3][48:96, 0:64], videos[3][0])  # video 3 at (1, 0)
    np.testing.assert_array_equal(grid[0][48:96, 128:192], 0)  # the empty cell is black
    assert all(f.shape == (240, 64, 3) for f in tile_videos(videos, ncols=1))


def test_tile_videos_labels_stay_in_their_tile_corner() -> None:
    videos = [_frames(2), _frames(2)]
    plain = tile_videos(videos, ncols=2)
    labelled = tile_videos(videos, ncols=2, labels=["fine-tuning", "HOPE"])
    changed = np.any(labelled[0] != plain[0], axis=-1)  # (H, 2W)
    assert changed[:16, :64].any() and changed[:16, 64:].any()
    assert not changed[24:].any()  # only the top strip of each tile is drawn on


def test_tile_videos_validates_input() -> None:
    with pytest.raises(ValueError, match="one size"):
        tile_videos([_frames(2), _frames(2, h=32)])
    with pytest.raises(ValueError, match="labels"):
        tile_videos([_frames(2)], labels=["a", "b"])
    with pytest.raises(ValueError, match="empty"):
        tile_videos([])


def test_is_blank() -> None:
    assert is_blank([np.zeros((8, 8, 3), np.uint8)] * 3)
    assert is_blank(_frames(3))  # each frame one flat colour, even if colours change over time
    noisy = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    assert not is_blank([np.zeros((8, 8, 3), np.uint8), noisy])

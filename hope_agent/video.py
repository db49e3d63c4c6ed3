"""Writing rollout videos (mp4 or gif) and tiling several rollouts into one grid video.

Frames are ``(H, W, 3)`` uint8 RGB arrays, as ``MujocoEnv.render()`` returns them. Files are
written through :func:`hope_agent.io.atomic_path`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from hope_agent.io import PathLike, atomic_path

Frame = np.ndarray
_SUFFIXES = (".mp4", ".gif")


def _check_frames(frames: Sequence[Frame], name: str = "frames") -> list[Frame]:
    if len(frames) == 0:
        raise ValueError(f"{name} is empty; pass at least one (H, W, 3) uint8 frame")
    out = [np.asarray(f) for f in frames]
    first = out[0]
    for t, f in enumerate(out):
        if f.dtype != np.uint8 or f.ndim != 3 or f.shape[2] != 3 or f.shape != first.shape:
            raise ValueError(
                f"{name}[{t}] has shape {f.shape} and dtype {f.dtype}; every frame must be an "
                f"(H, W, 3) uint8 RGB array of one size ({first.shape}, from {name}[0]); convert "
                "float images with (img * 255).clip(0, 255).astype(np.uint8)"
            )
    return out


def write_video(path: PathLike, frames: Sequence[Frame], fps: float = 30) -> Path:
    """Write ``frames`` to ``path`` atomically: H.264 mp4 or looping gif, chosen by the suffix.

    mp4 needs even sides (yuv420p), so an odd height or width is padded by one edge row or
    column. A gif stores durations in 1/100 s, so ``fps`` is rounded to that, and Pillow merges
    consecutive identical frames into one longer frame. Returns the written path.
    """
    target = Path(path)
    suffix = target.suffix.lower()
    if suffix not in _SUFFIXES:
        raise ValueError(f"cannot write video {target}: the suffix must be one of {_SUFFIXES}")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    checked = _check_frames(frames)
    with atomic_path(target) as tmp:
        if suffix == ".mp4":
            _write_mp4(tmp, checked, fps)
        else:
            _write_gif(tmp, checked, fps)
    return target


def _write_mp4(path: Path, frames: list[Frame], fps: float) -> None:
    # Imported here so that GIF output, and every module importing this one, work without ffmpeg.
    import imageio_ffmpeg

    h, w, _ = frames[0].shape
    pad = ((0, h % 2), (0, w % 2), (0, 0))
    writer = imageio_ffmpeg.write_frames(
        str(path),
        size=(w + w % 2, h + h % 2),
        fps=fps,
        codec="libx264",
        pix_fmt_out="yuv420p",
        # We already made the sides even; a larger block would make ffmpeg rescale the frames.
        macro_block_size=1,
        ffmpeg_log_level="error",
    )
    writer.send(None)  # start the ffmpeg process
    try:
        for frame in frames:
            writer.send(np.ascontiguousarray(np.pad(frame, pad, mode="edge")))
    finally:
        writer.close()


def _write_gif(path: Path, frames: list[Frame], fps: float) -> None:
    images = [Image.fromarray(f) for f in frames]
    images[0].save(
        path,
        format="GIF",
        save_all=True,
        append_images=images[1:],
        duration=max(10, round(1000.0 / fps / 10.0) * 10),
        loop=0,
    )


def _label_masks(
    labels: Sequence[str], tile_h: int, tile_w: int, ncols: int, nrows: int
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (H, W) masks of the grid: label text pixels, and the dark box behind each label."""
    text = Image.new("L", (tile_w * ncols, tile_h * nrows), 0)
    box = Image.new("L", text.size, 0)
    font = ImageFont.load_default(size=max(10, tile_h // 24))
    margin = 3
    for k, label in enumerate(labels):
        # Drawn on a tile-sized canvas first, so a long label is clipped at its own tile's edge.
        tile_text = Image.new("L", (tile_w, tile_h), 0)
        draw = ImageDraw.Draw(tile_text)
        draw.text((margin, margin), label, fill=255, font=font)
        _, _, right, bottom = draw.textbbox((margin, margin), label, font=font)
        tile_box = Image.new("L", (tile_w, tile_h), 0)
        ImageDraw.Draw(tile_box).rectangle((0, 0, right + margin, bottom + margin), fill=255)
        origin = ((k % ncols) * tile_w, (k // ncols) * tile_h)
        text.paste(tile_text, origin)
        box.paste(tile_box, origin)
    return np.asarray(text) > 127, np.asarray(box) > 0


def tile_videos(
    videos: Sequence[Sequence[Frame]],
    ncols: int | None = None,
    labels: Sequence[str] | None = None,
) -> list[Frame]:
    """Lay several videos side by side in a grid, one output frame per time step.

    All videos must share one frame size. ``ncols`` defaults to ``ceil(sqrt(n))`` (capped at the
    number of videos); empty cells are black. A video shorter than the longest repeats its last
    frame. ``labels`` (one per video) are drawn at each tile's top-left corner.

    Returns:
        ``max_len`` frames of shape ``(nrows * H, ncols * W, 3)``.
    """
    if len(videos) == 0:
        raise ValueError("videos is empty; pass at least one video (a sequence of frames)")
    clips = [_check_frames(v, f"videos[{k}]") for k, v in enumerate(videos)]
    tile_shape = clips[0][0].shape
    for k, clip in enumerate(clips):
        if clip[0].shape != tile_shape:
            raise ValueError(
                f"videos[{k}] has frames of shape {clip[0].shape}, videos[0] {tile_shape}; "
                "render every video at one size to tile them"
            )
    n = len(clips)
    if ncols is not None and ncols < 1:
        raise ValueError(f"ncols must be >= 1 or None, got {ncols}")
    cols = min(ncols, n) if ncols is not None else math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    if labels is not None and len(labels) != n:
        raise ValueError(f"labels needs one entry per video ({n}), got {len(labels)}")
    h, w, _ = tile_shape
    masks = None if labels is None else _label_masks(labels, h, w, cols, rows)
    out: list[Frame] = []
    for t in range(max(len(c) for c in clips)):
        grid = np.zeros((rows * h, cols * w, 3), dtype=np.uint8)  # (rows*H, cols*W, 3)
        for k, clip in enumerate(clips):
            r, col = divmod(k, cols)
            grid[r * h : (r + 1) * h, col * w : (col + 1) * w] = clip[min(t, len(clip) - 1)]
        if masks is not None:
            text, box = masks
            grid[box] = grid[box] // 3  # darken behind the text so it reads on any background
            grid[text] = 255
        out.append(grid)
    return out


def is_blank(frames: Sequence[Frame], atol: int = 2) -> bool:
    """True when every frame is (nearly) one flat colour: each channel spans at most ``atol``.

    Catches renders that silently came back black or empty (e.g. a broken EGL context).
    """
    return all(int(np.ptp(f.reshape(-1, 3), axis=0).max()) <= atol for f in _check_frames(frames))

"""The HTML run report and comparison page: their content, and how a real browser renders them.

The browser tests drive headless Chromium over the DevTools protocol on a pipe (no port, no
network): they load the page, wait for its videos' metadata, read the rendered heatmap, tables
and videos back, and collect every console message, exception and request. They skip where no
Chromium is installed (``.ci/run`` installs the Debian package).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import matplotlib
import numpy as np
import pytest

from hope_agent.compare import write_comparison
from hope_agent.html_report import REPORT_NAME, main, read_curves, stage_starts, write_run_report
from hope_agent.video import write_video

TASKS = ["reach_east", "reach<west>"]  # markup in a name must be escaped, not rendered
PERF = [[0.8, 0.1], [0.25, 1.0]]
WM = [[0.3, 0.6], [0.4, 0.2]]


def _matrix_csv(matrix: list[list[float]], tasks: list[str] = TASKS) -> str:
    lines = ["after," + ",".join(tasks)]
    for name, row in zip(tasks, matrix, strict=True):
        lines.append(name + "," + ",".join("" if np.isnan(v) else repr(v) for v in row))
    return "\n".join(lines) + "\n"


def _frames(color: tuple[int, int, int], n: int = 12) -> list[np.ndarray]:
    """Moving square on a coloured background: a real clip for the encoder."""
    frames = []
    for t in range(n):
        frame = np.zeros((48, 64, 3), dtype=np.uint8)
        frame[:] = color
        frame[10:26, 2 * t : 2 * t + 16] = 255
        frames.append(frame)
    return frames


def _write_run(
    root: Path,
    *,
    seed: int = 0,
    perf: list[list[float]] = PERF,
    videos: bool = True,
    normalisation: dict[str, Any] | None = None,
    lr: float | None = None,
) -> Path:
    """A finished 2-task run directory with the files the trainer writes."""
    run = root / f"run{seed}" if lr is None else root / f"run{seed}_lr{lr}"
    run.mkdir(parents=True)
    entries = "".join(f"  - {{id: hope/PointReach-v0, steps: null, name: '{t}'}}\n" for t in TASKS)
    (run / "config.yaml").write_text(
        f"curriculum:\n  name: fast\n  tasks:\n{entries}model:\n  name: gru\n"
        f"method: finetune\nseed: {seed}\nsteps_per_task: 2048\n"
        "eval:\n  every: 1024\n  episodes: 2\nagent:\n  task_id: false\n"
        + ("" if lr is None else f"ppo:\n  lr: {lr}\n")
    )
    p = np.array(perf)
    metrics: dict[str, Any] = {
        "stages_completed": 2,
        "tasks": TASKS,
        "notes": ["forward transfer skipped: no `eval.reference_auc`"],
        "average_performance": float(p[-1].mean()),
        "forgetting": float(p[0, 0] - p[1, 0]),
        "backward_transfer": float(p[1, 0] - p[0, 0]),
        "forward_transfer": None,
        "world_model_error": 0.3,
        "world_model_forgetting": 0.1,
        "in_context_gain": None,
        "env_steps": 4096,
        "perf_matrix": perf,
    }
    if normalisation is not None:
        metrics["normalisation"] = normalisation
    (run / "metrics.json").write_text(json.dumps(metrics))
    (run / "perf_matrix.csv").write_text(_matrix_csv(perf))
    (run / "wm_error_matrix.csv").write_text(_matrix_csv(WM))
    lines = ["global_step,stage,task_end,task_index,task,perf,mean_return,wm_error"]
    for step, stage, end, row in (
        (1024, 0, 0, 0),
        (2048, 0, 1, 0),
        (3072, 1, 0, 1),
        (4096, 1, 1, 1),
    ):
        for j, task in enumerate(TASKS):
            value = perf[row][j] * (0.5 if not end else 1.0)
            lines.append(f'{step},{stage},{end},{j},"{task}",{value},{-50 + 10 * value},0.4')
    (run / "curves.csv").write_text("\n".join(lines) + "\n")
    if videos:
        for stage in range(2):
            for j, task in enumerate(TASKS):
                color = (40 * (j + 1), 80, 160 - 60 * stage)
                write_video(run / f"videos/stage_{stage:02d}/{task}.mp4", _frames(color), fps=10)
        write_video(run / "videos/stage_01/all_tasks.gif", _frames((0, 120, 0)), fps=10)
    return run


def test_report_holds_the_run_and_needs_no_network(tmp_path: Path) -> None:
    how = {TASKS[0]: "success", TASKS[1]: {"kind": "reference", "random": -80.0, "best": -5.0}}
    run = _write_run(tmp_path, normalisation=how)
    path = write_run_report(run)
    assert path == run / REPORT_NAME
    page = path.read_text()
    # Every cell of the heatmap is in the table, coloured on viridis' [0, 1] scale.
    heatmap = page[
        page.index("id='perf-matrix'") : page.index("</table>", page.index("perf-matrix"))
    ]
    cells = re.findall(
        r"<td style='background:(#[0-9a-f]{6});color:#(?:000|fff)'>([0-9.]+)</td>", heatmap
    )
    assert [float(v) for _, v in cells] == [v for row in PERF for v in row]
    top = matplotlib.colors.to_hex(matplotlib.colormaps["viridis"](1.0))
    assert dict((v, c) for c, v in cells)["1.00"] == top
    # The names are escaped; the normalisation of each task is shown beside it.
    assert "reach<west>" not in page and "reach&lt;west&gt;" in page
    assert "reference (random=-80.000, best=-5.000)" in page and ">success<" in page
    assert "<code>eval.reference_auc</code>" in page  # notes keep their code spans
    # Videos are embedded: the data URI decodes to the very file.
    mp4 = (run / "videos/stage_00/reach_east.mp4").read_bytes()
    assert f"data:video/mp4;base64,{base64.b64encode(mp4).decode()}" in page
    assert page.count("<video ") == 4 and page.count("data:image/gif;base64,") == 1
    # No network: every source is embedded, nothing points outside the page.
    sources = re.findall(r"(?:src|href)='([^']*)'", page)
    assert sources and all(s.startswith("data:") for s in sources)
    assert write_run_report(run).read_text() == page  # the same run writes the same page
    # Stage 1 starts where stage 0's task-end evaluation was taken.
    assert stage_starts(read_curves(run / "curves.csv")) == [0.0, 2048.0]


def test_report_links_videos_past_the_budget_and_fails_clearly(tmp_path: Path) -> None:
    run = _write_run(tmp_path)
    page = write_run_report(run, max_video_bytes=100).read_text()
    linked = re.findall(r"<video [^>]*src='([^']+)'", page)
    assert len(linked) == 4 and all((run / unquote(src)).is_file() for src in linked)
    assert "keep this page in its run directory" in page
    # A partial run: what it has, no crash; a run without videos says so.
    bare = _write_run(tmp_path / "bare", videos=False, perf=[[0.5, 0.0], [np.nan, np.nan]])
    page = write_run_report(bare).read_text()
    assert "recorded no rollout videos" in page and "<td class='empty'></td>" in page
    assert "metrics.json states no per-task normalisation" in page
    with pytest.raises(FileNotFoundError, match="holds no metrics.json"):
        write_run_report(tmp_path / "nothing")
    assert main([str(tmp_path / "nothing")]) == 1
    assert main([str(run)]) == 0


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    return None


class DevTools:
    """Headless Chromium driven over ``--remote-debugging-pipe`` (fds 3 and 4 of the child)."""

    def __init__(self, binary: str, profile: Path) -> None:
        # Pipe ends far above 4, so that putting them at 3 and 4 in the child clobbers none.
        to_child, self._out = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in os.pipe())
        self._in, from_child = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in os.pipe())

        def child_fds() -> None:
            os.dup2(to_child, 3)
            os.dup2(from_child, 4)

        args = [
            binary,
            "--headless",
            "--remote-debugging-pipe",
            "--no-sandbox",  # CI runs as root, where the sandbox refuses to start
            "--disable-gpu",
            "--no-first-run",
            "--mute-audio",
            f"--user-data-dir={profile}",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            args,
            preexec_fn=child_fds,
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_child)
        os.close(from_child)
        self._buffer = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._in], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._in, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        """Send one command and return its result; events that arrive meanwhile are kept."""
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + 60.0
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 60.0) -> None:
        """Wait until an event named ``method`` arrived."""
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._read(deadline))

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.call("Browser.close")
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._in)
        os.close(self._out)


# Run in the page once it has loaded: waits for every video's metadata, then reads back what
# was rendered.
_PROBE = """
(async () => {
  const videos = [...document.querySelectorAll('video')];
  await Promise.all(videos.map(v => v.readyState >= 1 ? null : new Promise(done => {
    v.addEventListener('loadedmetadata', done); v.addEventListener('error', done);
    setTimeout(done, 20000);
  })));
  const table = id => { const t = document.getElementById(id); return t === null ? null :
    [...t.rows].map(r => [...r.cells].map(c =>
      [c.textContent, getComputedStyle(c).backgroundColor]));
  };
  const box = id => { const e = document.getElementById(id); return e === null ? null :
    e.getBoundingClientRect().height; };
  return {
    heatmap: table('perf-matrix'), metrics: table('metrics'), comparison: table('comparison'),
    heatmapHeight: box('perf-matrix'),
    videos: videos.map(v => ({width: v.videoWidth, height: v.videoHeight, duration: v.duration,
                              error: v.error === null ? null : v.error.code,
                              shown: v.getBoundingClientRect().width})),
    images: [...document.images].map(i => ({alt: i.alt, loaded: i.complete && i.naturalWidth > 0})),
  };
})()
"""


def _render(page: Path, tmp_path: Path) -> tuple[dict[str, Any], list[str], list[str]]:
    """Load ``page`` in headless Chromium: (what the probe read, console problems, URLs
    requested)."""
    binary = _chromium()
    if binary is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    browser = DevTools(binary, tmp_path / "profile")
    try:
        targets = browser.call("Target.getTargets")["targetInfos"]
        pages = [t["targetId"] for t in targets if t["type"] == "page"]
        target = (
            pages[0]
            if pages
            else browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        )
        session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Runtime", "Log", "Page", "Network"):
            browser.call(f"{domain}.enable", session=session)
        browser.events.clear()
        browser.call("Page.navigate", {"url": page.resolve().as_uri()}, session)
        browser.wait_event("Page.loadEventFired")
        result = browser.call(
            "Runtime.evaluate",
            {"expression": _PROBE, "awaitPromise": True, "returnByValue": True},
            session,
        )
        assert "exceptionDetails" not in result, result.get("exceptionDetails")
        probe = result["result"]["value"]
    finally:
        browser.close()
    problems = []
    for event in browser.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params["type"] in (
            "error",
            "warning",
            "assert",
        ):
            problems.append(f"console.{params['type']}: {params['args']}")
        elif method == "Runtime.exceptionThrown":
            problems.append(f"exception: {params['exceptionDetails']}")
        elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
            problems.append(f"log: {params['entry']['text']}")
    requests = [
        e["params"]["request"]["url"]
        for e in browser.events
        if e.get("method") == "Network.requestWillBeSent"
    ]
    return probe, problems, requests


def test_run_report_renders_in_chromium(tmp_path: Path) -> None:
    run = _write_run(tmp_path, normalisation={t: "success" for t in TASKS})
    page = write_run_report(run)
    probe, problems, requests = _render(page, tmp_path)
    assert problems == []
    # Only the page itself and its embedded data were requested: nothing from a network.
    assert requests and all(u == page.resolve().as_uri() or u.startswith("data:") for u in requests)
    heatmap = probe["heatmap"]
    assert heatmap is not None and probe["heatmapHeight"] > 50
    # The header row, then one row per stage: its name and the four values, coloured.
    assert [row[0][0] for row in heatmap[1:]] == [f"{k + 1}. {t}" for k, t in enumerate(TASKS)]
    values = [[float(text) for text, _ in row[1:]] for row in heatmap[1:]]
    assert values == PERF
    colours = {text: bg for row in heatmap[1:] for text, bg in row[1:]}
    r, g, b, _ = matplotlib.colormaps["viridis"](1.0)
    assert colours["1.00"] == f"rgb({round(255 * r)}, {round(255 * g)}, {round(255 * b)})"
    assert colours["1.00"] != colours["0.25"]
    metrics = {row[0][0]: row[1][0] for row in probe["metrics"][1:]}
    assert metrics["average_performance"] == "0.625" and metrics["forward_transfer"] == "–"
    assert metrics["world_model_error"] == "0.300"
    # Every video decoded (the encoder's 64 x 48 frames, 12 frames at 10 fps) and is on the page.
    videos = probe["videos"]
    assert len(videos) == 4
    for video in videos:
        assert video["error"] is None and (video["width"], video["height"]) == (64, 48)
        assert video["duration"] == pytest.approx(1.2, abs=0.15) and video["shown"] > 0
    assert probe["images"] and all(i["loaded"] for i in probe["images"])  # curves and the gif


def test_comparison_page_renders_in_chromium(tmp_path: Path) -> None:
    for seed in (0, 1):
        _write_run(tmp_path / "runs", seed=seed, videos=False)
        _write_run(
            tmp_path / "runs", seed=seed, videos=False, lr=0.001, perf=[[1.0, 0.0], [0.5, 0.5]]
        )
    write_comparison([tmp_path / "runs"], tmp_path / "cmp", n_resamples=200)
    page = tmp_path / "cmp" / "comparison.html"
    probe, problems, requests = _render(page, tmp_path)
    assert problems == []
    assert all(u == page.resolve().as_uri() or u.startswith("data:") for u in requests)
    table = probe["comparison"]
    assert [row[0][0] for row in table[1:]] == ["ppo.lr=0.0003", "ppo.lr=0.001"]
    assert [row[2][0] for row in table[1:]] == ["2", "2"]
    # avg perf of the lr row: both seeds 0.5 -> the interval collapses onto it.
    assert table[2][3][0] == "0.50 [0.50, 0.50]"
    alts = [i["alt"] for i in probe["images"] if i["loaded"]]
    assert len(alts) == 2 and any("curve" in a for a in alts)

"""The comparison table of hand-written runs: grouping, means, bootstrap intervals, files."""

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from hope_agent import metrics as M
from hope_agent.compare import (
    compare_runs,
    find_runs,
    load_references,
    load_run,
    read_perf_csv,
    table_csv,
    table_markdown,
    with_forward_transfer,
    write_comparison,
)

TASKS = ["reach_east", "reach,west"]  # a comma in a name must survive the CSV


def _write_run(
    root: Path,
    name: str,
    perf: list[list[float]],
    *,
    method: str = "finetune",
    model: str = "gru",
    seed: int = 0,
    curriculum: str = "fast",
    forward_transfer: float | None = None,
    hydra_only: bool = False,
    task_id: bool = False,
    method_options: str = "",
    tasks: list[str] = TASKS,
    steps_per_task: int = 40000,
    extra: str = "",
    auc: list[float] | None = None,
    env_steps: int | None = None,
) -> Path:
    """A run directory as the trainer leaves it (only the files the comparison reads)."""
    run = root / name
    entries = "".join(f"  - {{id: hope/PointReach-v0, steps: null, name: '{t}'}}\n" for t in tasks)
    config = (
        f"curriculum:\n  name: {curriculum}\n  tasks:\n{entries}model:\n  name: {model}\n"
        f"method: {method}\nseed: {seed}\nsteps_per_task: {steps_per_task}\n"
        f"agent:\n  task_id: {str(task_id).lower()}\n{method_options}{extra}"
    )
    config_path = run / (".hydra/config.yaml" if hydra_only else "config.yaml")
    config_path.parent.mkdir(parents=True)
    config_path.write_text(config)
    p = np.array(perf)
    metrics = {
        "stages_completed": int(np.isfinite(p).all(axis=1).sum()),
        "tasks": tasks,
        "auc": auc,
        "env_steps": env_steps,
        # Left null: the comparison computes them from the matrix.
        "average_performance": None,
        "forgetting": float(M.forgetting(p)) if np.isfinite(p).all() else None,
        "backward_transfer": None,
        "forward_transfer": forward_transfer,
        "perf_matrix": [[None if np.isnan(v) else v for v in row] for row in perf],
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    _write_run(root, "ewc0", [[0.8, 0.1], [0.6, 0.9]], method="ewc", seed=0, forward_transfer=0.1)
    _write_run(root, "ewc1", [[1.0, 0.0], [0.4, 0.7]], method="ewc", seed=1, forward_transfer=0.3)
    _write_run(root / "multirun" / "0", "ft", [[0.9, 0.0], [0.0, 1.0]], seed=0, hydra_only=True)
    # hope-evaluate's output beside a run: metrics but no config, not a run.
    (root / "ewc0" / "evaluation").mkdir()
    (root / "ewc0" / "evaluation" / "metrics.json").write_text("{}")
    return root


def test_table_of_fake_runs(runs: Path) -> None:
    found = find_runs([runs])
    assert len(found) == 3 and all(p.name != "evaluation" for p in found)
    rows = compare_runs([load_run(p) for p in found])
    # The rows differ only in `method`: that is their label; their short names stay.
    assert [r.label for r in rows] == ["method=ewc", "method=finetune"]
    assert [r.name for r in rows] == ["ewc+gru", "finetune+gru"]
    assert [r.setting for r in rows] == [{"method": "ewc"}, {"method": "finetune"}]
    ewc, ft = rows
    assert ewc.seeds == [0, 1] and ft.seeds == [0]
    # ewc: final rows (0.6, 0.9) and (0.4, 0.7) -> A = 0.75, 0.55; F = (0.2, 0.6) / 2.
    a = ewc.stats["average_performance"]
    assert a.mean == pytest.approx(0.65) and a.n == 2
    assert (a.mean, a.low, a.high) == pytest.approx(M.bootstrap_ci([0.75, 0.55], 0.9, 4000, 0))
    assert 0.55 <= a.low < a.mean < a.high <= 0.75
    assert ewc.stats["forgetting"].mean == pytest.approx((0.1 + 0.3) / 2)
    assert ewc.stats["backward_transfer"].mean == pytest.approx((-0.2 + -0.6) / 2)
    assert ewc.stats["forward_transfer"].mean == pytest.approx(0.2)
    # One seed: the interval collapses onto the value; no forward transfer at all.
    f = ft.stats["forgetting"]
    assert (f.mean, f.low, f.high) == pytest.approx((0.45, 0.45, 0.45))
    assert ft.stats["average_performance"].mean == pytest.approx(0.5)
    assert ft.stats["forward_transfer"] is None
    csv_text = table_csv(rows)
    assert csv_text.splitlines()[0].startswith(
        "label,name,method,model,seeds,n_seeds,setting.method,"
    )
    assert csv_text.splitlines()[1].startswith("method=ewc,ewc+gru,ewc,gru,0 1,2,ewc,0.65,")
    assert csv_text.splitlines()[2].endswith(",,,,")  # finetune: forward transfer empty
    md = table_markdown(rows, "fast")
    assert (
        "| `method=ewc` | ewc | gru | – | 2 | 0.65 [" in md
        and "| `method=finetune` | finetune | gru | – | 1 | 0.50 [0.50, 0.50] |" in md
    )
    assert "The rows differ in `method`" in md
    assert "–" in md and "`fast` curriculum" in md


def test_write_comparison_files_and_script(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    rows = write_comparison([runs], out, n_resamples=500)
    assert len(rows) == 2
    assert (out / "comparison.png").stat().st_size > 5000
    assert (out / "comparison.csv").read_text() == table_csv(rows)
    assert (out / "comparison.md").read_text().startswith("| setting | method | model | task id |")
    page = (out / "comparison.html").read_text()
    assert "<code>method=ewc</code>" in page and page.count("<tr>") == 1 + len(rows)
    spec = importlib.util.spec_from_file_location(
        "compare_script", Path(__file__).parents[1] / "scripts" / "compare.py"
    )
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([str(runs), "--out", str(tmp_path / "cli"), "--resamples", "200"]) == 0
    assert (tmp_path / "cli" / "comparison.md").is_file()
    assert script.main([str(tmp_path / "nothing_here"), "--out", str(tmp_path / "x")]) == 1


def test_oracle_and_partial_metrics(tmp_path: Path) -> None:
    a = _write_run(tmp_path, "a", [[1.0, 0.0], [1.0, 1.0]], task_id=True, forward_transfer=0.5)
    b = _write_run(tmp_path, "b", [[1.0, 0.0], [0.5, 1.0]], task_id=True, seed=3)
    rows = compare_runs([load_run(a), load_run(b)])
    # One setting: labelled by its short name, and the table says that nothing varies.
    assert [r.label for r in rows] == ["finetune+gru+task_id"] and rows[0].setting == {}
    assert "| finetune+gru+task_id | finetune | gru | given | 2 |" in table_markdown(rows)
    assert "All runs share one setting" in table_markdown(rows)
    assert rows[0].stats["forward_transfer"].n == 1
    assert "0.50 [0.50, 0.50] (n=1)" in table_markdown(rows)


def test_method_options_make_their_own_rows(tmp_path: Path) -> None:
    perf = [[1.0, 0.0], [0.5, 1.0]]
    strong = "method_options:\n  coef: 1000.0\n  gamma: 0.9\n"
    a = _write_run(tmp_path, "a", perf, method="ewc", method_options=strong)
    b = _write_run(tmp_path, "b", perf, method="ewc")
    rows = compare_runs([load_run(a), load_run(b)])
    # The run without options lacks the keys: its short label would be empty, so it names them.
    assert [r.label for r in rows] == [
        "method_options.coef=(unset), method_options.gamma=(unset)",
        "method_options.coef=1000.0, method_options.gamma=0.9",
    ]
    assert [r.name for r in rows] == ["ewc+gru", "ewc[coef=1000.0,gamma=0.9]+gru"]


def test_bad_inputs_fail_clearly(tmp_path: Path) -> None:
    half = _write_run(tmp_path, "half", [[1.0, 0.0], [np.nan, np.nan]])
    with pytest.raises(ValueError, match="completed 1 of 2 stages"):
        load_run(half)
    a = load_run(_write_run(tmp_path, "a", [[1.0, 0.0], [0.5, 1.0]]))
    other = load_run(_write_run(tmp_path, "b", [[1.0, 0.0], [0.5, 1.0]], curriculum="locomotion"))
    with pytest.raises(ValueError, match="different curricula"):
        compare_runs([a, other])
    twin = load_run(_write_run(tmp_path, "c", [[1.0, 0.0], [0.5, 1.0]]))
    with pytest.raises(ValueError, match=r"seed\(s\) \[0\] appear more than once"):
        compare_runs([a, twin])
    # Another task list of one curriculum name is refused too, in one line.
    three = load_run(
        _write_run(tmp_path, "d", [[1.0, 0, 0], [0, 1, 0], [0, 0, 1]], tasks=["x", "y", "z"])
    )
    with pytest.raises(ValueError, match="different curricula") as error:
        compare_runs([a, three])
    assert "\n" not in str(error.value) and "['x', 'y', 'z']" in str(error.value)
    with pytest.raises(FileNotFoundError, match="no run directory"):
        find_runs([tmp_path / "half" / "metrics.json"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_runs([tmp_path / "missing"])


def test_perf_csv_with_quoted_task_names(tmp_path: Path) -> None:
    path = tmp_path / "perf_matrix.csv"
    path.write_text('after,"a,b",c\n"a,b",0.5,\nc,0.25,1.0\n')
    np.testing.assert_array_equal(read_perf_csv(path), [[0.5, np.nan], [0.25, 1.0]])


def test_runs_are_grouped_by_setting_and_labelled_by_what_differs(tmp_path: Path) -> None:
    perf = [[1.0, 0.0], [0.5, 1.0]]
    a = load_run(_write_run(tmp_path, "a", perf, seed=0, env_steps=80000))
    # Where and how a run ran does not matter: same row.
    where = "device: cuda\ntorch_threads: 4\nlogger:\n  progress: false\n"
    b = load_run(_write_run(tmp_path, "b", perf, seed=1, env_steps=80000, extra=where))
    assert compare_runs([a, b])[0].seeds == [0, 1]
    # A budget ablation: another row, labelled by its budget, seeds of one budget together.
    short = [
        load_run(_write_run(tmp_path, f"c{s}", perf, seed=s, steps_per_task=30000, env_steps=60000))
        for s in (2, 0)
    ]
    rows = compare_runs([a, b, *short])
    assert [(r.label, r.seeds) for r in rows] == [
        ("env_steps=60000, steps_per_task=30000", [0, 2]),
        ("env_steps=80000, steps_per_task=40000", [0, 1]),
    ]
    assert rows[0].run_dirs == [tmp_path / "c0", tmp_path / "c2"]
    assert rows[0].setting == {"env_steps": 60000, "steps_per_task": 30000}
    # A key only some runs' configs hold: the others ran with the schema's default.
    other_lr = load_run(
        _write_run(tmp_path, "d", perf, seed=3, env_steps=80000, extra="ppo:\n  lr: 0.001\n")
    )
    rows = compare_runs([a, other_lr])
    assert [r.label for r in rows] == ["ppo.lr=0.0003", "ppo.lr=0.001"]
    assert "The rows differ in `ppo.lr`" in table_markdown(rows)
    # A key added to the schema after a run, at its default, splits no row.
    newer = load_run(
        _write_run(
            tmp_path, "f", perf, seed=5, env_steps=80000, extra="ppo:\n  clip_value: false\n"
        )
    )
    assert [r.seeds for r in compare_runs([a, newer])] == [[0, 5]]
    # Same config, other env steps (another code version): other rows, not one mixed interval.
    fewer = load_run(_write_run(tmp_path, "e", perf, seed=4, env_steps=40960))
    assert [r.label for r in compare_runs([a, fewer])] == ["env_steps=40960", "env_steps=80000"]


def test_labels_leave_out_what_a_varying_name_implies(tmp_path: Path) -> None:
    perf = [[1.0, 0.0], [0.5, 1.0]]

    def model(name: str, periods: list[int] | None) -> str:
        kwargs = (
            f"  kwargs:\n    cms_periods: {periods}\n" if periods else "  kwargs:\n    hidden: 64\n"
        )
        return f"{name}\n{kwargs}"

    runs = [
        load_run(_write_run(tmp_path, key, perf, seed=seed, model=model(name, periods)))
        for key, name, periods, seed in (
            ("h1", "hope", [1, 4, 16], 0),
            ("h1b", "hope", [1, 4, 16], 1),
            ("h2", "hope", [1, 8], 0),
            ("g", "gru", None, 0),
        )
    ]
    rows = compare_runs(runs)
    labels = [r.label for r in rows]
    # gru differs from both hope rows by its name; its kwargs follow from it. The two hope rows
    # would both read model.name=hope, so they are named by every key that varies.
    assert "model.name=gru" in labels
    assert (
        "model.kwargs.cms_periods=[1,4,16], model.kwargs.hidden=(unset), model.name=hope" in labels
    )
    assert "model.kwargs.cms_periods=[1,8], model.kwargs.hidden=(unset), model.name=hope" in labels
    assert len(set(labels)) == 3
    assert {len(r.seeds) for r in rows} == {1, 2}
    # Two hope settings alone: only the periods differ.
    hope_rows = compare_runs(runs[:3])
    assert [r.label for r in hope_rows] == [
        "model.kwargs.cms_periods=[1,4,16]",
        "model.kwargs.cms_periods=[1,8]",
    ]
    header = table_csv(hope_rows).splitlines()[0]
    assert ",setting.model.kwargs.cms_periods," in header


def _references(root: Path, budget: int = 40000) -> Path:
    refs = root / "refs"
    for seed, auc in ((0, 0.25), (1, 0.35)):  # task 0: AUC_ref = 0.3
        _write_run(refs, f"east{seed}", [[0.5]], tasks=TASKS[:1], seed=seed, auc=[auc])
    _write_run(refs, "west", [[0.5]], tasks=TASKS[1:], auc=[0.2], steps_per_task=budget)
    return refs


def test_forward_transfer_from_single_task_reference_runs(tmp_path: Path) -> None:
    perf = [[1.0, 0.0], [0.5, 1.0]]
    _write_run(tmp_path / "runs", "a", perf, auc=[0.5, 0.6], forward_transfer=-9.0)
    _write_run(tmp_path / "runs", "b", perf, seed=1, auc=[0.65, 0.2])
    refs = load_references([_references(tmp_path)])
    assert refs.label == "finetune+gru" and refs.auc == pytest.approx(
        {TASKS[0]: 0.3, TASKS[1]: 0.2}
    )
    runs = with_forward_transfer([load_run(p) for p in find_runs([tmp_path / "runs"])], refs)
    expected = [((0.5 - 0.3) / 0.7 + (0.6 - 0.2) / 0.8) / 2, ((0.65 - 0.3) / 0.7 + 0.0) / 2]
    assert [r.metrics["forward_transfer"] for r in runs] == pytest.approx(expected)
    spec = importlib.util.spec_from_file_location(
        "compare_script", Path(__file__).parents[1] / "scripts" / "compare.py"
    )
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "out"
    args = [str(tmp_path / "runs"), "--reference", str(tmp_path / "refs"), "--out", str(out)]
    assert script.main([*args, "--resamples", "200"]) == 0
    with open(out / "comparison.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert float(row["forward_transfer"]) == pytest.approx(np.mean(expected))
    assert row["forward_transfer_n"] == "2"
    assert "single-task reference runs of `finetune+gru`" in (out / "comparison.md").read_text()


def test_reference_runs_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    perf = [[1.0, 0.0], [0.5, 1.0]]
    run = load_run(_write_run(tmp_path / "runs", "a", perf, auc=[0.5, 0.6]))
    with pytest.raises(ValueError, match=r"reach,west for 40000 steps .* for 30000"):
        with_forward_transfer([run], load_references([_references(tmp_path / "r1", 30000)]))
    only_east = tmp_path / "r2"
    _write_run(only_east, "east", [[0.5]], tasks=TASKS[:1], auc=[0.3])
    with pytest.raises(ValueError, match=r"no reference run for task\(s\) \['reach,west'\]"):
        with_forward_transfer([run], load_references([only_east]))
    _write_run(tmp_path / "r3", "both", perf, auc=[0.5, 0.6])
    with pytest.raises(ValueError, match="trains 2 tasks"):
        load_references([tmp_path / "r3"])
    mixed = tmp_path / "r4"
    _write_run(mixed, "east", [[0.5]], tasks=TASKS[:1], auc=[0.3])
    _write_run(mixed, "west", [[0.5]], tasks=TASKS[1:], auc=[0.3], model="mlp")
    with pytest.raises(ValueError, match="several methods/models"):
        load_references([mixed])

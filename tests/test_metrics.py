"""Continual-learning metrics against hand-computed values (Continual World definitions)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from hope_agent import metrics as M

# perf[i, j]: performance on task j after training task i.
PERF = np.array(
    [
        [0.9, 0.1, 0.0],
        [0.5, 0.8, 0.2],
        [0.3, 0.6, 1.0],
    ]
)


def test_average_performance_is_mean_of_last_row() -> None:
    assert M.average_performance(PERF) == pytest.approx((0.3 + 0.6 + 1.0) / 3)


def test_forgetting_averages_over_all_tasks_including_the_last() -> None:
    # (0.9 - 0.3) + (0.8 - 0.6) + (1.0 - 1.0), over 3 tasks.
    assert M.forgetting(PERF) == pytest.approx(0.8 / 3)


def test_backward_transfer_averages_over_all_but_the_last_task() -> None:
    # (0.3 - 0.9) + (0.6 - 0.8), over 2 tasks.
    assert M.backward_transfer(PERF) == pytest.approx(-0.4)


def test_backward_transfer_can_be_positive() -> None:
    perf = np.array([[0.2, 0.0], [0.5, 0.7]])
    assert M.backward_transfer(perf) == pytest.approx(0.3)
    assert M.forgetting(perf) == pytest.approx(-0.15)


def test_single_task() -> None:
    perf = np.array([[0.7]])
    assert M.average_performance(perf) == pytest.approx(0.7)
    assert M.forgetting(perf) == 0.0
    assert M.backward_transfer(perf) == 0.0


def test_forward_transfer_hand_computed() -> None:
    auc = np.array([0.5, 0.7, 0.1])
    ref = np.array([0.25, 0.4, 0.2])
    expected = np.array([0.25 / 0.75, 0.3 / 0.6, -0.1 / 0.8])
    np.testing.assert_allclose(M.forward_transfer_per_task(auc, ref), expected)
    assert M.forward_transfer(auc, ref) == pytest.approx(expected.mean())


def test_forward_transfer_with_a_perfect_reference_uses_the_raw_difference() -> None:
    # No room to improve: 0 when the method is perfect too, its shortfall otherwise.
    np.testing.assert_allclose(
        M.forward_transfer_per_task([1.0, 0.9, 0.0], [1.0, 1.0, 1.0]), [0.0, -0.1, -1.0]
    )


def test_forward_transfer_is_one_when_the_method_is_perfect() -> None:
    np.testing.assert_allclose(M.forward_transfer_per_task([1.0, 1.0], [0.0, 0.6]), [1.0, 1.0])


def test_forward_transfer_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="same length"):
        M.forward_transfer([0.1, 0.2], [0.1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        M.forward_transfer([1.2], [0.1])
    with pytest.raises(ValueError, match="1-D"):
        M.forward_transfer([], [])


def test_normalized_score_clips_and_broadcasts() -> None:
    score = M.normalized_score([-300.0, 0.0, 1000.0, 2000.0], -100.0, 1700.0)
    assert isinstance(score, np.ndarray)
    np.testing.assert_allclose(score, [0.0, 100 / 1800, 1100 / 1800, 1.0])
    per_task = M.normalized_score([5.0, 5.0], [0.0, 4.0], [10.0, 6.0])
    np.testing.assert_allclose(per_task, [0.5, 0.5])


def test_normalized_score_of_scalars_is_a_float() -> None:
    score = M.normalized_score(50.0, 0.0, 200.0)
    assert isinstance(score, float)
    assert score == pytest.approx(0.25)


@pytest.mark.parametrize("reference", [10.0, 5.0])
def test_normalized_score_needs_reference_above_random(reference: float) -> None:
    with pytest.raises(ValueError, match="r_reference must exceed r_random"):
        M.normalized_score(3.0, 10.0, reference)


def test_task_auc_and_smoothing() -> None:
    assert M.task_auc([0.0, 0.5, 1.0]) == pytest.approx(0.5)
    assert M.smooth_last([0.0, 0.2, 0.4, 0.6], k=2) == pytest.approx(0.5)
    assert M.smooth_last([0.3, 0.5], k=5) == pytest.approx(0.4)  # fewer values than k
    with pytest.raises(ValueError, match="k must be >= 1"):
        M.smooth_last([0.3], k=0)


def _curves() -> tuple[np.ndarray, list[tuple[int, int]]]:
    # Six evaluations, two per task window; curves[t, j].
    curves = np.array(
        [
            [0.2, 0.0, 0.0],
            [0.6, 0.1, 0.0],
            [0.5, 0.4, 0.1],
            [0.4, 0.8, 0.1],
            [0.3, 0.6, 0.5],
            [0.1, 0.4, 0.9],
        ]
    )
    return curves, [(0, 2), (2, 4), (4, 6)]


def test_perf_matrix_from_curves_takes_the_last_evaluation_of_each_window() -> None:
    curves, windows = _curves()
    perf = M.perf_matrix_from_curves(curves, windows)
    np.testing.assert_allclose(perf, curves[[1, 3, 5]])
    assert M.forgetting(perf) == pytest.approx(((0.6 - 0.1) + (0.8 - 0.4) + 0.0) / 3)


def test_perf_matrix_from_curves_smoothing_stays_inside_the_window() -> None:
    curves, windows = _curves()
    perf = M.perf_matrix_from_curves(curves, windows, smooth_last=5)
    # k larger than a window averages that window only, never the previous task's evaluations.
    np.testing.assert_allclose(perf[1], curves[2:4].mean(axis=0))
    np.testing.assert_allclose(perf[0], curves[0:2].mean(axis=0))


def test_aucs_from_curves_use_each_task_own_window() -> None:
    curves, windows = _curves()
    np.testing.assert_allclose(M.aucs_from_curves(curves, windows), [0.4, 0.6, 0.7])


def test_curves_validation() -> None:
    curves, windows = _curves()
    with pytest.raises(ValueError, match="one \\(start, stop\\) evaluation range per task"):
        M.perf_matrix_from_curves(curves, windows[:2])
    with pytest.raises(ValueError, match=r"task_windows\[1\]"):
        M.aucs_from_curves(curves, [(0, 2), (3, 3), (4, 6)])
    with pytest.raises(ValueError, match=r"task_windows\[2\]"):
        M.aucs_from_curves(curves, [(0, 2), (2, 4), (4, 7)])


def test_in_context_gain() -> None:
    assert M.in_context_gain([0.8, 0.6], [0.5, 0.7]) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="same shape"):
        M.in_context_gain([0.8, 0.6], [0.5])


def test_bootstrap_ci_single_value_and_constant_values() -> None:
    assert M.bootstrap_ci([0.42]) == (0.42, 0.42, 0.42)
    mean, low, high = M.bootstrap_ci([0.3, 0.3, 0.3])
    assert mean == low == high == pytest.approx(0.3)


def test_bootstrap_ci_matches_the_exact_bootstrap_distribution() -> None:
    # With 3 seeds the bootstrap distribution of the mean has 27 equally likely resamples: the
    # Monte-Carlo percentiles must land near the exact ones.
    values = np.array([0.1, 0.5, 0.9])
    exact = np.array([np.mean(r) for r in itertools.product(values, repeat=3)])
    mean, low, high = M.bootstrap_ci(values, confidence=0.9, n_resamples=4000, seed=0)
    assert mean == pytest.approx(0.5)
    assert low == pytest.approx(np.quantile(exact, 0.05), abs=0.03)
    assert high == pytest.approx(np.quantile(exact, 0.95), abs=0.03)
    assert low < mean < high


def test_bootstrap_ci_is_seeded_and_widens_with_confidence() -> None:
    values = np.random.default_rng(1).uniform(size=8)
    assert M.bootstrap_ci(values, seed=3) == M.bootstrap_ci(values, seed=3)
    _, low90, high90 = M.bootstrap_ci(values, confidence=0.9)
    _, low99, high99 = M.bootstrap_ci(values, confidence=0.99)
    assert low99 <= low90 and high90 <= high99
    with pytest.raises(ValueError, match="confidence"):
        M.bootstrap_ci(values, confidence=90)


def test_summarize() -> None:
    out = M.summarize(PERF)
    assert set(out) == {"average_performance", "forgetting", "backward_transfer"}
    assert out["forgetting"] == pytest.approx(M.forgetting(PERF))
    full = M.summarize(PERF, auc=[0.5, 0.7, 0.1], ref_auc=[0.25, 0.4, 0.2])
    assert full["forward_transfer"] == pytest.approx(
        M.forward_transfer([0.5, 0.7, 0.1], [0.25, 0.4, 0.2])
    )
    with pytest.raises(ValueError, match="both auc and ref_auc"):
        M.summarize(PERF, auc=[0.5, 0.7, 0.1])
    with pytest.raises(ValueError, match="one entry per task"):
        M.summarize(PERF, auc=[0.5], ref_auc=[0.2])


@pytest.mark.parametrize(
    "perf",
    [np.zeros((2, 3)), np.zeros(3), np.zeros((0, 0)), np.array([[0.1, np.nan], [0.2, 0.3]])],
)
def test_bad_perf_matrix_raises(perf: np.ndarray) -> None:
    with pytest.raises(ValueError, match="perf"):
        M.summarize(perf)


def test_run_normalized_score_uses_the_runs_best_as_reference() -> None:
    np.testing.assert_allclose(
        M.run_normalized_score([-2.0, 1.0, 4.0, 9.0], -2.0, 4.0), [0.0, 0.5, 1.0, 1.0]
    )
    assert M.run_normalized_score(3.0, 1.0, 5.0) == 0.5
    # A run that never beat random actions learnt nothing: 0, whatever the return.
    assert M.run_normalized_score(7.0, 5.0, 5.0) == 0.0
    np.testing.assert_array_equal(M.run_normalized_score([1.0, 9.0], 5.0, 2.0), [0.0, 0.0])
    with pytest.raises(ValueError, match="r_best"):
        M.run_normalized_score(1.0, 0.0, float("nan"))

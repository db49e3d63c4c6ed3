"""GAE with next-step autoreset: termination, truncation (bootstrap), masked autoreset steps."""

import pytest
import torch

from hope_agent.algos.gae import compute_gae

GAMMA, LAM = 0.9, 0.8


def _columns() -> dict[str, torch.Tensor]:
    # Env 0: t1 truncated (bootstraps from V at the autoreset step t2 = V(final obs) = 3.0),
    # t2 autoreset (masked), t4 terminated (no bootstrap), t5 autoreset (its value 9 is ignored).
    # Env 1: no episode end: the tail bootstraps from next_value.
    rewards = torch.tensor([[1.0, 1.0], [2.0, 1.0], [0.0, 1.0], [1.0, 1.0], [5.0, 1.0], [0.0, 1.0]])
    values = torch.tensor([[0.5, 0.0], [1.0, 0.0], [3.0, 0.0], [0.2, 0.0], [0.4, 0.0], [9.0, 0.0]])
    f, t = False, True
    terminated = torch.tensor([[f, f], [f, f], [f, f], [f, f], [t, f], [f, f]])
    truncated = torch.tensor([[f, f], [t, f], [f, f], [f, f], [f, f], [f, f]])
    valid = torch.tensor([[t, t], [t, t], [f, t], [t, t], [t, t], [f, t]])
    return {
        "rewards": rewards,
        "values": values,
        "next_value": torch.tensor([7.0, 10.0]),
        "terminated": terminated,
        "truncated": truncated,
        "valid": valid,
    }


def test_gae_matches_hand_computed_example() -> None:
    adv, ret = compute_gae(**_columns(), gamma=GAMMA, lam=LAM)
    # Env 0 by hand: d1 = 2 + .9*3 - 1 = 3.7; A0 = (1 + .9*1 - .5) + .72*3.7 = 4.064;
    # d4 = 5 - .4 = 4.6; A3 = (1 + .9*.4 - .2) + .72*4.6 = 4.472.
    expected0 = torch.tensor([4.064, 3.7, 0.0, 4.472, 4.6, 0.0])
    # Env 1: A5 = 1 + .9*10 = 10, then A_t = 1 + .72 * A_{t+1}.
    expected1 = torch.tensor([4.815304192, 5.2990336, 5.97088, 6.904, 8.2, 10.0])
    torch.testing.assert_close(adv[:, 0], expected0)
    torch.testing.assert_close(adv[:, 1], expected1)
    values = _columns()["values"]
    valid = _columns()["valid"]
    torch.testing.assert_close(ret, (adv + values) * valid)
    assert ret[2, 0] == 0 and ret[5, 0] == 0


def test_truncation_and_termination_differ_only_by_bootstrap() -> None:
    cols = _columns()
    adv_trunc, _ = compute_gae(**cols, gamma=GAMMA, lam=LAM)
    cols["terminated"], cols["truncated"] = cols["terminated"].clone(), cols["truncated"].clone()
    cols["terminated"][1, 0], cols["truncated"][1, 0] = True, False
    adv_term, _ = compute_gae(**cols, gamma=GAMMA, lam=LAM)
    # Only the steps of that episode change, by the discounted bootstrap gamma * V(final) = 2.7.
    diff = adv_trunc[:, 0] - adv_term[:, 0]
    torch.testing.assert_close(diff, torch.tensor([0.72 * 2.7, 2.7, 0.0, 0.0, 0.0, 0.0]))
    torch.testing.assert_close(adv_trunc[:, 1], adv_term[:, 1])


def test_lambda_one_gives_monte_carlo_returns() -> None:
    rewards = torch.tensor([[1.0], [2.0], [3.0]])
    values = torch.tensor([[0.3], [0.1], [0.7]])
    done = torch.tensor([[False], [False], [True]])
    _, ret = compute_gae(
        rewards,
        values,
        torch.tensor([5.0]),
        done,
        torch.zeros_like(done),
        ~torch.zeros_like(done),
        gamma=0.5,
        lam=1.0,
    )
    torch.testing.assert_close(ret[:, 0], torch.tensor([1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0]))


def test_bad_shapes_raise_clear_errors() -> None:
    cols = _columns()
    cols["values"] = cols["values"][:-1]
    with pytest.raises(ValueError, match="values has shape"):
        compute_gae(**cols, gamma=GAMMA, lam=LAM)
    cols = _columns()
    with pytest.raises(ValueError, match="gamma and lam"):
        compute_gae(**cols, gamma=1.5, lam=LAM)

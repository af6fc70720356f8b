"""Decoupled regularization, exact grid toy: the method note's expected episode lengths, and the
temperature rule itself."""
import numpy as np
import pytest
import torch

from stages.decoupled.grid_toy import grid, solve
from stages.rl.soft_q import decoupled_temperature, soft_value, soft_value_iteration

CFG = {"width": 4, "tau": 0.4, "step_reward": -1.0, "min_log_actions": 1.0, "tol": 1e-11,
       "max_sweeps": 200_000}
# method note: expected episode length for d = 2..6 (shortest path 3d)
NOTE_STANDARD = {2: 6.7, 3: 11.3, 4: 17.6, 5: 29.2, 6: 117}
NOTE_DECOUPLED = {2: 6.2, 3: 9.2, 4: 12.1, 5: 15.1, 6: 18.1}


@pytest.mark.parametrize("d", [2, 3, 4, 5, 6])
def test_grid_toy_matches_the_method_note(d):
    std, dec = solve(d, CFG, "standard"), solve(d, CFG, "decoupled")
    assert std["expected_length"] == pytest.approx(NOTE_STANDARD[d], abs=0.05 if d < 6 else 0.5)
    assert dec["expected_length"] == pytest.approx(NOTE_DECOUPLED[d], abs=0.05)
    assert dec["shortest_path"] == 3 * d
    assert dec["ratio"] < 1.05 < std["ratio"]           # decoupled within 5%, standard not
    assert dec["tau"] == pytest.approx(0.4 / np.log(2 * d))


def test_grid_moves_and_walls():
    nxt = grid(2, 4)                                     # index = 4 x0 + x1
    assert nxt.shape == (16, 4)
    assert list(nxt[0]) == [0, 4, 0, 1]                  # at the origin -e_i stays put
    assert list(nxt[5]) == [1, 9, 4, 6]


def test_cold_soft_value_iteration_is_the_shortest_path():
    nxt = grid(3, 4)
    absorbing = np.arange(len(nxt)) == len(nxt) - 1
    v, pi, _ = soft_value_iteration(nxt, -1.0, np.full(len(nxt), 1e-3), absorbing)
    assert v[0] == pytest.approx(-9.0, abs=1e-2)
    assert np.allclose(pi.sum(1), 1)


def test_soft_value_iteration_refuses_to_diverge():
    # tau = 1 with 4 actions: the entropy bonus (up to log 4 > 1) outweighs the step cost, V grows forever
    nxt = grid(2, 3)
    absorbing = np.arange(len(nxt)) == len(nxt) - 1
    with pytest.raises(RuntimeError, match="did not converge"):
        soft_value_iteration(nxt, -1.0, np.full(len(nxt), 1.0), absorbing, max_iters=2000)


def test_decoupled_temperature_rule_and_guard():
    assert decoupled_temperature(np.array([4, 2, 1]), 0.4).tolist() == pytest.approx(
        [0.4 / np.log(4), 0.4, 0.4])                     # log 2 < 1 and log 1 = 0 are guarded
    t = decoupled_temperature(torch.tensor([12, 2]), 0.4)
    assert t.tolist() == pytest.approx([0.4 / np.log(12), 0.4])
    q = torch.tensor([[0.0, 0.0, -float("inf")]])
    assert soft_value(q, 0.5).item() == pytest.approx(0.5 * np.log(2))

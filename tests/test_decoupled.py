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


# --- aggregates: the claims ---------------------------------------------------------------------------
def test_grid_toy_stage_and_aggregate_write_exact_claims(tmp_path):
    import json

    import pyarrow.parquet as pq

    from stages.common.stage import StageContext
    from stages.decoupled import aggregate, grid_toy

    toy = {**CFG, "dims": [2, 3, 4]}
    grid_toy.run(StageContext("decoupled.grid_toy", {"toy": toy}, {"toy": "decoupled.grid_toy"}, {},
                              {"lengths": tmp_path / "lengths.parquet"}))
    outs = {n: tmp_path / f for n, f in (("table", "s.parquet"), ("plot", "p.png"), ("metrics", "m.json"),
                                         ("claims", "c.parquet"))}
    aggregate.run(StageContext("decoupled.aggregate", {"aggregate": {"tolerance": 0.05}},
                               {"aggregate": "decoupled.aggregate"}, {"lengths": tmp_path / "lengths.parquet"},
                               outs))
    claims = {c["metric"].split(" ")[0]: c for c in pq.read_table(outs["claims"]).to_pylist()}
    within = claims["largest"]
    # d = 2 is the worst: 6.20 / 6
    assert within["effect"] == pytest.approx(NOTE_DECOUPLED[2] / 6 - 1, abs=0.01) and within["holds"]
    assert (within["ci_low"], within["ci_high"]) == (within["effect"],) * 2 and within["test"] == "exact"
    assert within["n"] == 3 and within["unit"] == "grid dimension d"
    grows = claims["(expected"]
    assert grows["effect"] == pytest.approx(NOTE_STANDARD[4] / 12 - 1, abs=0.01) and grows["holds"]
    metrics = json.loads(outs["metrics"].read_text())
    assert metrics["decoupled_within_tolerance_every_d"] and metrics["standard_grows_with_d"]


def test_grid_toy_claim_fails_when_one_d_leaves_the_band():
    from stages.decoupled.aggregate import claim_rows

    rows = [{"d": d, "decoupled_ratio": r, "standard_ratio": s}
            for d, r, s in ((2, 1.03, 1.12), (3, 1.07, 1.25), (4, 1.01, 1.20))]
    claims = claim_rows(rows, 0.05)
    assert claims["decoupled_within_tolerance_every_d"]["effect"] == pytest.approx(0.07)
    assert not claims["decoupled_within_tolerance_every_d"]["holds"]
    assert not claims["standard_grows_with_d"]["holds"]            # 1.25 -> 1.20 is not growth


def test_molecule_claims_compare_the_two_rules_per_tau_paired_by_seed():
    from stages.decoupled.molecules_aggregate import claim_rows

    rows = [{"temperature": t, "tau": tau, "seed": s, "mean_reward": r, "modes": m}
            for t, tau, per_seed in (
                ("decoupled", 0.3, [(0.61, 56), (0.58, 40), (0.63, 61)]),
                ("fixed", 0.3, [(0.45, 13), (0.46, 15), (0.44, 12)]),
                ("decoupled", 0.03, [(0.55, 0), (0.70, 30), (0.52, 1)]),
                ("fixed", 0.03, [(0.66, 10), (0.65, 11), (0.67, 9)]))
            for s, (r, m) in enumerate(per_seed)]
    claims = claim_rows(rows)
    assert claims["decoupled_mean_reward_above_fixed_tau0.3"]["holds"]
    assert claims["decoupled_modes_above_fixed_tau0.3"]["effect"] == pytest.approx(39.0)
    assert not claims["decoupled_mean_reward_above_fixed_tau0.03"]["holds"]
    assert all(c["n"] == 3 and c["unit"] == "seed" for c in claims.values())

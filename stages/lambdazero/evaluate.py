"""Stage 6, evaluate: the trained policy out of sample, against random MDP rollouts, and the oracle's
efficiency against random screening.

Arms (each seed of the chain evaluates its own final policy and proxy):
  policy   `n_samples` fresh episodes of the final (stochastic) policy;
  random   `n_samples` random MDP rollouts;
  initial  the initial docked set (in-sample reference: every molecule is in the proxy's training set).
Out of sample: for policy and random only the distinct molecules the final proxy was NOT trained on (not
docked in the initial set nor during active learning) are scored and ranked; the `top_k` of each by the
reward are docked for real through the cached oracle, so both arms are compared on the same k of new
molecules. Per arm: fresh fraction, proxy and reward distributions, docking of the top-k with ligand
efficiency (-score / heavy atoms) beside the raw score, heavy atoms, the proxy's error on the top-k
(prospective), QED/SA pass rates, unique Bemis-Murcko scaffolds, Tanimoto diversity, novelty.

Oracle accounting (output `efficiency`, stages.lambdazero.efficiency): the method's docking calls are the
molecules it chose (active-learning acquisitions in round order, then the policy's top-k here; the random
initial set is not the method's choice and is excluded). Random screening docks as many distinct random
MDP molecules outside the initial set, in the order drawn. For each threshold X (the best score of the
seed's initial set, and `thresholds`): calls until the first molecule scoring <= X, hits, best score.
The per-seed verdict in metrics.json is computed, not asserted; the claims are the aggregate's.
"""
from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pyarrow as pa
from rdkit import Chem

from stages.common.artifacts import read_table
from stages.common.stage import StageContext
from stages.lambdazero import chem_metrics
from stages.lambdazero.efficiency import EFFICIENCY_SCHEMA, efficiency_rows
from stages.lambdazero.mdp import FragmentEnv, load_mdp, unique_molecules
from stages.lambdazero.oracle import dock_logged, make_oracle
from stages.lambdazero.proxy_model import ProxyConfig
from stages.lambdazero.reward import MoleculeReward, RewardConfig
from stages.lambdazero.tables import DOCKED_SCHEMA, docked_rows, ligand_efficiency
from stages.lambdazero.train_rl import ROUNDS_SCHEMA, canonical, load_policy, load_proxy

log = logging.getLogger(__name__)
ARMS = ("policy", "random", "initial")
SCREEN = "screen"

MOLECULES_SCHEMA = pa.schema([
    ("arm", pa.string()), ("smiles", pa.string()),
    ("in_training", pa.bool_()),             # in the final proxy's training set (docked before evaluation)
    ("reward", pa.float64()), ("proxy_mu", pa.float64()),
    ("proxy_sigma", pa.float64()), ("acquisition", pa.float64()), ("qed", pa.float64()), ("sa", pa.float64()),
    ("heavy_atoms", pa.int32()),
    ("passes_gates", pa.bool_()), ("top_k", pa.bool_()),   # docked by this stage (screen: every molecule)
    ("order", pa.int32()),                   # docking order within the arm (-1: not docked here)
    ("status", pa.string()),
    ("score", pa.float64()),                 # Vina kcal/mol for the top-k (null otherwise / on failure)
    ("ligand_efficiency", pa.float64()),     # -score / heavy atoms (null without a score)
    ("inchikey", pa.string()), ("pose_sdf", pa.string()),
    ("max_sim_to_train", pa.float64()),      # Tanimoto to the nearest molecule docked during training
])
SUMMARY_SCHEMA = pa.schema([
    ("arm", pa.string()), ("in_sample", pa.bool_()), ("n_molecules", pa.int32()),
    ("n_fresh", pa.int32()),                 # distinct molecules outside the proxy's training set
    ("fresh_fraction", pa.float64()),
    ("mean_proxy_mu", pa.float64()),         # over the scored molecules (fresh ones; initial: all)
    ("median_proxy_mu", pa.float64()), ("mean_reward", pa.float64()), ("mean_heavy_atoms", pa.float64()),
    ("qed_pass_rate", pa.float64()),
    ("sa_pass_rate", pa.float64()), ("gate_pass_rate", pa.float64()), ("unique_scaffolds", pa.int32()),
    ("diversity", pa.float64()), ("novelty", pa.float64()), ("topk_mean_reward", pa.float64()),
    ("topk_docked_ok", pa.int32()), ("topk_mean_score", pa.float64()), ("topk_best_score", pa.float64()),
    ("topk_mean_le", pa.float64()), ("topk_best_le", pa.float64()), ("topk_mean_heavy_atoms", pa.float64()),
    ("topk_proxy_error", pa.float64()),      # mean of proxy mu - (-score) on the docked top-k (> 0: optimistic)
    ("topk_gate_pass_rate", pa.float64()), ("topk_docked_new", pa.int32()),
])


def sample_arms(ctx: StageContext, mdp) -> dict[str, list[str]]:
    """Distinct molecules (canonical SMILES, first-seen order) of the policy's and of random episodes."""
    p, n = ctx.params, ctx.params["evaluate"]["n_samples"]
    policy = load_policy(ctx.inputs["policy"], FragmentEnv(mdp), p["ppo"], ctx.seed + 1)
    policy_smiles, _ = unique_molecules(mdp, policy.sample(n))
    states = mdp.random_rollouts(n, np.random.default_rng(ctx.seed + 2), p["mdp"]["random_stop_prob"])
    random_smiles, _ = unique_molecules(mdp, states)
    return {"policy": list(dict.fromkeys(map(canonical, policy_smiles))),
            "random": list(dict.fromkeys(map(canonical, random_smiles)))}


def screening_molecules(mdp, n: int, rng: np.random.Generator, stop_prob: float, exclude: set[str],
                        max_draws: int = 50) -> list[str]:
    """`n` distinct random MDP molecules outside `exclude`, in the order drawn (fewer if the MDP has fewer)."""
    out: list[str] = []
    seen = set(exclude)
    for _ in range(max_draws):
        smiles, _ = unique_molecules(mdp, mdp.random_rollouts(2 * max(n, 1), rng, stop_prob))
        for s in map(canonical, smiles):
            if s not in seen:
                seen.add(s)
                out.append(s)
        if len(out) >= n:
            break
    return out[:n]


def passes(qed: np.ndarray, sa: np.ndarray, f: dict) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(qed) >= f["qed_min"], np.asarray(sa) <= f["sa_max"]


def mean_or_nan(x) -> float:
    x = np.asarray([v for v in x if v is not None], float)
    return float(x.mean()) if x.size else float("nan")


def summarize(arm: str, rows: list[dict], f: dict, novelty_threshold: float, docked_new: int,
              in_sample: bool = False) -> dict:
    """One SUMMARY_SCHEMA row from an arm's molecule rows. Scored = the fresh molecules (not in the
    proxy's training set), or all of them for the in-sample reference arm."""
    scored = rows if in_sample else [r for r in rows if not r.get("in_training", False)]
    smiles = [r["smiles"] for r in scored]
    q_ok, sa_ok = passes([r["qed"] for r in scored], [r["sa"] for r in scored], f)
    top = [r for r in scored if r["top_k"]]
    done = [r for r in top if r["score"] is not None]
    scores = np.array([r["score"] for r in done], float)
    le = np.array([r["score"] / -r["heavy_atoms"] for r in done], float) if done else np.zeros(0)
    return {
        "arm": arm, "in_sample": in_sample, "n_molecules": len(rows), "n_fresh": len(rows) - sum(
            r.get("in_training", False) for r in rows),
        "fresh_fraction": float(np.mean([not r.get("in_training", False) for r in rows])) if rows else float("nan"),
        "mean_proxy_mu": mean_or_nan(r["proxy_mu"] for r in scored),
        "median_proxy_mu": float(np.median([r["proxy_mu"] for r in scored])) if scored else float("nan"),
        "mean_reward": mean_or_nan(r["reward"] for r in scored),
        "mean_heavy_atoms": mean_or_nan(r["heavy_atoms"] for r in scored),
        "qed_pass_rate": float(q_ok.mean()) if scored else float("nan"),
        "sa_pass_rate": float(sa_ok.mean()) if scored else float("nan"),
        "gate_pass_rate": float((q_ok & sa_ok).mean()) if scored else float("nan"),
        "unique_scaffolds": chem_metrics.unique_scaffolds(smiles), "diversity": chem_metrics.diversity(smiles),
        "novelty": mean_or_nan(r["max_sim_to_train"] < novelty_threshold for r in scored),
        "topk_mean_reward": mean_or_nan(r["reward"] for r in top),
        "topk_docked_ok": int(len(scores)),
        "topk_mean_score": float(scores.mean()) if len(scores) else float("nan"),
        "topk_best_score": float(scores.min()) if len(scores) else float("nan"),
        "topk_mean_le": float(le.mean()) if len(le) else float("nan"),
        "topk_best_le": float(le.max()) if len(le) else float("nan"),
        "topk_mean_heavy_atoms": mean_or_nan(r["heavy_atoms"] for r in top),
        "topk_proxy_error": mean_or_nan(r["proxy_mu"] + r["score"] for r in done),
        "topk_gate_pass_rate": mean_or_nan(r["passes_gates"] for r in top),
        "topk_docked_new": docked_new,
    }


def verdict(summary: dict[str, dict], min_pass_rate: float) -> dict:
    """This seed's checks (the claims with intervals are the aggregate's, over seeds)."""
    pol, rnd = summary["policy"], summary["random"]
    checks = {
        "beats_random_on_proxy_out_of_sample": bool(pol["mean_proxy_mu"] > rnd["mean_proxy_mu"]),
        "beats_random_on_topk_docking": bool(pol["topk_mean_score"] < rnd["topk_mean_score"]),
        "beats_random_on_topk_ligand_efficiency": bool(pol["topk_mean_le"] > rnd["topk_mean_le"]),
        "topk_passes_gates": bool(pol["topk_gate_pass_rate"] >= min_pass_rate),
    }
    holds = all(checks.values())
    return {"claim": "out of sample, the policy beats random rollouts on the proxy and on docking (raw and per "
                     "heavy atom) of the top-k while passing the gates",
            "holds": holds, "checks": checks,
            "text": ("holds" if holds else "does not hold") + ": " + ", ".join(
                f"{k}={'yes' if v else 'no'}" for k, v in checks.items())
            + f" (policy top-k mean {pol['topk_mean_score']:.2f} vs random {rnd['topk_mean_score']:.2f} kcal/mol, "
              f"LE {pol['topk_mean_le']:.3f} vs {rnd['topk_mean_le']:.3f})"}


def score_molecules(arm: str, smiles: list[str], reward: MoleculeReward, filters: dict, train_keys: set[str],
                    train_smiles: list[str]) -> list[dict]:
    """Molecule rows (no docking yet) with the final proxy's reward, mu, sigma, properties."""
    if not smiles:
        return []
    mols = [Chem.MolFromSmiles(s) for s in smiles]
    r = reward(mols)
    c = reward.components
    mu, sigma, acq = (c["proxy_mu"], c["proxy_sigma"], c["acquisition"]) if "proxy_mu" in c else \
        reward.proxy.acquisition(mols)
    q_ok, sa_ok = passes(c["qed"], c["sa"], filters)
    _, max_sim = chem_metrics.nearest(smiles, train_smiles)
    return [{"arm": arm, "smiles": s, "in_training": s in train_keys, "reward": float(r[i]),
             "proxy_mu": float(mu[i]), "proxy_sigma": float(sigma[i]), "acquisition": float(acq[i]),
             "qed": float(c["qed"][i]), "sa": float(c["sa"][i]), "heavy_atoms": int(c["heavy_atoms"][i]),
             "passes_gates": bool(q_ok[i] and sa_ok[i]), "top_k": False, "order": -1, "status": "", "score": None,
             "ligand_efficiency": None, "inchikey": "", "pose_sdf": "", "max_sim_to_train": float(max_sim[i])}
            for i, s in enumerate(smiles)]


def dock_into(oracle, rows: list[dict], picked: list[int], what: str) -> None:
    """Dock rows[picked] (in that order) and fill their docking fields."""
    if not picked:
        return
    res = docked_rows(dock_logged(oracle, [rows[i]["smiles"] for i in picked], what), what, -1)
    for order, (i, d) in enumerate(zip(picked, res)):
        rows[i].update(top_k=True, order=order, status=d["status"], score=d["score"], inchikey=d["inchikey"],
                       pose_sdf=d["pose_sdf"], ligand_efficiency=ligand_efficiency(d["score"], rows[i]["heavy_atoms"]))


def top_k(rows: list[dict], k: int, fresh_only: bool) -> list[int]:
    """Indices of the k highest-reward rows (fresh ones only unless the arm is in-sample)."""
    idx = [i for i, r in enumerate(rows) if not (fresh_only and r["in_training"])]
    return sorted(idx, key=lambda i: -rows[i]["reward"])[:k]      # stable: ties keep sampling order


def run(ctx: StageContext) -> None:
    p = ctx.params
    ev, filters = p["evaluate"], p["filters"]
    mdp = load_mdp(ctx.inputs["blocks"], p["mdp"]["max_blocks"])
    trained = read_table(ctx.inputs["docked"], DOCKED_SCHEMA).to_pylist()
    initial = [r for r in trained if r["origin"] == "initial"]
    acquired = [r for r in trained if r["origin"] == "active_learning"]     # docking order (rounds, rank)
    train_smiles = list(dict.fromkeys(r["smiles"] for r in trained))
    train_keys = {canonical(s) for s in train_smiles}
    proxy = load_proxy(ctx.inputs["proxy"], ProxyConfig.from_params(p["proxy"]))
    reward = MoleculeReward(RewardConfig.from_params(p["reward"]), proxy)
    arms = {**sample_arms(ctx, mdp), "initial": list(dict.fromkeys(canonical(r["smiles"]) for r in initial))}

    rows = {arm: score_molecules(arm, arms[arm], reward, filters, train_keys, train_smiles) for arm in ARMS}
    budget = len(acquired) + min(ev["top_k"], sum(not r["in_training"] for r in rows["policy"]))
    initial_keys = {canonical(r["smiles"]) for r in initial}
    screen = screening_molecules(mdp, budget, np.random.default_rng(ctx.seed + 3), p["mdp"]["random_stop_prob"],
                                 initial_keys)
    rows[SCREEN] = score_molecules(SCREEN, screen, reward, filters, train_keys, train_smiles)
    docked_new: dict[str, int] = {}
    queried = set(train_keys)
    with make_oracle(ctx.inputs["receptor"], ctx.inputs["box"], p["dock"], ctx.threads) as oracle:
        for arm in (*ARMS, SCREEN):
            picked = (list(range(len(rows[arm]))) if arm == SCREEN
                      else top_k(rows[arm], ev["top_k"], fresh_only=arm != "initial"))
            keys = [rows[arm][i]["smiles"] for i in picked]
            docked_new[arm] = sum(k not in queried for k in keys)
            queried.update(keys)
            dock_into(oracle, rows[arm], picked, f"evaluate:{arm}")
        oracle_calls_now = oracle.calls

    summary = {arm: summarize(arm, rows[arm], filters, ev["novelty_threshold"], docked_new[arm], arm == "initial")
               for arm in ARMS}
    # the method's docking calls: acquisitions, then the policy's top-k; screening: the same number
    policy_top = sorted((r for r in rows["policy"] if r["top_k"]), key=lambda r: r["order"])
    method_seq = [(r["score"], r["ligand_efficiency"]) for r in acquired + policy_top]
    screen_seq = [(r["score"], r["ligand_efficiency"]) for r in sorted(rows[SCREEN], key=lambda r: r["order"])]
    initial_scores = [r["score"] for r in initial if r["score"] is not None]
    thresholds = {"initial_best": min(initial_scores)} if initial_scores else {}
    thresholds.update({f"{x:g}": float(x) for x in ev["thresholds"]})
    efficiency = [row for name, seq in (("method", method_seq), (SCREEN, screen_seq))
                  for row in efficiency_rows(name, [s for s, _ in seq], [e for _, e in seq], thresholds)]

    rounds = read_table(ctx.inputs["rounds"], ROUNDS_SCHEMA).to_pylist()
    curve = pd.read_csv(ctx.inputs["curve"])
    last = rounds[-1] if rounds else {}
    proxy_distinct_total = int(curve["proxy_distinct"].iloc[-1]) if len(curve) else 0
    method_calls = len(method_seq)
    metrics = {
        "arms": summary,
        "verdict": verdict(summary, ev["min_topk_pass_rate"]),
        "efficiency": {f"{r['sequence']}@{r['threshold_name']}": {k: r[k] for k in (
            "threshold", "budget", "calls_to_reach", "hits", "best_score", "best_le")} for r in efficiency},
        "oracle": {
            "initial_docking_calls": len(initial),
            "method_docking_calls_training": len(acquired),
            "method_docking_calls_evaluate": len(policy_top),
            "method_docking_calls": method_calls,
            "baseline_docking_calls_evaluate": docked_new["random"] + docked_new[SCREEN],
            "proxy_calls_until_last_round": int(last.get("proxy_evaluations", 0)),
            "proxy_distinct_until_last_round": int(last.get("proxy_distinct", 0)),
            "proxy_calls_training": int(curve["proxy_evaluations"].iloc[-1]) if len(curve) else 0,
            "proxy_distinct_training": proxy_distinct_total,
            "proxy_distinct_evaluate": sum(len(rows[a]) for a in ("policy", "random")),
            "method_docking_calls_per_proxy_distinct":
                method_calls / proxy_distinct_total if proxy_distinct_total else float("nan"),
        },
        "best_docked_training": min((r["score"] for r in trained if r["score"] is not None), default=float("nan")),
        "rounds": len(rounds),
    }
    log.info("oracle calls made by this stage (cache misses): %d", oracle_calls_now)
    log.info("verdict: %s", metrics["verdict"]["text"])
    all_rows = [r for arm in (*ARMS, SCREEN) for r in rows[arm]]
    ctx.write_table("molecules", pa.Table.from_pylist(all_rows, MOLECULES_SCHEMA), MOLECULES_SCHEMA)
    ctx.write_table("table", pa.Table.from_pylist([summary[a] for a in ARMS], SUMMARY_SCHEMA), SUMMARY_SCHEMA)
    ctx.write_table("efficiency", pa.Table.from_pylist(efficiency, EFFICIENCY_SCHEMA), EFFICIENCY_SCHEMA)
    ctx.write_json("metrics", json.loads(json.dumps(metrics, default=float)))
    plot(ctx, rows, summary, method_seq, screen_seq, thresholds.get("initial_best"))


def plot(ctx: StageContext, rows: dict[str, list[dict]], summary: dict, method_seq: list, screen_seq: list,
         initial_best: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"policy": "tab:red", "random": "tab:gray", "initial": "tab:blue", SCREEN: "tab:green"}
    fig, (ax_mu, ax_dock, ax_le, ax_eff) = plt.subplots(1, 4, figsize=(19, 4))
    scored = {a: [r for r in rows[a] if summary[a]["in_sample"] or not r["in_training"]] for a in ARMS}
    bins = np.histogram_bin_edges([r["proxy_mu"] for a in ARMS for r in scored[a]] or [0, 1], bins=25)
    for arm in ARMS:
        mu = [r["proxy_mu"] for r in scored[arm]]
        label = f"{arm} ({'in-sample' if summary[arm]['in_sample'] else 'fresh'}, n={len(mu)})"
        ax_mu.hist(mu, bins=bins, alpha=0.5, density=True, color=colors[arm], label=label)
    ax_mu.set(xlabel="proxy mu of -Vina score (kcal/mol)", ylabel="density", title="final proxy on the arms")
    ax_mu.legend(fontsize=8)
    for ax, field, title in ((ax_dock, "score", "Vina score of the top-k (lower = better)"),
                             (ax_le, "ligand_efficiency", "ligand efficiency of the top-k (-score / heavy atoms)")):
        for x, arm in enumerate(ARMS):
            s = [r[field] for r in rows[arm] if r["top_k"] and r[field] is not None]
            ax.scatter(np.full(len(s), x) + np.linspace(-0.15, 0.15, len(s)), s, color=colors[arm], s=18)
            if s:
                ax.hlines(np.mean(s), x - 0.3, x + 0.3, color="k")
        ax.set_xticks(range(len(ARMS)), [f"{a}\npass {summary[a]['topk_gate_pass_rate']:.0%}" for a in ARMS])
        ax.set(title=title, ylabel="kcal/mol" if field == "score" else "kcal/mol per heavy atom")
    for name, seq, color in (("method", method_seq, "tab:red"), (SCREEN, screen_seq, colors[SCREEN])):
        s = np.array([x if x is not None else np.nan for x, _ in seq], float)
        if len(s):
            ax_eff.plot(np.arange(1, len(s) + 1), np.fmin.accumulate(np.where(np.isnan(s), np.inf, s)),
                        color=color, label=f"{name} best so far")
    if initial_best is not None:
        ax_eff.axhline(initial_best, color="tab:blue", ls=":", label="best of the initial set")
    ax_eff.set(xlabel="docking calls", ylabel="Vina score (kcal/mol)", title="method vs random screening")
    ax_eff.legend(fontsize=8)
    fig.tight_layout()
    ctx.save_figure("plot", fig)

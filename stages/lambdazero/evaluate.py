"""Stage 6, evaluate: the trained policy against random MDP rollouts and against the initial docked set.

Arms: `policy` (n_samples episodes of the trained, stochastic policy), `random` (as many random MDP
rollouts), `initial` (the initial docked set). Each arm's distinct molecules are scored with the final
proxy (mu, sigma, UCB, reward with gates) and QED / SA; the `top_k` of each by reward are docked for real
through the cached oracle (the initial set's are cache hits). Per arm: proxy and reward distributions,
docking of the top ones, QED/SA pass rates, unique Bemis-Murcko scaffolds, Tanimoto diversity, novelty
against every molecule docked during training (the proxy's training set). The verdict compares policy with
random; it is computed, not asserted (see metrics.json `verdict`).
"""
from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow as pa
from rdkit import Chem
from scipy.stats import mannwhitneyu

from stages.common.artifacts import read_table
from stages.common.stage import StageContext
from stages.lambdazero import chem_metrics
from stages.lambdazero.mdp import FragmentEnv, load_mdp, unique_molecules
from stages.lambdazero.oracle import dock_logged, make_oracle
from stages.lambdazero.proxy_model import ProxyConfig
from stages.lambdazero.reward import MoleculeReward, RewardConfig
from stages.lambdazero.tables import DOCKED_SCHEMA, docked_rows
from stages.lambdazero.train_rl import ROUNDS_SCHEMA, canonical, load_policy, load_proxy

log = logging.getLogger(__name__)
ARMS = ("policy", "random", "initial")

MOLECULES_SCHEMA = pa.schema([
    ("arm", pa.string()), ("smiles", pa.string()), ("reward", pa.float64()), ("proxy_mu", pa.float64()),
    ("proxy_sigma", pa.float64()), ("acquisition", pa.float64()), ("qed", pa.float64()), ("sa", pa.float64()),
    ("passes_gates", pa.bool_()), ("top_k", pa.bool_()), ("status", pa.string()),
    ("score", pa.float64()),                 # Vina kcal/mol for the top-k (null otherwise / on failure)
    ("inchikey", pa.string()), ("pose_sdf", pa.string()),
    ("max_sim_to_train", pa.float64()),      # Tanimoto to the nearest molecule docked during training
])
SUMMARY_SCHEMA = pa.schema([
    ("arm", pa.string()), ("n_molecules", pa.int32()), ("mean_proxy_mu", pa.float64()),
    ("median_proxy_mu", pa.float64()), ("mean_reward", pa.float64()), ("qed_pass_rate", pa.float64()),
    ("sa_pass_rate", pa.float64()), ("gate_pass_rate", pa.float64()), ("unique_scaffolds", pa.int32()),
    ("diversity", pa.float64()), ("novelty", pa.float64()), ("topk_mean_reward", pa.float64()),
    ("topk_docked_ok", pa.int32()), ("topk_mean_score", pa.float64()), ("topk_best_score", pa.float64()),
    ("topk_gate_pass_rate", pa.float64()), ("topk_docked_new", pa.int32()),
])


def arm_molecules(ctx: StageContext, mdp, initial: list[dict]) -> dict[str, list[str]]:
    p, n = ctx.params, ctx.params["evaluate"]["n_samples"]
    env = FragmentEnv(mdp)
    policy = load_policy(ctx.inputs["policy"], env, p["ppo"], ctx.seed + 1)
    policy_smiles, _ = unique_molecules(mdp, policy.sample(n))
    states = mdp.random_rollouts(n, np.random.default_rng(ctx.seed + 2), p["mdp"]["random_stop_prob"])
    random_smiles, _ = unique_molecules(mdp, states)
    initial_smiles = list(dict.fromkeys(r["smiles"] for r in initial))
    return {"policy": policy_smiles, "random": random_smiles, "initial": initial_smiles}


def passes(qed: np.ndarray, sa: np.ndarray, f: dict) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(qed) >= f["qed_min"], np.asarray(sa) <= f["sa_max"]


def summarize(arm: str, rows: list[dict], f: dict, novelty_threshold: float, docked_new: int) -> dict:
    smiles = [r["smiles"] for r in rows]
    q_ok, sa_ok = passes([r["qed"] for r in rows], [r["sa"] for r in rows], f)
    top = [r for r in rows if r["top_k"]]
    scores = np.array([r["score"] for r in top if r["score"] is not None], float)
    mu = np.array([r["proxy_mu"] for r in rows])
    return {
        "arm": arm, "n_molecules": len(rows), "mean_proxy_mu": float(mu.mean()),
        "median_proxy_mu": float(np.median(mu)), "mean_reward": float(np.mean([r["reward"] for r in rows])),
        "qed_pass_rate": float(q_ok.mean()), "sa_pass_rate": float(sa_ok.mean()),
        "gate_pass_rate": float((q_ok & sa_ok).mean()), "unique_scaffolds": chem_metrics.unique_scaffolds(smiles),
        "diversity": chem_metrics.diversity(smiles),
        "novelty": float(np.mean([r["max_sim_to_train"] < novelty_threshold for r in rows])),
        "topk_mean_reward": float(np.mean([r["reward"] for r in top])),
        "topk_docked_ok": int(len(scores)),
        "topk_mean_score": float(scores.mean()) if len(scores) else float("nan"),
        "topk_best_score": float(scores.min()) if len(scores) else float("nan"),
        "topk_gate_pass_rate": float(np.mean([r["passes_gates"] for r in top])),
        "topk_docked_new": docked_new,
    }


def verdict(summary: dict[str, dict], policy_scores: np.ndarray, random_scores: np.ndarray,
            min_pass_rate: float) -> dict:
    pol, rnd = summary["policy"], summary["random"]
    p_value = (float(mannwhitneyu(policy_scores, random_scores, alternative="less").pvalue)
               if len(policy_scores) and len(random_scores) else float("nan"))
    checks = {
        "beats_random_on_proxy": (pol["mean_proxy_mu"] > rnd["mean_proxy_mu"]
                                  and pol["mean_reward"] > rnd["mean_reward"]),
        "beats_random_on_topk_docking": bool(pol["topk_mean_score"] < rnd["topk_mean_score"]),
        "topk_passes_gates": pol["topk_gate_pass_rate"] >= min_pass_rate,
    }
    holds = all(checks.values())
    return {"claim": "policy beats random on proxy and on docking of the top ones while passing gates",
            "holds": holds, "checks": checks, "topk_docking_mannwhitney_p_policy_lower": p_value,
            "text": ("holds" if holds else "does not hold") + ": " + ", ".join(
                f"{k}={'yes' if v else 'no'}" for k, v in checks.items())
            + f" (policy top-k mean {pol['topk_mean_score']:.2f} vs random {rnd['topk_mean_score']:.2f} "
              f"kcal/mol, one-sided Mann-Whitney p={p_value:.3g}, n={len(policy_scores)}/{len(random_scores)})"}


def run(ctx: StageContext) -> None:
    p = ctx.params
    ev, filters = p["evaluate"], p["filters"]
    mdp = load_mdp(ctx.inputs["blocks"], p["mdp"]["max_blocks"])
    trained = read_table(ctx.inputs["docked"], DOCKED_SCHEMA).to_pylist()
    initial = [r for r in trained if r["origin"] == "initial"]
    train_smiles = list(dict.fromkeys(r["smiles"] for r in trained))
    proxy = load_proxy(ctx.inputs["proxy"], ProxyConfig.from_params(p["proxy"]))
    reward = MoleculeReward(RewardConfig.from_params(p["reward"]), proxy)
    arms = arm_molecules(ctx, mdp, initial)

    rows: list[dict] = []
    docked_new: dict[str, int] = {}
    queried = {canonical(s) for s in train_smiles}
    with make_oracle(ctx.inputs["receptor"], ctx.inputs["box"], p["dock"], ctx.threads) as oracle:
        for arm in ARMS:
            smiles = arms[arm]
            mols = [Chem.MolFromSmiles(s) for s in smiles]
            r = reward(mols)
            c = reward.components
            mu, sigma, acq = proxy.acquisition(mols)
            q_ok, sa_ok = passes(c["qed"], c["sa"], filters)
            top = np.argsort(-r, kind="stable")[:ev["top_k"]]
            keys = [canonical(smiles[i]) for i in top]
            docked_new[arm] = sum(k not in queried for k in keys)
            queried.update(keys)
            res = docked_rows(dock_logged(oracle, keys, f"evaluate {arm} top-{len(keys)}"), f"evaluate:{arm}", -1)
            by_index = dict(zip(top.tolist(), res))
            _, max_sim = chem_metrics.nearest(smiles, train_smiles)
            for i, smi in enumerate(smiles):
                d = by_index.get(i, {})
                rows.append({"arm": arm, "smiles": smi, "reward": float(r[i]), "proxy_mu": float(mu[i]),
                             "proxy_sigma": float(sigma[i]), "acquisition": float(acq[i]), "qed": float(c["qed"][i]),
                             "sa": float(c["sa"][i]), "passes_gates": bool(q_ok[i] and sa_ok[i]),
                             "top_k": i in by_index,
                             "status": d.get("status", ""), "score": d.get("score"),
                             "inchikey": d.get("inchikey", ""), "pose_sdf": d.get("pose_sdf", ""),
                             "max_sim_to_train": float(max_sim[i])})
        oracle_calls_now = oracle.calls

    summary = {arm: summarize(arm, [r for r in rows if r["arm"] == arm], filters, ev["novelty_threshold"],
                              docked_new[arm]) for arm in ARMS}
    top_scores = {arm: np.array([r["score"] for r in rows if r["arm"] == arm and r["top_k"] and r["score"] is not None])
                  for arm in ARMS}
    rounds = read_table(ctx.inputs["rounds"], ROUNDS_SCHEMA).to_pylist()
    proxy_evals = rounds[-1]["proxy_evaluations"] if rounds else 0
    queries_train = len(train_smiles)
    metrics = {
        "arms": summary,
        "verdict": verdict(summary, top_scores["policy"], top_scores["random"], ev["min_topk_pass_rate"]),
        "oracle": {"queries_training": queries_train, "queries_evaluate": int(sum(docked_new.values())),
                   "queries_total": queries_train + int(sum(docked_new.values())),
                   "proxy_evaluations_until_last_round": int(proxy_evals),
                   "docked_fraction_of_proxy_scored": queries_train / proxy_evals if proxy_evals else float("nan")},
        "best_docked_training": min((r["score"] for r in trained if r["score"] is not None), default=float("nan")),
        "rounds": len(rounds),
    }
    log.info("oracle calls made by this stage (cache misses): %d", oracle_calls_now)
    log.info("verdict: %s", metrics["verdict"]["text"])
    ctx.write_table("molecules", pa.Table.from_pylist(rows, MOLECULES_SCHEMA), MOLECULES_SCHEMA)
    ctx.write_table("table", pa.Table.from_pylist([summary[a] for a in ARMS], SUMMARY_SCHEMA), SUMMARY_SCHEMA)
    ctx.write_json("metrics", json.loads(json.dumps(metrics, default=float)))
    plot(ctx, rows, rounds, summary)


def plot(ctx: StageContext, rows: list[dict], rounds: list[dict], summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"policy": "tab:red", "random": "tab:gray", "initial": "tab:blue"}
    fig, (ax_mu, ax_dock, ax_al) = plt.subplots(1, 3, figsize=(15, 4))
    bins = np.histogram_bin_edges([r["proxy_mu"] for r in rows], bins=25)
    for arm in ARMS:
        mu = [r["proxy_mu"] for r in rows if r["arm"] == arm]
        ax_mu.hist(mu, bins=bins, alpha=0.5, density=True, color=colors[arm], label=f"{arm} (n={len(mu)})")
    ax_mu.set(xlabel="proxy mu of -Vina score (kcal/mol)", ylabel="density", title="proxy predictions")
    ax_mu.legend(fontsize=8)
    for x, arm in enumerate(ARMS):
        s = [r["score"] for r in rows if r["arm"] == arm and r["top_k"] and r["score"] is not None]
        ax_dock.scatter(np.full(len(s), x) + np.linspace(-0.15, 0.15, len(s)), s, color=colors[arm], s=18)
        if s:
            ax_dock.hlines(np.mean(s), x - 0.3, x + 0.3, color="k")
    ax_dock.set_xticks(range(len(ARMS)), [f"{a}\npass {summary[a]['topk_gate_pass_rate']:.0%}" for a in ARMS])
    ax_dock.set(ylabel="Vina score (kcal/mol, lower = better)", title="real docking of the top-k by reward")
    if rounds:
        r = [x["round"] for x in rounds]
        ax_al.plot(r, [x["best_score_so_far"] for x in rounds], "o-", label="best docked so far")
        ax_al.plot(r, [x["mean_score_round"] for x in rounds], "s--", label="mean of round's batch")
        initial_best = min((x["score"] for x in rows if x["arm"] == "initial" and x["score"] is not None),
                           default=None)
        if initial_best is not None:
            ax_al.axhline(initial_best, color="tab:blue", ls=":", label="best of the initial set's top-k")
        ax_al.set_xticks(r)
    ax_al.set(xlabel="active-learning round", ylabel="Vina score (kcal/mol)", title="acquired batches")
    ax_al.legend(fontsize=8)
    fig.tight_layout()
    ctx.save_figure("plot", fig)

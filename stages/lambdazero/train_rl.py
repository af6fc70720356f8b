"""Stage 5, train_rl: PPO on the fragment MDP with the proxy reward, and active learning with docking.

Round r = 1..rounds:
  1. PPO, `updates_per_round` updates, reward R = dock_term(UCB of the current proxy) * QED gate * SA
     gate (stages/lambdazero/reward.py), or the sEH proxy reward (`reward.kind: seh_proxy`);
  2. propose: sample `proposals` episodes from the policy, keep the distinct molecules not docked yet;
  3. acquire: dock the `top_k` of them with the highest reward (its binding term is the UCB
     mu + kappa sigma, so uncertain molecules get their bonus; the gates keep the budget on molecules
     that could pass the constraints) through the cached oracle;
  4. score the proxy on that batch before seeing it (a prospective test), then refit it on all docked
     molecules (initial + every round).
After the last round the policy trains `final_updates` more updates on the final proxy.

Everything is deterministic for a fixed seed and the docking results are cached by molecule, so a
killed run re-runs to the same point without docking anything twice.
"""
from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
from rdkit import Chem

from stages.chem.docking import canonicalize
from stages.common.artifacts import load_checkpoint, read_table
from stages.common.stage import StageContext
from stages.lambdazero.mdp import FragmentEnv, load_mdp, unique_molecules
from stages.lambdazero.oracle import dock_logged, make_oracle
from stages.lambdazero.proxy_model import ProxyConfig, ProxyEnsemble
from stages.lambdazero.reward import MoleculeReward, RewardConfig
from stages.lambdazero.tables import DOCKED_SCHEMA, docked_rows, fit_proxy, regression_metrics, training_set
from stages.rl.ppo_discrete import PPO, PPOConfig

log = logging.getLogger(__name__)

ROUNDS_SCHEMA = pa.schema([
    ("round", pa.int32()),
    ("ppo_updates", pa.int32()),            # cumulative
    ("episodes", pa.int64()),               # cumulative PPO episodes (each scored by the proxy reward)
    ("proxy_evaluations", pa.int64()),      # cumulative proxy calls, repeats included (episodes + proposals)
    ("proxy_distinct", pa.int64()),         # cumulative distinct molecules the proxy scored
    ("mean_reward", pa.float64()),          # of the last PPO update of the round
    ("proposals_unique", pa.int32()),
    ("proposals_new", pa.int32()),          # distinct proposals not docked before
    ("docked_round", pa.int32()),           # molecules sent to the oracle this round
    ("oracle_queries", pa.int32()),         # cumulative distinct molecules sent to the oracle (incl. initial)
    ("method_docking_calls", pa.int32()),   # cumulative molecules the method chose to dock (initial set excluded)
    ("n_train", pa.int32()),                # proxy training set after the refit
    ("batch_rmse", pa.float64()),           # proxy (before refit) vs docking on this round's batch
    ("batch_pearson", pa.float64()),
    ("batch_spearman", pa.float64()),
    ("train_rmse", pa.float64()),           # refitted proxy on its training set
    ("best_score_round", pa.float64()),     # best (lowest) Vina score of the batch
    ("mean_score_round", pa.float64()),
    ("best_score_so_far", pa.float64()),    # over every docked molecule, initial set included
    ("mean_le_round", pa.float64()),        # ligand efficiency -score / heavy atoms of the batch
    ("mean_heavy_atoms_round", pa.float64()),
])
PROPOSALS_SCHEMA = pa.schema([
    ("round", pa.int32()),
    ("smiles", pa.string()),
    ("count", pa.int32()),                  # times sampled among the round's episodes
    ("reward", pa.float64()),
    ("binding", pa.float64()),
    ("qed", pa.float64()),
    ("sa", pa.float64()),
    ("proxy_mu", pa.float64()),
    ("proxy_sigma", pa.float64()),
    ("acquisition", pa.float64()),
    ("already_docked", pa.bool_()),
    ("selected", pa.bool_()),               # sent to the oracle this round
])
CURVE_COLUMNS = ("step", "round", "mean_reward", "max_reward", "mean_length", "entropy", "approx_kl",
                 "pg_loss", "v_loss", "proxy_evaluations", "proxy_distinct")


def canonical(smiles: str) -> str:
    out = canonicalize(smiles)
    return out[0] if out else smiles


def load_proxy(path, cfg: ProxyConfig) -> ProxyEnsemble:
    return ProxyEnsemble.from_state_dict(load_checkpoint(path), cfg)


class StateReward:
    """PPO reward_fn over terminal states: builds molecules, calls MoleculeReward, counts proxy calls
    (`evaluations`, repeats included) and the distinct molecules scored (`distinct`, by SMILES)."""

    def __init__(self, mdp, reward: MoleculeReward):
        self.mdp, self.reward, self.evaluations = mdp, reward, 0
        self.scored: set[str] = set()
        self._smiles: dict = {}                 # state -> SMILES (states repeat far more than molecules)

    @property
    def distinct(self) -> int:
        return len(self.scored)

    def count(self, smiles) -> None:
        smiles = list(smiles)
        self.evaluations += len(smiles)
        self.scored.update(smiles)

    def __call__(self, states) -> np.ndarray:
        mols = [self.mdp.to_mol(s) for s in states]
        self.count(self._smiles.setdefault(s, Chem.MolToSmiles(m)) for s, m in zip(states, mols))
        return self.reward(mols)


def propose(ppo: PPO, mdp, n: int):
    """Distinct molecules among n policy samples: (smiles, mols, counts)."""
    states = ppo.sample(n)
    smiles = [Chem.MolToSmiles(mdp.to_mol(s)) for s in states]
    uniq, mols = unique_molecules(mdp, states)
    counts = [smiles.count(s) for s in uniq]
    return uniq, mols, counts


def run(ctx: StageContext) -> None:
    p = ctx.params
    al, proxy_cfg = p["active_learning"], ProxyConfig.from_params(p["proxy"])
    mdp = load_mdp(ctx.inputs["blocks"], p["mdp"]["max_blocks"])
    env = FragmentEnv(mdp)
    docked = read_table(ctx.inputs["docked"], DOCKED_SCHEMA).to_pylist()
    proxy = load_proxy(ctx.inputs["proxy"], proxy_cfg)
    molecule_reward = MoleculeReward(RewardConfig.from_params(p["reward"]), proxy)
    reward_fn = StateReward(mdp, molecule_reward)
    ppo = PPO(env, PPOConfig.from_params(p["ppo"]), ctx.seed)
    curve, round_rows, proposal_rows = [], [], []
    queried = {canonical(r["smiles"]) for r in docked}
    method_calls = 0

    def log_curve(r):
        def on_update(step, ro, stats):
            curve.append({"step": step, "round": r, **{k: stats[k] for k in CURVE_COLUMNS[2:-2]},
                          "proxy_evaluations": reward_fn.evaluations, "proxy_distinct": reward_fn.distinct})
        return on_update

    with make_oracle(ctx.inputs["receptor"], ctx.inputs["box"], p["dock"], ctx.threads) as oracle:
        for r in range(1, al["rounds"] + 1):
            hist = ppo.train(reward_fn, al["updates_per_round"], log_curve(r))
            smiles, mols, counts = propose(ppo, mdp, al["proposals"])
            reward_fn.count(smiles)
            rewards = molecule_reward(mols)
            comp = molecule_reward.components
            mu, sigma, acq = proxy.acquisition(mols)
            keys = [canonical(s) for s in smiles]
            new = np.array([k not in queried for k in keys])
            order = [i for i in np.argsort(-rewards, kind="stable") if new[i]][:al["top_k"]]
            picked = [keys[i] for i in order]
            results = dock_logged(oracle, picked, f"round {r}")
            queried.update(picked)
            method_calls += len(picked)
            props = {"qed": comp["qed"][order], "sa": comp["sa"][order], "proxy_mu": mu[order],
                     "proxy_sigma": sigma[order], "acquisition": acq[order]}
            batch = docked_rows(results, "active_learning", r, props)
            docked += batch
            ok = np.array([b["score"] is not None for b in batch], bool)
            scores = np.array([b["score"] if b["score"] is not None else np.nan for b in batch], float)
            batch_fit = regression_metrics(mu[order][ok], -scores[ok])
            train_smiles, y = training_set(docked)
            proxy, fit = fit_proxy(train_smiles, y, proxy_cfg, ctx.seed + r)
            molecule_reward.proxy = proxy
            all_scores = [d["score"] for d in docked if d["score"] is not None]
            selected = set(order)
            proposal_rows += [{
                "round": r, "smiles": smiles[i], "count": counts[i], "reward": float(rewards[i]),
                "binding": float(comp["binding"][i]), "qed": float(comp["qed"][i]), "sa": float(comp["sa"][i]),
                "proxy_mu": float(mu[i]), "proxy_sigma": float(sigma[i]), "acquisition": float(acq[i]),
                "already_docked": not bool(new[i]), "selected": i in selected} for i in range(len(smiles))]
            round_rows.append({
                "round": r, "ppo_updates": ppo.updates_done, "episodes": ppo.updates_done * ppo.cfg.episodes_per_update,
                "proxy_evaluations": reward_fn.evaluations, "proxy_distinct": reward_fn.distinct,
                "method_docking_calls": method_calls, "mean_reward": hist[-1]["mean_reward"],
                "proposals_unique": len(smiles), "proposals_new": int(new.sum()), "docked_round": len(picked),
                "oracle_queries": len(queried), "n_train": fit["n_train"], "batch_rmse": batch_fit["rmse"],
                "batch_pearson": batch_fit["pearson"], "batch_spearman": batch_fit["spearman"],
                "train_rmse": fit["train_rmse"],
                "best_score_round": float(np.nanmin(scores)) if ok.any() else float("nan"),
                "mean_score_round": float(np.nanmean(scores)) if ok.any() else float("nan"),
                "best_score_so_far": float(min(all_scores)) if all_scores else float("nan"),
                "mean_le_round": float(np.mean([b["ligand_efficiency"] for b in batch if b["score"] is not None]))
                if ok.any() else float("nan"),
                "mean_heavy_atoms_round": float(np.mean([b["heavy_atoms"] for b in batch])) if batch else float("nan")})
            log.info("round %d: %s", r, round_rows[-1])

    ppo.train(reward_fn, al["final_updates"], log_curve(al["rounds"] + 1))
    log.info("PPO: %d updates, %d episodes, %d proxy calls on %d distinct molecules, %d molecules sent to "
             "the oracle (%d chosen by the method)", ppo.updates_done, ppo.updates_done * ppo.cfg.episodes_per_update,
             reward_fn.evaluations, reward_fn.distinct, len(queried), method_calls)
    ctx.save_checkpoint("policy", ppo.agent.state_dict())
    ctx.save_checkpoint("proxy", proxy.state_dict())
    ctx.write_table("rounds", pa.Table.from_pylist(round_rows, ROUNDS_SCHEMA), ROUNDS_SCHEMA)
    ctx.write_table("docked", pa.Table.from_pylist(docked, DOCKED_SCHEMA), DOCKED_SCHEMA)
    ctx.write_table("proposals", pa.Table.from_pylist(proposal_rows, PROPOSALS_SCHEMA), PROPOSALS_SCHEMA)
    ctx.write_curve("curve", curve, CURVE_COLUMNS)


def load_policy(path, env: FragmentEnv, ppo_params: dict, seed: int) -> PPO:
    """A PPO sampler with the trained agent's weights (for evaluate)."""
    ppo = PPO(env, PPOConfig.from_params(ppo_params), seed)
    ppo.agent.load_state_dict(load_checkpoint(path))
    return ppo

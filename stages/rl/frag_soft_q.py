"""Soft Q-learning on the fragment-molecule MDP (`stages.envs.fragments`).

Shared by two methods:
  * maximum-entropy GFlowNets (GSQL): temperature 1, edge rewards log P_B(s | s') from a backward policy
    (uniform 1 / #parents, max-ent n(s) / n(s') with exact path counts, or none = naive soft Q), and
    log R(x) on stop; softmax(Q*) then samples x with probability R(x) / Z (naive: ~ n(x) R(x));
  * decoupled regularization: reward R(x) on stop, temperature fixed or tau / max(log |A(s)|, 1).

Semi-gradient (V(s') detached, no target network), trajectories sampled on-policy with epsilon-uniform
exploration over the legal actions, as in the hypergrid trainer (stages/maxent_gfn/train.py).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from rdkit import Chem
from torch import nn

from stages.envs.fragments import STOP, FragmentMDP, FragState
from stages.rl.soft_q import decoupled_temperature, masked, soft_bellman_residual, soft_value


@dataclass
class FragSoftQConfig:
    iterations: int = 1000
    """Gradient steps; each samples `batch_size` fresh trajectories."""
    batch_size: int = 16
    """Trajectories per iteration."""
    hidden: int = 256
    """Width of the two hidden layers of the Q network."""
    lr: float = 1e-3
    """Adam learning rate."""
    epsilon: float = 0.05
    """Probability of a uniform legal action while sampling training trajectories (off-policy is fine)."""
    backward: str = "none"
    """GFlowNet edge rewards: uniform | maxent | none (no edge reward: naive soft Q / plain RL)."""
    terminal: str = "log_reward"
    """Stop reward: log_reward (beta * log r(x), GFlowNets) or reward (r(x), RL)."""
    beta: float = 1.0
    """Reward exponent: R(x) = r(x) ** beta."""
    temperature: str = "fixed"
    """fixed (tau everywhere) or decoupled (tau / max(log |A(s)|, 1))."""
    tau: float = 1.0
    """Temperature (1 for GFlowNets)."""
    eval_every: int = 100
    """Iterations between curve rows."""


class QNet(nn.Module):
    def __init__(self, in_dim: int, n_actions: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.LeakyReLU(), nn.Linear(hidden, hidden),
                                 nn.LeakyReLU(), nn.Linear(hidden, n_actions))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CachedReward:
    """r(x) of terminal states, each molecule scored once (the proxy is the expensive call)."""

    def __init__(self, mdp: FragmentMDP, score: Callable[[list], np.ndarray]):
        self.mdp, self.score, self.cache = mdp, score, {}

    def __call__(self, states: Sequence[FragState]) -> np.ndarray:
        mols = [self.mdp.to_mol(s) for s in states]   # assembled once: SMILES and score both need it
        smiles = [Chem.MolToSmiles(m) for m in mols]
        by_smiles = dict(zip(smiles, mols))
        todo = sorted(s for s in by_smiles if s not in self.cache)
        if todo:
            self.cache.update(zip(todo, self.score([by_smiles[s] for s in todo]).tolist()))
        return np.array([self.cache[s] for s in smiles], dtype=np.float64)


class PathCounts:
    """n(s): number of action sequences from the empty state to s (n(empty) = 1, n(s') = sum over the
    (parent, action) edges into s' of n(parent)), memoised: exact on the fragment DAG."""

    def __init__(self, mdp: FragmentMDP):
        self.mdp, self.memo = mdp, {FragState(): 1}

    def __call__(self, state: FragState) -> int:
        if state not in self.memo:
            self.memo[state] = sum(self(p) for p, _ in self.mdp.parents(state))
        return self.memo[state]


class FragSoftQ:
    """Q network + the MDP-specific pieces of soft Q-learning: temperatures, edge rewards, sampling."""

    def __init__(self, mdp: FragmentMDP, cfg: FragSoftQConfig, reward: CachedReward):
        self.mdp, self.cfg, self.reward = mdp, cfg, reward
        self.q = QNet(mdp.feature_dim, mdp.n_actions, cfg.hidden)
        self.counts = PathCounts(mdp)
        self.n_parents: dict[FragState, int] = {}

    def tau(self, masks: np.ndarray) -> torch.Tensor:
        n_legal = masks.sum(1)
        if self.cfg.temperature == "decoupled":
            return torch.as_tensor(decoupled_temperature(np.maximum(n_legal, 1), self.cfg.tau))
        return torch.full((len(masks),), self.cfg.tau, dtype=torch.float64)

    def log_policy(self, states: Sequence[FragState]) -> tuple[torch.Tensor, np.ndarray, torch.Tensor]:
        """log pi(. | s) (masked entries -inf), the masks, and Q, for non-terminal states."""
        masks = self.mdp.action_masks(states)
        q = masked(self.q(torch.from_numpy(self.mdp.features(states))), torch.from_numpy(masks))
        tau = self.tau(masks).float()[:, None]
        return torch.log_softmax(q / tau, dim=-1), masks, q

    @torch.no_grad()
    def sample(self, n: int, gen: torch.Generator, epsilon: float = 0.0) -> list[list[tuple]]:
        """n trajectories [(s, a, s'), ...] ending with stop."""
        trajs: list[list[tuple]] = [[] for _ in range(n)]
        states = [self.mdp.initial_state()] * n
        live = list(range(n))
        while live:
            logp, masks, _ = self.log_policy([states[i] for i in live])
            probs = logp.exp()
            if epsilon > 0:
                uniform = torch.from_numpy(masks / masks.sum(1, keepdims=True)).float()
                probs = (1 - epsilon) * probs + epsilon * uniform
            actions = torch.multinomial(probs, 1, generator=gen)[:, 0].tolist()
            for i, a in zip(live, actions):
                nxt = self.mdp.step(states[i], a)
                trajs[i].append((states[i], a, nxt))
                states[i] = nxt
            live = [i for i in live if not states[i].done]
        return trajs

    def edge_reward(self, s: FragState, a: int, s_next: FragState) -> float:
        if a == STOP:
            return 0.0  # the terminal reward is added separately (it needs the proxy, batched)
        if self.cfg.backward == "uniform":
            if s_next not in self.n_parents:
                self.n_parents[s_next] = self.mdp.n_parents(s_next)
            return -math.log(self.n_parents[s_next])
        if self.cfg.backward == "maxent":
            return math.log(self.counts(s)) - math.log(self.counts(s_next))
        return 0.0

    def terminal_reward(self, r: np.ndarray) -> np.ndarray:
        if self.cfg.terminal == "log_reward":
            return self.cfg.beta * np.log(r)
        return r ** self.cfg.beta

    def loss(self, trajs: list[list[tuple]]) -> tuple[torch.Tensor, np.ndarray]:
        steps = [t for traj in trajs for t in traj]
        s, a, s_next = zip(*steps)
        terminal = torch.tensor([x == STOP for x in a])
        r_final = self.reward([traj[-1][0] for traj in trajs])
        rewards = np.array([self.edge_reward(*t) for t in steps])
        rewards[np.cumsum([len(t) for t in trajs]) - 1] += self.terminal_reward(r_final)
        _, _, q = self.log_policy(list(s))
        q_sa = q.gather(1, torch.tensor(a)[:, None])[:, 0]
        live_next = [x for x in s_next if not x.done]
        v_next = torch.zeros(len(steps))
        if live_next:
            with torch.no_grad():
                masks = self.mdp.action_masks(live_next)
                q_next = masked(self.q(torch.from_numpy(self.mdp.features(live_next))), torch.from_numpy(masks))
                v_next[~terminal] = soft_value(q_next, self.tau(masks).float())
        residual = soft_bellman_residual(q_sa, torch.from_numpy(rewards).float(), v_next, terminal)
        return (residual ** 2).mean(), r_final

    @torch.no_grad()
    def log_prob_terminal(self, states: Sequence[FragState]) -> np.ndarray:
        """Exact log P(x) of ending in each state x (done or not): forward DP over all its ancestors."""
        return AncestorDAG(self.mdp, states).log_prob_terminal(self)

    @torch.no_grad()
    def log_prob_trajectories(self, trajs: list[list[tuple]]) -> np.ndarray:
        """log P_F(tau) = sum_t log pi(a_t | s_t) of each trajectory, in one batched forward."""
        steps = [(s, a) for traj in trajs for s, a, _ in traj]
        logp = self.log_policy([s for s, _ in steps])[0]
        per_step = logp.gather(1, torch.tensor([a for _, a in steps])[:, None])[:, 0].double().numpy()
        return np.add.reduceat(per_step, np.cumsum([0] + [len(t) for t in trajs[:-1]]))


class AncestorDAG:
    """Every ancestor of a fixed set of states with its in-edges (parent, action), built once. Then one
    batched forward over the ancestors and a DP level by level give, for each state x, exactly (sums
    over every construction order of x): log P(x) under the policy, the entropy H(tau | x) of its
    construction orders given x, and log n(x), the number of orders. Cheap enough to run during training."""

    def __init__(self, mdp: FragmentMDP, states: Sequence[FragState]):
        states = [replace(s, done=False) for s in states]
        in_edges: dict[FragState, list] = {}
        stack = list(states)
        while stack:
            s = stack.pop()
            if s not in in_edges:
                in_edges[s] = mdp.parents(s)
                stack.extend(p for p, _ in in_edges[s])
        self.order = sorted(in_edges, key=lambda s: s.n_blocks)   # the empty state first
        pos = {s: i for i, s in enumerate(self.order)}
        edges = np.array([(pos[p], a, pos[s], s.n_blocks) for s in self.order for p, a in in_edges[s]],
                         dtype=np.int64).reshape(-1, 4)
        self.parent, self.action, self.child, level = edges.T
        self.levels = [level == k for k in range(1, self.order[-1].n_blocks + 1)]
        self.targets = np.array([pos[s] for s in states], dtype=np.int64)

    @torch.no_grad()
    def evaluate(self, agent: FragSoftQ) -> dict[str, np.ndarray]:
        """Per target x: log_p = log P_T(x) (stop included); cond_entropy = H(tau | x) under the policy;
        log_n = log n(x). With L(s) = log sum_paths prod pi and M(s) = E[sum log pi | paths to s, weighted
        by prod pi]: L(s') = logsumexp_e (L(s) + log pi_e), M(s') = sum_e w_e (M(s) + log pi_e),
        w_e = exp(L(s) + log pi_e - L(s')), and H(tau | x) = L(x) - M(x)."""
        logpi = agent.log_policy(self.order)[0].double().numpy()
        edge_logpi = logpi[self.parent, self.action]
        size = len(self.order)
        log_mass, mean_logp, log_n = np.full(size, -np.inf), np.zeros(size), np.full(size, -np.inf)
        log_mass[0] = log_n[0] = 0.0
        for e in self.levels:                 # parents have one block fewer: done before their children
            src, dst, lp = self.parent[e], self.child[e], edge_logpi[e]
            np.logaddexp.at(log_mass, dst, log_mass[src] + lp)
            np.logaddexp.at(log_n, dst, log_n[src])
            np.add.at(mean_logp, dst, np.exp(log_mass[src] + lp - log_mass[dst]) * (mean_logp[src] + lp))
        t = self.targets
        return {"log_p": log_mass[t] + logpi[t, STOP], "cond_entropy": log_mass[t] - mean_logp[t],
                "log_n": log_n[t]}

    def uniform_pb_path_kl(self) -> np.ndarray:
        """Per target x: KL(P_B(tau | x) || uniform over the n(x) orders) for the uniform backward policy
        (1 / #in-edges at every state), exactly: what a GSQL sampler with uniform P_B has at its optimum,
        i.e. the most trajectory entropy the max-ent P_B can add over it given x. With
        M(s') = E[log P_B(tau | s')] = sum_e (M(s) - log k(s')) / k(s'), k = in-edges: KL = log n + M."""
        size = len(self.order)
        k = np.bincount(self.child, minlength=size).astype(float)
        mean_logpb, log_n = np.zeros(size), np.full(size, -np.inf)
        log_n[0] = 0.0
        for e in self.levels:
            src, dst = self.parent[e], self.child[e]
            np.logaddexp.at(log_n, dst, log_n[src])
            np.add.at(mean_logpb, dst, (mean_logpb[src] - np.log(k[dst])) / k[dst])
        return log_n[self.targets] + mean_logpb[self.targets]

    def log_prob_terminal(self, agent: FragSoftQ) -> np.ndarray:
        return self.evaluate(agent)["log_p"]


def train(mdp: FragmentMDP, reward: CachedReward, cfg: FragSoftQConfig, seed: int,
          progress=lambda it, **_: it, probe: Callable[[FragSoftQ], dict] | None = None,
          stop: Callable[[list[dict]], bool] | None = None, mode_threshold: float | None = None
          ) -> tuple[FragSoftQ, list[dict]]:
    """Train for cfg.iterations, a curve row every cfg.eval_every. Optional, per row: `probe(agent)`'s
    columns (e.g. the correlation with log R on a test set), `modes_visited` (distinct molecules with
    r > mode_threshold sampled so far, exploration included), and `stop(rows)` ending training early."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    agent = FragSoftQ(mdp, cfg, reward)
    opt = torch.optim.Adam(agent.q.parameters(), lr=cfg.lr)
    rows, window, modes = [], [], set()
    for it in progress(range(1, cfg.iterations + 1), desc="soft Q"):
        trajs = agent.sample(cfg.batch_size, gen, cfg.epsilon)
        loss, r_final = agent.loss(trajs)
        opt.zero_grad()
        loss.backward()
        opt.step()
        window.append((loss.item(), float(r_final.mean())))
        if mode_threshold is not None:
            modes.update(mdp.to_smiles(t[-1][0]) for t, r in zip(trajs, r_final) if r > mode_threshold)
        if it % cfg.eval_every == 0 or it == cfg.iterations:
            losses, rs = zip(*window)
            rows.append({"step": it, "loss": float(np.mean(losses)), "train_reward": float(np.mean(rs)),
                         "molecules_scored": len(reward.cache)})
            if mode_threshold is not None:
                rows[-1]["modes_visited"] = len(modes)
            if probe is not None:
                rows[-1].update(probe(agent))
            window = []
            if not np.isfinite(rows[-1]["loss"]):
                raise FloatingPointError(f"soft Q loss is {rows[-1]['loss']} at iteration {it}")
            if stop is not None and stop(rows):
                break
    return agent, rows


@torch.no_grad()
def sample_metrics(agent: FragSoftQ, n: int, gen: torch.Generator, mode_threshold: float,
                   trajectories: list[list[tuple]] | None = None) -> tuple[list[dict], dict]:
    """n molecules from the trained policy (no exploration; or the given `trajectories` of it): one row
    each, and summary metrics ("modes": distinct molecules with r > mode_threshold among them)."""
    trajectories = agent.sample(n, gen) if trajectories is None else trajectories
    finals = [traj[-1][0] for traj in trajectories]
    r = agent.reward(finals)
    rows = [{"smiles": agent.mdp.to_smiles(s), "reward": float(x), "n_blocks": s.n_blocks}
            for s, x in zip(finals, r)]
    best = {}
    for row in rows:
        best[row["smiles"]] = row["reward"]
    unique = np.array(sorted(best.values(), reverse=True))
    k = min(10, len(unique))
    return rows, {"samples": n, "mean_reward": float(r.mean()), "top10_unique_mean_reward": float(unique[:k].mean()),
                  "unique_fraction": len(unique) / n, "modes": int((unique > mode_threshold).sum()),
                  "mean_blocks": float(np.mean([s.n_blocks for s in finals])),
                  "at_max_blocks": float(np.mean([s.n_blocks == agent.mdp.max_blocks for s in finals]))}


class LikelihoodProbe:
    """The standard GFlowNet check on spaces too large to enumerate, on a fixed test set: correlation of
    the policy's exact log P(x) with its target beta log r(x) (a sampler of R/Z has log P = beta log r -
    log Z, correlation 1). The test molecules are scored once, on a cache of their own, so they do not
    count as molecules the training run scored; their ancestor DAG is built once."""

    def __init__(self, mdp: FragmentMDP, score: Callable[[list], np.ndarray], test_states: Sequence[FragState],
                 beta: float):
        unique = list(dict.fromkeys(replace(s, done=False) for s in test_states))
        self.dag = AncestorDAG(mdp, unique)
        self.log_r = beta * np.log(CachedReward(mdp, score)(unique))

    def __call__(self, agent: FragSoftQ) -> dict:
        from scipy.stats import pearsonr, spearmanr

        d = self.dag.evaluate(agent)
        return {"pearson_logp_logr": float(pearsonr(d["log_p"], self.log_r)[0]),
                "spearman_logp_logr": float(spearmanr(d["log_p"], self.log_r)[0]),
                "test_path_kl": float(np.mean(d["log_n"] - d["cond_entropy"]))}


def likelihood_metrics(agent: FragSoftQ, test_states: Sequence[FragState]) -> dict:
    """LikelihoodProbe's correlations on the test set, its size, and the log Z estimate V(s0)."""
    probe = LikelihoodProbe(agent.mdp, agent.reward.score, test_states, agent.cfg.beta)
    with torch.no_grad():
        _, masks, q0 = agent.log_policy([agent.mdp.initial_state()])
        v0 = soft_value(q0, agent.tau(masks).float()).item()
    return {"test_molecules": len(probe.log_r), **probe(agent), "v_s0": v0}


def trajectory_entropy_metrics(agent: FragSoftQ, terminals: Sequence[FragState]) -> dict:
    """Entropies of the sampler over its own samples x (no exploration), each a mean over x of an exact
    per-x quantity, with its standard error over x (`<name>_se`), in nats:
      trajectory_entropy   H(tau) = E_x[-log P_T(x) + H(tau | x)], what the max-ent backward policy
                           raises (the Rao-Blackwellised form of -E log P_F(tau): no noise over orders);
      terminal_entropy     H(x) = -E log P_T(x);
      conditional_entropy  E_x H(tau | x), the entropy of the construction orders, at most E log n(x);
      mean_log_paths       E log n(x), n(x) = construction orders of x (exact path counts);
      path_kl              E_x[log n(x) - H(tau | x)] = E_x KL(P(tau | x) || uniform over the n(x) orders)
                           >= 0 for every x: 0 for an exact max-ent sampler (and for exact naive soft
                           Q-learning, whose trajectories are ~ R(x) each), > 0 for uniform P_B on trees
                           whose leaves have different path counts (5 or more blocks);
      uniform_pb_path_kl   the same KL for the uniform P_B itself (exact, no policy): what GSQL with
                           uniform P_B keeps at its optimum, the most max-ent can add to H(tau) over it.
    """
    dag = AncestorDAG(agent.mdp, terminals)
    d = dag.evaluate(agent)
    terms = {"trajectory_entropy": d["cond_entropy"] - d["log_p"], "terminal_entropy": -d["log_p"],
             "conditional_entropy": d["cond_entropy"], "mean_log_paths": d["log_n"],
             "path_kl": d["log_n"] - d["cond_entropy"], "uniform_pb_path_kl": dag.uniform_pb_path_kl()}
    n = len(terminals)
    out = {"entropy_samples": n}
    for name, v in terms.items():
        out[name] = float(v.mean())
        out[f"{name}_se"] = float(v.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
    return out

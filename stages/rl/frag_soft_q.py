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
        states = [replace(s, done=False) for s in states]
        ancestors: dict[FragState, list] = {}
        stack = list(states)
        while stack:
            s = stack.pop()
            if s not in ancestors:
                ancestors[s] = self.mdp.parents(s)
                stack.extend(p for p, _ in ancestors[s])
        order = sorted(ancestors, key=lambda s: s.n_blocks)
        logpi = dict(zip(order, self.log_policy(order)[0]))
        logp = {FragState(): 0.0}
        for s in order[1:]:
            logp[s] = torch.logsumexp(torch.tensor([logp[p] + logpi[p][a] for p, a in ancestors[s]]),
                                      0).item()
        return np.array([logp[s] + logpi[s][STOP].item() for s in states])


def train(mdp: FragmentMDP, reward: CachedReward, cfg: FragSoftQConfig, seed: int,
          progress=lambda it, **_: it) -> tuple[FragSoftQ, list[dict]]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    agent = FragSoftQ(mdp, cfg, reward)
    opt = torch.optim.Adam(agent.q.parameters(), lr=cfg.lr)
    rows, window = [], []
    for it in progress(range(1, cfg.iterations + 1), desc="soft Q"):
        loss, r_final = agent.loss(agent.sample(cfg.batch_size, gen, cfg.epsilon))
        opt.zero_grad()
        loss.backward()
        opt.step()
        window.append((loss.item(), float(r_final.mean())))
        if it % cfg.eval_every == 0 or it == cfg.iterations:
            losses, rs = zip(*window)
            rows.append({"step": it, "loss": float(np.mean(losses)), "train_reward": float(np.mean(rs)),
                         "molecules_scored": len(reward.cache)})
            window = []
    return agent, rows


@torch.no_grad()
def sample_metrics(agent: FragSoftQ, n: int, gen: torch.Generator, mode_threshold: float
                   ) -> tuple[list[dict], dict]:
    """n molecules from the trained policy (no exploration): one row each, and summary metrics."""
    finals = [traj[-1][0] for traj in agent.sample(n, gen)]
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


def likelihood_metrics(agent: FragSoftQ, test_states: Sequence[FragState]) -> dict:
    """Exact log P(x) of the policy on a fixed test set vs its target beta log r(x): Pearson correlation
    (the standard GFlowNet check on spaces too large to enumerate) and the log Z estimate V(s0)."""
    from scipy.stats import pearsonr, spearmanr

    unique = list(dict.fromkeys(replace(s, done=False) for s in test_states))
    log_p = agent.log_prob_terminal(unique)
    log_r = agent.cfg.beta * np.log(agent.reward(unique))
    with torch.no_grad():
        _, masks, q0 = agent.log_policy([agent.mdp.initial_state()])
        v0 = soft_value(q0, agent.tau(masks).float()).item()
    return {"test_molecules": len(unique), "pearson_logp_logr": float(pearsonr(log_p, log_r)[0]),
            "spearman_logp_logr": float(spearmanr(log_p, log_r)[0]), "v_s0": v0}

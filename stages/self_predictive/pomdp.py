"""POMDP study: a delayed-cue chain (T-maze with a passive corridor) solved by recurrent Q-learning with
one auxiliary loss (ZP with an EMA target, OP, or none).

Task: at t = 0 the observation shows a cue c in {0, 1}; for `corridor` steps after it the observation is
an uninformative corridor token and actions do nothing; then a junction token, where action c earns +1 and
the other -1 and the episode ends. A memoryless policy scores 0 on average; the return of the greedy
policy is 2 * success rate - 1.
Agent (R2D2-style, much smaller): a GRU over (o_t, a_{t-1}, r_{t-1}) gives z_t; Q(z_t, .) by an MLP;
double-DQN targets from an EMA copy of GRU + Q head; updates on whole stored episodes. ZP: an MLP g
predicts the EMA encoder's z_{t+1} from (z_t, a_t) (l2); OP: g predicts the one-hot o_{t+1}.
Outputs: curve (per evaluation: success rate, latent rank and |cos|, losses), evals (per evaluation
episode), summary (status, failed step, final success rate = mean of the last `tail_evals` evaluations).
A non-finite loss ends the run as "diverged" with its episode; resumable through ResumeState.
"""
from __future__ import annotations

import copy
import logging
import math
import time

import numpy as np
import pyarrow as pa
import torch
import torch.nn as nn
import torch.nn.functional as F

from stages.common.resume import ResumeState, load_optimizer_tensors, optimizer_tensors, rng_state, set_rng_state
from stages.common.stage import StageContext
from stages.self_predictive.agent import latent_rank, mean_abs_cos, srank

log = logging.getLogger(__name__)
POMDP_VARIANTS = ("zp_ema", "op", "none")
N_TOKENS = 5  # cue 0, cue 1, corridor, junction, end
CURVE_COLUMNS = ["step", "episode", "success", "rank", "srank", "abs_cos", "td_loss", "aux_loss", "epsilon"]
EVALS_SCHEMA = pa.schema([("episode", pa.int64()), ("eval_episode", pa.int64()), ("cue", pa.int64()),
                          ("success", pa.float64())])
SUMMARY_SCHEMA = pa.schema([("variant", pa.string()), ("seed", pa.int64()), ("status", pa.string()),
                            ("failed_episode", pa.int64()), ("episodes", pa.int64()),
                            ("final_success", pa.float64()), ("final_rank", pa.float64()),
                            ("final_abs_cos", pa.float64()), ("wall_s", pa.float64())])


def episode_tokens(cue: int, corridor: int) -> list[int]:
    """Observation tokens o_0..o_T of one episode (T = corridor + 2 actions, then the end token)."""
    return [cue] + [2] * corridor + [3, 4]


def episode_rewards(cue: int, actions: list[int]) -> list[float]:
    return [0.0] * (len(actions) - 1) + [1.0 if actions[-1] == cue else -1.0]


class RecurrentQ(nn.Module):
    def __init__(self, hidden: int, n_actions: int = 2):
        super().__init__()
        self.n_actions = n_actions
        self.gru = nn.GRU(N_TOKENS + n_actions + 1 + 1, hidden, batch_first=True)
        self.q = nn.Sequential(nn.Linear(hidden, hidden), nn.ELU(), nn.Linear(hidden, n_actions))

    def inputs(self, tokens: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
        """(B, T+1, in): one-hot o_t, one-hot a_{t-1} (zeros and a start flag at t = 0), r_{t-1}."""
        b, t1 = tokens.shape
        prev_a = torch.zeros(b, t1, self.n_actions)
        prev_a[:, 1:] = F.one_hot(actions, self.n_actions).float()
        prev_r = torch.zeros(b, t1, 1)
        prev_r[:, 1:, 0] = rewards
        start = torch.zeros(b, t1, 1)
        start[:, 0] = 1.0
        return torch.cat([F.one_hot(tokens, N_TOKENS).float(), prev_a, prev_r, start], -1)

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None):
        z, h = self.gru(x, h0)
        return z, self.q(z), h


def run_of(wildcards) -> tuple[str, int]:
    variant = wildcards["sp_pomdp_variant"]
    if variant not in POMDP_VARIANTS:
        raise ValueError(f"pomdp variant '{variant}' is not one of {POMDP_VARIANTS}")
    return variant, int(wildcards["seed"])


class Learner:
    def __init__(self, variant: str, cfg: dict, seed: int):
        torch.manual_seed(seed)
        self.variant, self.cfg = variant, cfg
        self.net = RecurrentQ(cfg["hidden"])
        self.target = copy.deepcopy(self.net).requires_grad_(False)
        out = cfg["hidden"] if variant == "zp_ema" else N_TOKENS
        self.model = nn.Sequential(nn.Linear(cfg["hidden"] + 2, cfg["hidden"]), nn.ELU(),
                                   nn.Linear(cfg["hidden"], out))
        self.opt = torch.optim.Adam([*self.net.parameters(), *self.model.parameters()], lr=cfg["lr"])
        self.gen = torch.Generator().manual_seed(seed + 104729)
        self.episodes: dict[str, list] = {"cue": [], "actions": []}

    def epsilon(self, episode: int) -> float:
        frac = min(episode / max(self.cfg["epsilon_episodes"], 1), 1.0)
        return 1.0 + frac * (self.cfg["epsilon_end"] - 1.0)

    @torch.no_grad()
    def play(self, cue: int, epsilon: float, rng: np.random.Generator) -> list[int]:
        tokens, actions, rewards = episode_tokens(cue, self.cfg["corridor"]), [], []
        h = None
        for t in range(len(tokens) - 1):
            x = self.net.inputs(torch.tensor([[tokens[t]]]), torch.zeros(1, 0, dtype=torch.long),
                                torch.zeros(1, 0))
            if t > 0:  # previous action and reward enter this step's input
                x[0, 0, N_TOKENS + actions[-1]] = 1.0
                x[0, 0, N_TOKENS + 2] = rewards[-1]
                x[0, 0, -1] = 0.0
            _, q, h = self.net(x, h)
            a = int(rng.integers(2)) if rng.uniform() < epsilon else int(q[0, 0].argmax())
            actions.append(a)
            rewards.append(episode_rewards(cue, actions)[-1] if t == len(tokens) - 2 else 0.0)
        return actions

    def batch(self, idx: torch.Tensor):
        cues = torch.tensor([self.episodes["cue"][i] for i in idx])
        actions = torch.tensor([self.episodes["actions"][i] for i in idx])
        tokens = torch.tensor([episode_tokens(int(c), self.cfg["corridor"]) for c in cues])
        rewards = torch.zeros(actions.shape)
        rewards[:, -1] = torch.where(actions[:, -1] == cues, 1.0, -1.0)
        return tokens, actions, rewards

    def update(self) -> dict[str, float]:
        cfg = self.cfg
        idx = torch.randint(len(self.episodes["cue"]), (cfg["batch_size"],), generator=self.gen)
        tokens, actions, rewards = self.batch(idx)
        x = self.net.inputs(tokens, actions, rewards)
        z, q, _ = self.net(x)
        with torch.no_grad():
            z_t, q_t, _ = self.target(x)
            next_a = q[:, 1:].argmax(-1, keepdim=True)               # double DQN
            next_q = q_t[:, 1:].gather(-1, next_a).squeeze(-1)
            done = torch.zeros_like(rewards)
            done[:, -1] = 1.0
            y = rewards + cfg["gamma"] * (1 - done) * next_q
        q_taken = q[:, :-1].gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        td = F.smooth_l1_loss(q_taken, y)
        aux = torch.zeros(())
        if self.variant != "none":
            pred = self.model(torch.cat([z[:, :-1], F.one_hot(actions, 2).float()], -1))
            goal = z_t[:, 1:] if self.variant == "zp_ema" else F.one_hot(tokens[:, 1:], N_TOKENS).float()
            aux = ((pred - goal) ** 2).sum(-1).mean()
        self.opt.zero_grad()
        (td + cfg["aux_coef"] * aux).backward()
        nn.utils.clip_grad_norm_([*self.net.parameters(), *self.model.parameters()], cfg["max_grad_norm"])
        self.opt.step()
        with torch.no_grad():
            for p, tp in zip(self.net.parameters(), self.target.parameters()):
                tp.lerp_(p, cfg["tau"])
        return {"td_loss": td.item(), "aux_loss": aux.item()}

    @torch.no_grad()
    def probe(self) -> dict[str, float]:
        """Rank and |cos| of the latents of every step of the last stored episodes (up to 64)."""
        n = len(self.episodes["cue"])
        tokens, actions, rewards = self.batch(torch.arange(max(0, n - 64), n))
        z, _, _ = self.net(self.net.inputs(tokens, actions, rewards))
        z = z.reshape(-1, z.shape[-1])
        return {"rank": latent_rank(z, 1e-3, 1e-3), "srank": srank(z), "abs_cos": mean_abs_cos(z)}

    def state(self) -> dict[str, torch.Tensor]:
        out = {f"net.{k}": v for k, v in self.net.state_dict().items()}
        out |= {f"target.{k}": v for k, v in self.target.state_dict().items()}
        out |= {f"model.{k}": v for k, v in self.model.state_dict().items()}
        out |= optimizer_tensors(self.opt, "opt")
        out["gen"] = self.gen.get_state()
        out["episodes.cue"] = torch.tensor(self.episodes["cue"], dtype=torch.long)
        out["episodes.actions"] = torch.tensor(self.episodes["actions"], dtype=torch.long).reshape(
            len(self.episodes["cue"]), -1)
        return out

    def load(self, t: dict[str, torch.Tensor]) -> None:
        for name in ("net", "target", "model"):
            getattr(self, name).load_state_dict({k[len(name) + 1:]: v for k, v in t.items()
                                                 if k.startswith(f"{name}.")})
        load_optimizer_tensors(self.opt, t, "opt")
        self.gen.set_state(t["gen"])
        self.episodes = {"cue": t["episodes.cue"].tolist(), "actions": t["episodes.actions"].tolist()}


def evaluate(learner: Learner, episodes: int) -> list[dict]:
    """Greedy play with the cues alternating (half each)."""
    rng = np.random.default_rng(0)
    return [{"cue": i % 2, "success": float(learner.play(i % 2, 0.0, rng)[-1] == i % 2)} for i in range(episodes)]


def train(learner: Learner, cfg: dict, seed: int, resume: ResumeState | None, progress: dict | None) -> dict:
    p = progress or {"episode": 0, "curve": [], "evals": [], "failed_episode": None}
    rng = np.random.default_rng(seed)
    if progress is not None:
        rng.bit_generator.state = progress.pop("play_rng")
    steps_per_episode = cfg["corridor"] + 2
    losses = {"td_loss": math.nan, "aux_loss": math.nan}
    while p["episode"] < cfg["episodes"]:
        ep = p["episode"]
        cue = int(rng.integers(2))
        learner.episodes["cue"].append(cue)
        learner.episodes["actions"].append(learner.play(cue, learner.epsilon(ep), rng))
        if ep + 1 >= cfg["learning_starts"]:
            for _ in range(cfg["updates_per_episode"]):
                losses = learner.update()
                if not all(math.isfinite(v) for v in losses.values()):
                    p["failed_episode"] = ep
                    log.error("non-finite loss at episode %d: %s; run recorded as diverged", ep, losses)
                    return p
        p["episode"] = ep + 1
        if p["episode"] % cfg["eval_every"] == 0:
            rows = evaluate(learner, cfg["eval_episodes"])
            p["evals"] += [{"episode": p["episode"], "eval_episode": i, **r} for i, r in enumerate(rows)]
            success = float(np.mean([r["success"] for r in rows]))
            p["curve"].append({"step": p["episode"] * steps_per_episode, "episode": p["episode"],
                               "success": success, **learner.probe(), **losses,
                               "epsilon": learner.epsilon(ep)})
            log.info("episode %d: greedy success %.2f, rank %d, |cos| %.3f", p["episode"], success,
                     p["curve"][-1]["rank"], p["curve"][-1]["abs_cos"])
        if resume is not None and p["episode"] % cfg["checkpoint_every"] == 0 and p["episode"] < cfg["episodes"]:
            resume.save(learner.state(), {**p, "rng": rng_state(), "play_rng": _jsonable(rng.bit_generator.state)})
    return p


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    return int(x) if isinstance(x, (np.integer, int)) else x


def run(ctx: StageContext) -> None:
    cfg = ctx.params["pomdp"]
    torch.set_num_threads(ctx.threads)
    variant, seed = run_of(ctx.wildcards)
    learner = Learner(variant, cfg, seed)
    resume = ResumeState.for_output(ctx, "summary")
    progress, saved = None, resume.load()
    if saved is not None:
        learner.load(saved[0])
        progress = saved[1]
        set_rng_state(progress.pop("rng"))
        log.info("resuming at episode %d", progress["episode"])
    log.info("delayed-cue chain (corridor %d), variant %s, seed %d: %d episodes", cfg["corridor"], variant,
             seed, cfg["episodes"])
    start = time.perf_counter()
    p = train(learner, cfg, seed, resume, progress)
    diverged = p["failed_episode"] is not None
    tail_eps = sorted({e["episode"] for e in p["evals"]})[-cfg["tail_evals"]:]
    tail = [e["success"] for e in p["evals"] if e["episode"] in tail_eps]
    last = p["curve"][-1] if p["curve"] else {}
    summary = {"variant": variant, "seed": seed, "status": "diverged" if diverged else "ok",
               "failed_episode": p["failed_episode"], "episodes": p["episode"],
               "final_success": float(np.mean(tail)) if tail and not diverged else math.nan,
               "final_rank": float(last.get("rank", math.nan)), "final_abs_cos": float(last.get("abs_cos", math.nan)),
               "wall_s": time.perf_counter() - start}
    log.info("done: %s", summary)
    ctx.write_curve("curve", p["curve"] or [{c: math.nan for c in CURVE_COLUMNS}], CURVE_COLUMNS)
    ctx.write_table("evals", pa.Table.from_pylist(p["evals"], schema=EVALS_SCHEMA), EVALS_SCHEMA)
    ctx.write_table("summary", pa.Table.from_pylist([summary], schema=SUMMARY_SCHEMA), SUMMARY_SCHEMA)
    resume.clear()

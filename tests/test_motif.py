"""Motif on NetHack: collector rows and seeds, pair rules, the reward model, the intrinsic reward formula,
PPO that resumes exactly after a kill."""
import json

import gymnasium as gym
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from stages.common.resume import ResumeState
from stages.common.stage import StageContext
from stages.envs.nethack import BLSTATS, NetHackVecEnv, assert_disjoint, episode_seed, make_env, seed_split
from stages.motif.collect import N_ACTIONS, STEPS_SCHEMA, collect
from stages.motif.evaluate import evaluate, evaluation_seeds
from stages.motif.intrinsic import MotifReward, intrinsic_reward
from stages.motif.pairs import PAIRS_SCHEMA, sample_pairs
from stages.motif.policy import PolicyActor
from stages.motif.reward import ANNOTATIONS_SCHEMA, soft_targets, train_reward_model
from stages.motif.reward_model import CaptionRewardNet, RewardModel
from stages.motif.train_rl import train
from stages.rl.ppo_nethack import CURVE_COLUMNS, PPOConfig, Stopped

REWARD_MODEL = {"max_len": 64, "embed_dim": 8, "channels": 16, "kernel": 3, "hidden": 16}
POLICY = {"crop": 5, "embed_dim": 4, "hidden": 32}


# -- collect ------------------------------------------------------------------------------------------
def test_collector_writes_valid_per_step_rows():
    table = collect(400, lambda k: episode_seed("train", 3, k), PolicyActor(None, N_ACTIONS, 0),
                    make=lambda: make_env(max_episode_steps=60))
    assert table.schema.equals(STEPS_SCHEMA) and table.num_rows == 400
    df = table.to_pandas()
    starts = df[df.step == 0]
    assert (starts.action == -1).all() and (starts.reward == 0).all()
    assert (df[df.step > 0].action.between(0, N_ACTIONS - 1)).all()
    assert df.episode.nunique() >= 6   # 60-step episodes: at least 6 in 400 rows
    for _, ep in df.groupby("episode"):
        assert list(ep.step) == list(range(len(ep)))
        assert ep.seed.nunique() == 1 and seed_split(int(ep.seed.iloc[0])) == "train"
        assert not ep.done.iloc[:-1].any()                  # done only on an episode's last row
    assert df[df.episode < df.episode.max()].groupby("episode").done.last().all()
    assert not df.message.str.contains("\x00").any() and (df.message == df.message.str.strip()).all()
    assert (df.message != "").any() and not df.crashed.any()
    assert set(BLSTATS) <= set(df.columns) and (df.turn >= 1).any()
    # the same seeds and action seed give the same rows
    again = collect(400, lambda k: episode_seed("train", 3, k), PolicyActor(None, N_ACTIONS, 0),
                    make=lambda: make_env(max_episode_steps=60))
    assert again.equals(table)


def test_collector_rolls_out_a_saved_policy_checkpoint(tmp_path):
    from stages.common.artifacts import save_checkpoint
    from stages.motif.policy import Agent, load_agent

    torch.manual_seed(0)
    save_checkpoint(tmp_path / "policy.safetensors", Agent.from_params(N_ACTIONS, POLICY).state_dict(), {})
    agent = load_agent(tmp_path / "policy.safetensors", N_ACTIONS, POLICY)
    rows = [collect(80, lambda k: episode_seed("train", 1, k), PolicyActor(agent, N_ACTIONS, seed), make_env)
            for seed in (0, 0, 1)]
    assert rows[0].equals(rows[1]) and not rows[0].equals(rows[2])   # sampled with its own seeded generator
    assert rows[0].column("action").to_numpy()[1:].min() >= 0


class CrashOnStep(gym.Wrapper):
    """An env whose NLE core 'crashes' at its k-th step."""

    def __init__(self, env, k):
        super().__init__(env)
        self.k, self.n = k, 0

    def step(self, action):
        self.n += 1
        if self.n == self.k:
            raise RuntimeError("simulated NLE crash")
        return self.env.step(action)


def test_collector_marks_a_crashed_episode_and_goes_on():
    made = []

    def make():
        made.append(CrashOnStep(make_env(max_episode_steps=50), k=20 if not made else 10**9))
        return made[-1]

    df = collect(200, lambda k: episode_seed("train", 0, k), PolicyActor(None, N_ACTIONS, 1), make).to_pandas()
    assert len(made) == 2 and len(df) == 200
    first = df[df.episode == 0]
    assert first.crashed.all() and len(first) == 20 and first.done.iloc[-1]   # reset row + 19 steps
    assert not df[df.episode > 0].crashed.any() and df.episode.max() >= 3


class CrashOnReset(gym.Wrapper):
    """An env whose NLE core 'crashes' on the resets numbered in `bad` (counted in `resets`, a list
    shared by every env of a run)."""

    def __init__(self, env, resets, bad):
        super().__init__(env)
        self.resets, self.bad = resets, bad

    def reset(self, **kwargs):
        self.resets.append(len(self.resets))
        if self.resets[-1] in self.bad:
            raise RuntimeError("simulated NLE reset crash")
        return self.env.reset(**kwargs)


def test_collector_skips_a_seed_whose_reset_crashes():
    seeds = [episode_seed("train", 0, k) for k in range(20)]
    made, resets = [], []

    def make():
        made.append(CrashOnReset(make_env(max_episode_steps=30), resets, bad={1}))
        return made[-1]

    df = collect(150, seeds.__getitem__, PolicyActor(None, N_ACTIONS, 1), make).to_pandas()
    assert len(made) == 2 and len(df) == 150 and not df.crashed.any()
    assert df.groupby("episode").seed.first().tolist()[:3] == [seeds[0], seeds[2], seeds[3]]
    with pytest.raises(RuntimeError, match="reset crashed 5 times"):
        collect(10, seeds.__getitem__, PolicyActor(None, N_ACTIONS, 1),
                lambda: CrashOnReset(make_env(max_episode_steps=30), [], bad=range(10**6)))


@pytest.mark.parametrize("train_base, eval_base", [(0, 0), (5, 0), (0, 7), (1048575, 1048575)])
def test_train_and_eval_seeds_never_overlap(train_base, eval_base):
    train_seeds = [episode_seed("train", train_base, k) for k in range(2000)]
    eval_seeds = evaluation_seeds(eval_base, 2000)
    assert_disjoint(train_seeds, eval_seeds)
    assert {seed_split(s) for s in train_seeds} == {"train"} and {seed_split(s) for s in eval_seeds} == {"eval"}
    with pytest.raises(ValueError, match="both training and evaluation"):
        assert_disjoint(train_seeds, train_seeds[:3] + eval_seeds)
    with pytest.raises(ValueError):
        episode_seed("train", train_base, 1 << 20)


# -- pairs --------------------------------------------------------------------------------------------
MESSAGES = ["", "It's a wall.", "It's a wall.", "", "You kill the newt!", "", "$ - 3 gold pieces.",
            "It's a wall.", "", "You see here a dagger.", "It's solid stone.", "", "You kill the jackal!"]
EPISODES = np.array([0] * 7 + [1] * 6)


@pytest.mark.parametrize("sample_by", ["step", "caption"])
def test_pairs_drop_empties_mark_ties_and_are_deterministic(sample_by):
    table = sample_pairs(MESSAGES, EPISODES, 500, 100, sample_by, False, seed=3)
    assert table.schema.equals(PAIRS_SCHEMA)
    df = table.to_pandas()
    assert list(df.pair_id) == list(range(500))
    assert (df.message_a != "").all() and (df.message_b != "").all()
    assert (df.tie == (df.message_a == df.message_b)).all() and df.tie.any() and not df.tie.all()
    assert (np.asarray(MESSAGES, object)[df.row_a] == df.message_a).all()
    assert sample_pairs(MESSAGES, EPISODES, 500, 100, sample_by, False, seed=3).equals(table)
    assert not sample_pairs(MESSAGES, EPISODES, 500, 100, sample_by, False, seed=4).equals(table)


def test_pairs_group_repeats_and_cap_distinct_captions():
    grouped = sample_pairs(MESSAGES, EPISODES, 400, 100, "step", True, seed=0).to_pandas()
    rows = set(grouped.row_a) | set(grouped.row_b)
    assert 2 not in rows and 1 in rows     # row 2 repeats row 1's "It's a wall." in the same episode
    assert 7 in rows                        # ... row 7 does not follow another wall message
    capped = sample_pairs(MESSAGES, EPISODES, 400, 3, "caption", True, seed=0).to_pandas()
    assert len(set(capped.message_a) | set(capped.message_b)) == 3
    with pytest.raises(ValueError, match="non-empty caption"):
        sample_pairs(["", "", "x"], np.zeros(3, int), 5, 10, "step", False, seed=0)


# -- reward model -------------------------------------------------------------------------------------
def synthetic_captions(rng, n):
    things = ["a dagger", "a newt corpse", "an orange", "a scroll", "3 gold pieces", "12 gold pieces",
              "a gold ring", "a potion", "a wand", "the jackal", "a boulder", "7 gold pieces"]
    verbs = ["You see here {}.", "There is {} here.", "You find {}.", "{} lies on the floor.", "It's {}."]
    return [verbs[rng.integers(len(verbs))].format(things[rng.integers(len(things))]) for _ in range(n)]


def test_reward_model_learns_a_synthetic_preference():
    rng = np.random.default_rng(0)
    a, b = synthetic_captions(rng, 800), synthetic_captions(rng, 800)
    gold_a, gold_b = (np.array(["gold" in m for m in x]) for x in (a, b))
    labels = np.where(gold_a & ~gold_b, 1, np.where(gold_b & ~gold_a, 2, 0))
    torch.manual_seed(0)
    net, result, curve = train_reward_model(a, b, labels, REWARD_MODEL,
                                            {"epochs": 15, "batch_size": 64, "lr": 0.01, "weight_decay": 0.0,
                                             "heldout_fraction": 0.25}, seed=0)
    assert result["heldout_decided"] > 50
    assert result["heldout_agreement"] > 0.9, result
    model = RewardModel(net)
    r = model.score(["You find 40 gold pieces.", "It's a boulder.", "You see here a gold ring.", "It's an orange."])
    assert r[0] > r[1] and r[2] > r[3]          # unseen captions ranked by the learnt rule


@pytest.mark.parametrize("fraction,seed", [(0.3, 0), (0.5, 4)])
def test_caption_split_has_no_caption_overlap(fraction, seed):
    from stages.motif.reward import caption_split

    rng = np.random.default_rng(seed)
    a, b = synthetic_captions(rng, 600), synthetic_captions(rng, 600)
    train, test, held = caption_split(a, b, fraction, seed)
    vocab = set(a) | set(b)
    assert len(held) == round(fraction * len(vocab)) and held < vocab
    train_caps = {a[i] for i in train} | {b[i] for i in train}
    test_caps = {a[i] for i in test} | {b[i] for i in test}
    assert train_caps.isdisjoint(test_caps) and test_caps <= held and train_caps.isdisjoint(held)
    assert len(test) > 0 and len(train) > len(test)
    # every pair is in train, in test or straddles the split (one caption on each side), never two of them
    straddling = [i for i in range(len(a)) if (a[i] in held) != (b[i] in held)]
    assert sorted([*train, *test, *straddling]) == list(range(len(a)))
    again = caption_split(a, b, fraction, seed)
    assert again[2] == held and caption_split(a, b, fraction, seed + 1)[2] != held


def test_soft_targets_follow_the_labels():
    assert soft_targets(np.array([1, 2, 0])).tolist() == [0.0, 1.0, 0.5]


def test_weighted_stats_known_answer():
    from stages.motif.reward import weighted_stats

    values, counts = np.array([3.0, 1.0, 2.0, 4.0]), np.array([1.0, 1.0, 1.0, 4.0])
    mean, std, q = weighted_stats(values, counts)
    # as if 4.0 had been seen four times: mean 22/7, population std over the 7 sightings
    sample = np.array([3.0, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0])
    assert mean == pytest.approx(22 / 7)
    assert std == pytest.approx(np.sqrt(((3 - 22 / 7) ** 2 + (1 - 22 / 7) ** 2 + (2 - 22 / 7) ** 2
                                         + 4 * (4 - 22 / 7) ** 2) / 7)) == pytest.approx(sample.std())
    # quantiles of the normalized values: the smallest z whose weight share reaches q (cdf 1/7, 2/7, 3/7, 1)
    z = (np.sort(sample) - mean) / std
    assert q["0.05"] == pytest.approx(z[0]) and q["0.25"] == pytest.approx(z[1])
    assert q["0.40"] == pytest.approx(z[2]) and q["0.45"] == pytest.approx(z[3]) == q["0.95"]
    for name, value in q.items():
        assert value == pytest.approx(np.quantile(z, float(name), method="inverted_cdf"))
    # one repeated value: std falls back to 1 instead of dividing by zero
    assert weighted_stats(np.array([2.0, 2.0]), np.array([1.0, 3.0]))[:2] == (2.0, 1.0)


def test_reward_stage_skips_masked_labels_and_writes_its_artifacts(tmp_path):
    from stages.motif.reward import run

    rng = np.random.default_rng(1)
    steps = synthetic_captions(rng, 300) + [""] * 50
    pq.write_table(pa.table({"message": steps}), tmp_path / "steps.parquet")
    pairs = sample_pairs(steps, np.zeros(len(steps), int), 400, 100, "caption", False, seed=0)
    pq.write_table(pairs, tmp_path / "pairs.parquet")
    df = pairs.to_pandas()
    label = np.where(df.tie, 0, np.where(df.message_a.str.contains("gold"), 1, 2)).astype(np.int8)
    label[:40] = -1                                      # the judge failed on these: masked
    ann = pa.table({"pair_id": df.pair_id, "label": label, "masked": label == -1}, ANNOTATIONS_SCHEMA)
    pq.write_table(ann, tmp_path / "annotations.parquet")
    outs = {k: tmp_path / f"{k}.{ext}" for k, ext in [("model", "safetensors"), ("stats", "json"),
                                                        ("messages", "parquet"), ("metrics", "json"),
                                                        ("curve", "csv")]}
    ctx = StageContext("motif.reward", {"model": REWARD_MODEL, "train": {
        "seed": 0, "epochs": 3, "batch_size": 64, "lr": 0.01, "weight_decay": 0.0, "heldout_fraction": 0.2,
        "caption_heldout_fraction": 0.4, "caption_split_seed": 3,
        "report_top": 4}}, {"model": "motif.reward.model", "train": "motif.reward.train"},
        {n: tmp_path / f"{n}.parquet" for n in ("steps", "pairs", "annotations")}, outs)
    run(ctx)
    metrics = json.loads(outs["metrics"].read_text())
    assert metrics["usable_pairs"] == 360 and metrics["masked"] == 40
    split = metrics["caption_split"]     # 0.4 of the captions held out: ~16% of the pairs are both unseen
    assert split["heldout_captions"] == round(0.4 * split["distinct_captions"])
    assert split["n_train"] + split["n_heldout"] + split["straddling_pairs"] == 360
    assert split["heldout_decided"] > 20 and split["heldout_agreement"] > 0.7   # "gold" generalizes (3 epochs)
    stats = json.loads(outs["stats"].read_text())
    q = [stats["quantiles"][f"{p:.2f}"] for p in np.arange(0.05, 0.96, 0.05)]
    assert len(q) == 19 and q == sorted(q) and stats["std"] > 0 and stats["model"] == REWARD_MODEL
    top = pq.read_table(outs["messages"]).to_pandas()
    assert list(top.kind) == ["top"] * 4 + ["bottom"] * 4
    # the annotator preferred gold: the stage's reward model puts gold captions on top and none at the bottom
    assert top[top.kind == "top"].message.str.contains("gold").all(), top
    assert not top[top.kind == "bottom"].message.str.contains("gold").any(), top
    assert outs["curve"].read_text().splitlines()[0] == "step,train_loss,heldout_loss,heldout_agreement"
    loaded = RewardModel.load(outs["model"], outs["stats"])
    assert loaded.threshold(0.5) == stats["quantiles"]["0.50"]


def test_reward_model_cache_and_batching_agree():
    torch.manual_seed(0)
    model = RewardModel(CaptionRewardNet.from_params(REWARD_MODEL), cache_size=4, batch_size=2)
    msgs = [f"message number {i}" for i in range(7)]
    batched = model.score(msgs + msgs[:2])
    single = np.array([RewardModel(model.net, batch_size=2).score([m])[0] for m in msgs])
    np.testing.assert_array_equal(batched[:7], single)     # one input shape: the same float in any chunk
    assert batched[7] == batched[0] and len(model.cache) <= 7


# -- intrinsic reward ---------------------------------------------------------------------------------
@pytest.mark.parametrize("beta", [0.0, 1.0, 3.0])
def test_intrinsic_reward_formula_by_hand(beta):
    rhat = np.array([2.0, 2.0, 0.3, -1.0, 0.5])
    counts = np.array([1, 2, 1, 1, 3])
    expected = np.array([2.0, 2.0 / 2 ** beta, 0.0, 0.0, 0.0])   # eps = 0.5: 0.5 itself is not above it
    np.testing.assert_allclose(intrinsic_reward(rhat, counts, eps=0.5, beta=beta), expected)


class FixedRewards:
    """A stand-in reward model: normalized rewards from a table, eps = 0.2."""

    def __init__(self, table):
        self.table = table

    def normalized(self, messages):
        return np.array([self.table[m] for m in messages])

    def threshold(self, quantile):
        return 0.2


def test_motif_reward_counts_messages_per_episode():
    rm = FixedRewards({"You kill the newt!": 1.0, "It's a wall.": -0.5, "$ - 3 gold pieces.": 0.8})
    motif = MotifReward(rm, n_envs=2, a_ext=0.5, a_int=0.1, threshold_quantile=0.5, beta=3.0)
    kill, wall, gold = "You kill the newt!", "It's a wall.", "$ - 3 gold pieces."
    steps = [  # (messages of env 0 and env 1, extrinsic rewards, dones)
        ([kill, gold], [0.0, 2.0], [False, False]),
        ([kill, ""], [1.0, 0.0], [False, False]),
        ([wall, gold], [0.0, 0.0], [True, False]),
        ([kill, gold], [0.0, 0.0], [False, False]),
    ]
    expected_int = [[1.0, 0.8], [1.0 / 8, 0.0], [0.0, 0.8 / 8], [1.0, 0.8 / 27]]  # env 0's episode restarts
    for (msgs, r_ext, done), want in zip(steps, expected_int):
        total, r_int = motif(msgs, np.array(r_ext), np.array(done))
        np.testing.assert_allclose(r_int, want)
        np.testing.assert_allclose(total, 0.5 * np.array(r_ext) + 0.1 * np.array(want))


# -- PPO ----------------------------------------------------------------------------------------------
def tiny_reward_model():
    torch.manual_seed(1)
    q = {f"{p:.2f}": float(v) for p, v in zip(np.arange(0.05, 0.96, 0.05), np.linspace(-1.5, 1.5, 19))}
    return RewardModel(CaptionRewardNet.from_params(REWARD_MODEL), mean=0.0, std=0.1, quantiles=q)


TINY_PPO = {"total_steps": 4 * 64, "num_envs": 2, "num_steps": 32, "learning_rate": 1e-3, "anneal_lr": True,
            "gamma": 0.99, "gae_lambda": 0.95, "num_minibatches": 2, "update_epochs": 1, "clip_coef": 0.1,
            "ent_coef": 0.01, "vf_coef": 0.5, "max_grad_norm": 0.5, "reward_clip": 10.0, "checkpoint_every": 2}
RUN = {"params_hash": "p", "seed": 7, "code_sha256": "c"}   # what ResumeState compares


def run_ppo(path, stop_after=None, model=None):
    cfg = PPOConfig.from_dict(TINY_PPO)
    # eps = the 5% quantile: most messages pay, so the per-episode counts (resumed state) matter
    reward = MotifReward(model or tiny_reward_model(), cfg.num_envs, 0.1, 0.1, 0.05, 3.0)
    return train(cfg, POLICY, reward, seed=7, max_episode_steps=40, resume=ResumeState(path, RUN),
                 stop_after=stop_after)


class CaptionBandit(gym.Env):
    """A stand-in for NetHack with a known optimum for Motif's reward: every action but two leaves the
    message empty; action GOLD says "You find 3 gold pieces." (normalized reward 1 > eps), action WALL
    "It's a wall." (-0.5 < eps, pays nothing). With beta = 0 the best policy earns 1 intrinsic per step,
    a uniform one 1/23."""
    GOLD, WALL, LENGTH = 7, 3, 16
    observation_space = gym.spaces.Dict({})
    action_space = gym.spaces.Discrete(N_ACTIONS)

    @property
    def unwrapped(self):
        return self

    def seed(self, core=None, disp=None, reseed=False):
        pass

    def _obs(self, message: str) -> dict:
        chars = np.full((21, 79), ord("."), np.uint8)
        chars[5, 10] = ord("@")
        blstats = np.zeros(27, np.int64)
        blstats[[BLSTATS["x"], BLSTATS["y"], BLSTATS["hp"], BLSTATS["hp_max"], BLSTATS["depth"]]] = [10, 5, 10, 10, 1]
        raw = np.zeros(256, np.uint8)
        raw[:len(message)] = np.frombuffer(message.encode(), np.uint8)
        return {"chars": chars, "blstats": blstats, "message": raw}

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return self._obs(""), {}

    def step(self, action):
        self.t += 1
        message = {self.GOLD: "You find 3 gold pieces.", self.WALL: "It's a wall."}.get(int(action), "")
        return self._obs(message), 0.0, False, self.t >= self.LENGTH, {}


def test_ppo_raises_a_toy_intrinsic_reward_to_its_optimum():
    from functools import partial

    from stages.motif.policy import Agent, features
    from stages.rl.ppo_nethack import train as ppo_train

    cfg = PPOConfig.from_dict({**TINY_PPO, "total_steps": 20 * 64, "learning_rate": 3e-3, "anneal_lr": False,
                               "update_epochs": 4, "ent_coef": 0.0, "gamma": 0.9, "clip_coef": 0.2})
    judge = FixedRewards({"You find 3 gold pieces.": 1.0, "It's a wall.": -0.5})   # eps = 0.2
    reward = MotifReward(judge, cfg.num_envs, a_ext=0.0, a_int=1.0, threshold_quantile=0.5, beta=0.0)
    torch.set_num_threads(1)
    agent, curve, _ = ppo_train(cfg, partial(Agent.from_params, N_ACTIONS, POLICY), partial(features, crop=5),
                                reward, seed=0, max_episode_steps=None, make_env=CaptionBandit)
    per_step = [row["intrinsic_per_step"] for row in curve]
    assert len(per_step) == 20 and per_step[0] < 0.15                 # uniform start: ~1/23
    assert np.mean(per_step[-5:]) > 0.9, per_step                        # near the optimum, 1 (~0.98)
    with torch.no_grad():
        logits, _ = agent(*features([CaptionBandit()._obs("")], crop=5))
    assert logits.argmax().item() == CaptionBandit.GOLD


def test_ppo_config_has_no_defaults_and_rejects_unknown_keys():
    with pytest.raises(TypeError, match="checkpoint_every"):
        PPOConfig.from_dict({k: v for k, v in TINY_PPO.items() if k != "checkpoint_every"})
    with pytest.raises(TypeError, match="lr"):
        PPOConfig.from_dict({**TINY_PPO, "lr": 0.1})


def test_ppo_resumes_after_a_kill_exactly_like_an_uninterrupted_run(tmp_path):
    agent, curve, episodes = run_ppo(tmp_path / "a.resume.safetensors")
    assert len(curve) == 4 and curve[-1]["step"] == 256 and len(episodes) >= 4   # 40-step episodes
    assert all(np.isfinite(row["policy_loss"]) for row in curve)
    path = tmp_path / "b.resume.safetensors"
    with pytest.raises(Stopped):
        run_ppo(path, stop_after=3)     # killed after update 3; last checkpoint: 2
    sidecar = json.loads(path.with_name(path.name + ".json").read_text())
    assert sidecar["provenance"]["progress"]["update"] == 2 and sidecar["provenance"]["seed"] == 7
    with open(path, "rb") as fh:    # safetensors: an 8-byte header length, then a JSON header (no pickle)
        assert fh.read(9)[8:] == b"{"
    resumed, curve_b, episodes_b = run_ppo(path)
    np.testing.assert_equal(curve_b, curve)            # NaN (no episode ended) compares equal here
    assert episodes_b == episodes
    for name, tensor in agent.state_dict().items():
        assert torch.equal(tensor, resumed.state_dict()[name]), name


def test_ppo_resume_file_of_another_reward_model_is_ignored(tmp_path, caplog):
    path = tmp_path / "c.resume.safetensors"
    with pytest.raises(Stopped):
        run_ppo(path, stop_after=2)
    other = tiny_reward_model()
    other.mean = 0.5                                  # another reward: the saved state must not be used
    with caplog.at_level("INFO"):
        run_ppo(path, model=other)
    assert "another reward" in caplog.text and "resumed" not in caplog.text


def test_train_rl_stage_writes_policy_curve_and_metrics_and_clears_resume(tmp_path):
    from stages.common.artifacts import read_provenance
    from stages.motif.train_rl import run

    outs = {"policy": tmp_path / "policy.safetensors", "curve": tmp_path / "curve.csv",
            "metrics": tmp_path / "metrics.json"}
    params = {"agent": {"a_ext": 0.1, "a_int": 0.0}, "ppo": {**TINY_PPO, "total_steps": 128},
              "policy": POLICY, "intrinsic": {"beta": 3.0, "threshold_quantile": 0.5},
              "env": {"max_episode_steps": 40}}
    ctx = StageContext("motif.train_rl", params, {k: f"motif.{k}" for k in params}, {}, outs, seed_value=3,
                       wildcards={"agent": "extrinsic", "seed": "3"})
    run(ctx)
    lines = outs["curve"].read_text().splitlines()
    assert lines[0] == ",".join(CURVE_COLUMNS) and len(lines) == 3 and lines[-1].startswith("128,2,")
    assert json.loads(outs["metrics"].read_text())["env_steps"] == 128
    assert read_provenance(outs["policy"])["wildcards"] == {"agent": "extrinsic", "seed": "3"}
    assert not list(tmp_path.glob("*.resume.*"))


def test_vector_env_restore_replays_the_current_episodes():
    venv = NetHackVecEnv(2, lambda k: episode_seed("train", 2, k), max_episode_steps=30)
    venv.reset()
    rng = np.random.default_rng(0)
    for _ in range(45):
        venv.step(rng.integers(N_ACTIONS, size=2))
    state = venv.state()
    other = NetHackVecEnv(2, lambda k: episode_seed("train", 2, k), max_episode_steps=30)
    other.restore(state)
    for a, b in zip(venv.obs, other.obs):
        assert np.array_equal(a["chars"], b["chars"]) and np.array_equal(a["blstats"], b["blstats"])
    actions = rng.integers(N_ACTIONS, size=2)
    assert venv.step(actions)[1].tolist() == other.step(actions)[1].tolist()
    venv.close()
    other.close()


def test_evaluate_plays_the_requested_held_out_episodes():
    seeds = evaluation_seeds(0, 3)
    rows = evaluate(PolicyActor(None, N_ACTIONS, 0), seeds, tiny_reward_model(),
                    {"beta": 3.0, "threshold_quantile": 0.5}, parallel=2, max_episode_steps=30)
    assert [r["episode"] for r in rows] == [0, 1, 2] and [r["seed"] for r in rows] == seeds
    assert all(1 <= r["steps"] <= 30 and r["max_depth"] >= 1 and r["turns"] >= 1 for r in rows)


def test_evaluate_tallies_every_step_message_and_its_intrinsic_reward():
    from stages.motif.evaluate import MessageTally

    model, tally = tiny_reward_model(), MessageTally()
    rows = evaluate(PolicyActor(None, N_ACTIONS, 0), evaluation_seeds(0, 3), model,
                    {"beta": 3.0, "threshold_quantile": 0.5}, parallel=2, max_episode_steps=40, tally=tally)
    msgs = pd.DataFrame(tally.rows(model))
    # every step of every episode shows exactly one message (maybe empty); intrinsic reward adds up
    assert msgs.steps.sum() == sum(r["steps"] for r in rows)
    assert msgs.intrinsic.sum() == pytest.approx(sum(r["intrinsic_return"] for r in rows))
    assert (msgs.episodes >= 1).all() and (msgs.episodes <= 3).all() and (msgs.episodes <= msgs.steps).all()
    assert list(msgs.steps) == sorted(msgs.steps, reverse=True) and msgs.message.is_unique
    nonempty = msgs[msgs.message != ""]
    assert len(nonempty) and np.allclose(nonempty.rhat, model.normalized(list(nonempty.message)))
    assert msgs[msgs.message == ""].rhat.isna().all()
    # a message pays only above the threshold, at most rhat per episode with beta = 3 (1 + 1/8 + ...)
    eps = model.threshold(0.5)
    assert (nonempty[nonempty.rhat <= eps].intrinsic == 0).all()
    paid = nonempty[nonempty.rhat > eps]
    assert (paid.intrinsic <= paid.rhat * paid.episodes * 1.21).all() and (paid.intrinsic >= paid.rhat).all()


def test_messages_by_agent_sums_seeds_and_ranks_by_steps():
    from stages.motif.aggregate import messages_by_agent

    def tally(rows):
        return pd.DataFrame(rows, columns=["message", "steps", "episodes", "rhat", "intrinsic"])

    out = messages_by_agent({
        ("intrinsic", 0): tally([("", 50, 2, np.nan, 0.0), ("You kill it!", 10, 2, 3.0, 4.0),
                                 ("Ouch.", 5, 1, -1.0, 0.0)]),
        ("intrinsic", 1): tally([("", 30, 2, np.nan, 0.0), ("Ouch.", 20, 2, -1.0, 0.0),
                                 ("You kill it!", 2, 1, 3.0, 2.0)]),
        ("random", 0): tally([("Ouch.", 7, 1, -1.0, 0.0)])})
    assert list(out.agent) == ["random", "intrinsic", "intrinsic", "intrinsic"]
    r = out[out.agent == "intrinsic"].set_index("message")
    assert list(r.index) == ["", "Ouch.", "You kill it!"] and list(r["rank"]) == [0, 1, 2]
    assert r.loc["Ouch.", "steps"] == 25 and r.loc["Ouch.", "seeds"] == 2 and r.loc["You kill it!", "episodes"] == 3
    assert r.loc["", "step_share"] == pytest.approx(80 / 117) and r.step_share.sum() == pytest.approx(1.0)
    assert r.loc["You kill it!", "intrinsic_share"] == 1.0 and r.loc["Ouch.", "intrinsic_share"] == 0.0
    assert out[out.agent == "random"]["rank"].tolist() == [1]    # no empty message: ranks start at 1


def seed_episodes(per_seed: dict[str, list[float]], quantity="score") -> dict:
    """{(agent, seed): episodes} with 2 held-out episodes per seed whose mean `quantity` is given."""
    out = {}
    for agent, means in per_seed.items():
        for seed, m in enumerate(means):
            df = pd.DataFrame({"score": [m - 5, m + 5], "max_depth": [1, 1], "steps": [100, 300],
                               "intrinsic_return": [10.0, 30.0]})
            df[quantity] = [m - 5, m + 5]
            out[agent, seed] = df
    return out


def test_agent_claims_average_episodes_per_seed_and_pair_the_seeds():
    from stages.motif.aggregate import claim_rows

    # the default-scale numbers: combined beats extrinsic in every seed, intrinsic = random on average
    episodes = seed_episodes({"random": [37.4, 30.0, 31.3], "extrinsic": [31.0, 30.5, 34.2],
                              "intrinsic": [44.6, 27.0, 28.3], "combined": [43.5, 42.9, 45.0]})
    claims = claim_rows(episodes, {})
    assert claims["combined_beats_extrinsic_score"]["effect"] == pytest.approx(np.mean([12.5, 12.4, 10.8]))
    assert claims["combined_beats_extrinsic_score"]["holds"] and claims["combined_beats_extrinsic_score"]["n"] == 3
    assert claims["intrinsic_beats_random_score"]["effect"] == pytest.approx(0.4)
    assert not claims["intrinsic_beats_random_score"]["holds"]
    # the intrinsic reward per step: 40 / 400 steps in every episode set here
    assert claims["intrinsic_raises_intrinsic_per_step"]["effect"] == pytest.approx(0.0)


def test_reward_model_claims_count_held_out_pairs_and_probe_captions():
    from stages.motif.aggregate import claim_rows
    from stages.motif.reward import PROBES_BAD, PROBES_GOOD

    probes = {**{m: 2.0 + i for i, m in enumerate(PROBES_GOOD)},
              **{m: -0.5 - 0.1 * i for i, m in enumerate(PROBES_BAD)}}
    split = {"heldout_agreement": 0.7769, "heldout_decided": 251, "heldout_captions": 77, "distinct_captions": 256,
             "n_train": 1460}
    claims = claim_rows({}, {"heldout_agreement": 0.947, "heldout_decided": 599, "probe_rewards_normalized": probes,
                             "caption_split": split})
    unseen = claims["reward_model_agrees_with_judge_unseen_captions"]
    assert unseen["n"] == 251 and unseen["effect"] == pytest.approx(195 / 251) and unseen["holds"]
    assert "77 of 256 captions" in unseen["detail"]
    # too few unseen pairs to measure: no claim row, rather than a row about nothing
    assert "reward_model_agrees_with_judge_unseen_captions" not in claim_rows(
        {}, {"caption_split": {**split, "heldout_agreement": None, "heldout_decided": 0}})
    agree = claims["reward_model_agrees_with_judge"]
    assert agree["n"] == 599 and agree["effect"] == pytest.approx(567 / 599) and agree["holds"]
    assert agree["unit"] == "held-out caption pair" and agree["test"] == "exact binomial"
    ranks = claims["reward_model_ranks_progress_above_walls"]
    assert ranks["effect"] == pytest.approx(3.5 + 0.6) and ranks["holds"] and ranks["unit"] == "probe caption"


def test_aggregate_takes_agent_and_seed_from_provenance_not_paths(tmp_path):
    from stages.common.artifacts import save_checkpoint, write_table
    from stages.motif.aggregate import run
    from stages.motif.evaluate import EPISODES_SCHEMA, MESSAGES_SCHEMA
    from stages.motif.policy import Agent

    def episodes(folder, wildcards, inputs, score):
        rows = [{"episode": k, "seed": k, "score": score + k, "max_depth": 1, "turns": 10, "steps": 5,
                 "ext_return": 1.0, "intrinsic_return": 0.5, "reached_depth2": False, "crashed": False}
                for k in range(3)]
        path = tmp_path / folder / "episodes.parquet"
        write_table(path, pa.Table.from_pylist(rows, EPISODES_SCHEMA), EPISODES_SCHEMA,
                    {"wildcards": wildcards, "inputs": inputs})
        msgs = [{"message": "", "steps": 10, "episodes": 3, "rhat": float("nan"), "intrinsic": 0.0},
                {"message": f"score {score}", "steps": 5, "episodes": 3, "rhat": 1.0, "intrinsic": 1.5}]
        write_table(path.with_name("messages.parquet"), pa.Table.from_pylist(msgs, MESSAGES_SCHEMA),
                    MESSAGES_SCHEMA, {"wildcards": wildcards, "inputs": inputs})
        return path

    # folder names that say nothing (or something wrong) about the run
    trained = episodes("x/seed9", {"agent": "intrinsic", "seed": "4"}, {"policy": "h", "reward_model": "h"}, 50)
    random = episodes("y", {"seed": "4"}, {"reward_model": "h"}, 10)   # the random rule has no {agent}
    save_checkpoint(tmp_path / "z/policy.safetensors", Agent.from_params(N_ACTIONS, POLICY).state_dict(),
                    {"wildcards": {"agent": "intrinsic", "seed": "4"}})
    (tmp_path / "z/curve.csv").write_text("step,score\n64,1.0\n128,2.0\n")
    (tmp_path / "reward.json").write_text(json.dumps({"heldout_agreement": 0.8}))
    outs = {"table": tmp_path / "summary.parquet", "table_csv": tmp_path / "summary.csv",
            "plot": tmp_path / "agents.png", "metrics": tmp_path / "metrics.json",
            "claims": tmp_path / "claims.parquet", "messages_by_agent": tmp_path / "messages_by_agent.parquet"}
    tallies = [p.with_name("messages.parquet") for p in (trained, random)]
    run(StageContext("motif.aggregate", {}, {}, {"episodes": [trained, random], "messages": tallies,
                                                 "curves": [tmp_path / "z/curve.csv"],
                                                 "policies": [tmp_path / "z/policy.safetensors"],
                                                 "reward_metrics": tmp_path / "reward.json"}, outs))
    rows = pq.read_table(outs["table"]).to_pylist()
    assert [(r["agent"], r["seed"], r["score_mean"]) for r in rows] == [("random", 4, 11.0), ("intrinsic", 4, 51.0)]
    assert rows[0]["intrinsic_per_step_mean"] == pytest.approx(0.1)
    by_agent = pq.read_table(outs["messages_by_agent"]).to_pandas()
    assert by_agent[by_agent["rank"] == 1].set_index("agent").message.to_dict() == {
        "random": "score 10", "intrinsic": "score 50"}
    # one seed: the score gain is measured (40) but not shown, and metrics.json says so
    claims = {c["metric"]: c for c in pq.read_table(outs["claims"]).to_pylist()}
    score = claims["score (mean over held-out episodes), intrinsic minus random"]
    assert score["effect"] == 40.0 and score["n"] == 1 and not score["holds"]
    verdict = json.loads(outs["metrics"].read_text())["verdict"]
    assert verdict["intrinsic_beats_random_score"] is False
    assert verdict["claims"]["intrinsic_beats_random_score"]["n"] == 1

"""The fragment MDP as the PPO environment, and molecules from its terminal states."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from rdkit import Chem

from stages.chem.blocks import BLOCKS_SCHEMA, blocks_from_table
from stages.common.artifacts import read_table
from stages.envs.fragments import FragmentMDP, FragState


def load_mdp(blocks_path: str | Path, max_blocks: int) -> FragmentMDP:
    return FragmentMDP(blocks_from_table(read_table(blocks_path, BLOCKS_SCHEMA)), max_blocks)


class FragmentEnv:
    """FragmentMDP behind the `stages.rl.ppo_discrete` environment protocol (batched reset / observe /
    step over lists of FragState)."""

    def __init__(self, mdp: FragmentMDP):
        self.mdp = mdp
        self.n_actions = mdp.n_actions
        self.obs_dim = mdp.feature_dim

    def reset(self, n: int) -> list[FragState]:
        return [self.mdp.initial_state()] * n

    def observe(self, states: Sequence[FragState]) -> tuple[np.ndarray, np.ndarray]:
        return self.mdp.features(states), self.mdp.action_masks(states)

    def step(self, states: Sequence[FragState], actions: np.ndarray) -> tuple[list[FragState], np.ndarray]:
        nxt = [self.mdp.step(s, int(a)) for s, a in zip(states, actions)]
        return nxt, np.array([s.done for s in nxt], dtype=bool)


def unique_molecules(mdp: FragmentMDP, states: Sequence[FragState]) -> tuple[list[str], list[Chem.Mol]]:
    """Canonical SMILES and molecules of the distinct molecules among `states`, first-seen order."""
    seen: dict[str, Chem.Mol] = {}
    for s in states:
        mol = mdp.to_mol(s)
        seen.setdefault(Chem.MolToSmiles(mol), mol)
    return list(seen), list(seen.values())

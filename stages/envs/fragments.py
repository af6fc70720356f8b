"""Fragment-molecule MDP (the `seh_frag` environment of Bengio et al. 2021, as a flat action space).

A molecule is a tree of building blocks (`stages.chem.blocks.Block`). From the empty state the first
action picks a starting block; each later action bonds a new block, through one of its stems, to an
open stem of the current molecule, or stops. Joining rule (recursionpharma `FragMolBuildingEnvContext.
graph_to_obj`): a single bond between the two attachment atoms, one explicit H removed from each if it
has one, then `SanitizeMol`. Every stem takes at most one bond.

States are canonical: a `FragState` is the stem-labelled block tree up to renumbering, so the same tree
built in different orders is the same state and the state space is a DAG (`n_parents` counts the
distinct (parent, action) pairs, i.e. removable leaf blocks, for uniform backward policies).

Action layout (fixed size `n_actions = 1 + n_slots * n_pairs`):
  * 0 = stop (illegal on the empty state);
  * 1 + slot * n_pairs + pair = attach the block-stem `pairs[pair]` = (block id, stem index) to the
    state's `slot`-th open stem (open stems sorted by (node, stem)). On the empty state only
    slot 0 with the first usable stem of each block is legal: "start with that block".
`pairs` enumerates (block, stem) for every usable stem of every block; `n_slots` is the most open stems
a state that may still grow can have, (max_blocks - 1) * S - 2 * (max_blocks - 2) for blocks of at most
S >= 2 stems (at least 1).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
from rdkit import Chem
from rdkit.Chem import rdFingerprintGenerator

from stages.chem.blocks import Block

STOP = 0


@dataclass(frozen=True)
class FragState:
    """A block tree in canonical node order. `blocks[i]` is node i's block id; `bonds` holds
    (node_u, stem_u, node_v, stem_v) with u the parent (u < v), stems being indices into
    `Block.stems` (node i's stem k is atom `mdp.blocks[blocks[i]].stems[k]` of its block);
    `open_stems` the usable (node, stem) pairs without a bond, sorted; `done` after stop."""

    blocks: tuple[int, ...] = ()
    bonds: tuple[tuple[int, int, int, int], ...] = ()
    open_stems: tuple[tuple[int, int], ...] = ()
    done: bool = False

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)


def _canonical_order(blocks: Sequence[int], bonds: Sequence[tuple[int, int, int, int]]) -> list[int]:
    """Node order of the canonical form: preorder DFS (children by stem) from the root whose rooted
    encoding is smallest. Each rooted encoding is a complete invariant of the stem-labelled tree
    because a node's children are told apart by the (unique) stem they hang on."""
    n = len(blocks)
    adj: list[list[tuple[int, int, int]]] = [[] for _ in range(n)]
    for u, su, v, sv in bonds:
        adj[u].append((su, v, sv))
        adj[v].append((sv, u, su))
    for a in adj:
        a.sort()
    memo: dict[tuple[int, int], tuple] = {}

    def enc(v: int, parent: int) -> tuple:
        key = (v, parent)
        if key not in memo:
            memo[key] = (blocks[v], tuple((sv, sw, enc(w, v)) for sv, w, sw in adj[v] if w != parent))
        return memo[key]

    root = min(range(n), key=lambda v: enc(v, -1))
    order, stack = [], [(root, -1)]
    while stack:
        v, parent = stack.pop()
        order.append(v)
        stack.extend((w, v) for _, w, _ in reversed(adj[v]) if w != parent)
    return order


class FragmentMDP:
    """Deterministic fragment-assembly MDP over a block vocabulary; see the module docstring."""

    def __init__(self, blocks: Sequence[Block], max_blocks: int, fp_bits: int = 512,
                 fp_radius: int = 2):
        if max_blocks < 1:
            raise ValueError(f"max_blocks must be >= 1, got {max_blocks}")
        if not blocks:
            raise ValueError("the block vocabulary is empty")
        self.blocks = list(blocks)
        self.max_blocks = int(max_blocks)
        self.block_mols = [Chem.MolFromSmiles(b.smiles) for b in self.blocks]
        self.usable_stems = [self._usable_stems(i) for i in range(len(self.blocks))]
        for b, stems in zip(self.blocks, self.usable_stems):
            if not stems:
                raise ValueError(f"block {b.smiles} {b.stems}: no stem can take a bond")
        self.pairs = [(b, s) for b, stems in enumerate(self.usable_stems) for s in stems]
        self.pair_index = {p: i for i, p in enumerate(self.pairs)}
        self.start_pairs = np.array([self.pair_index[(b, stems[0])]
                                     for b, stems in enumerate(self.usable_stems)])
        self._start_actions = frozenset((1 + self.start_pairs).tolist())
        self.max_stems = max(len(s) for s in self.usable_stems)
        grow = [k * self.max_stems - 2 * (k - 1) for k in range(1, self.max_blocks)]
        self.n_slots = max([1, *grow])
        self.fp_bits = fp_bits
        self._fpgen = rdFingerprintGenerator.GetMorganGenerator(radius=fp_radius, fpSize=fp_bits)
        self._feature_memo: dict[FragState, np.ndarray] = {}
        self.feature_memo_size = 200_000

    # --- sizes ------------------------------------------------------------------------------------
    @property
    def n_block_types(self) -> int:
        return len(self.blocks)

    @property
    def n_pairs(self) -> int:
        return len(self.pairs)

    @property
    def n_actions(self) -> int:
        return 1 + self.n_slots * self.n_pairs

    def encode_action(self, slot: int, block: int, stem: int) -> int:
        return 1 + slot * self.n_pairs + self.pair_index[(block, stem)]

    def decode_action(self, action: int) -> tuple[int, int, int] | None:
        """None for stop, else (slot, block id, block stem)."""
        if action == STOP:
            return None
        slot, pair = divmod(action - 1, self.n_pairs)
        return (slot, *self.pairs[pair])

    # --- chemistry --------------------------------------------------------------------------------
    def _assemble(self, mols: Sequence[Chem.Mol], bonds: Sequence[tuple[int, int, int, int]]) -> Chem.Mol:
        """Join block molecules by single bonds between (node, atom) pairs, pop one explicit H per bond
        end, sanitize (raises on an invalid result)."""
        offsets = np.cumsum([0] + [m.GetNumAtoms() for m in mols])
        combined = mols[0]
        for m in mols[1:]:
            combined = Chem.CombineMols(combined, m)
        rw = Chem.RWMol(combined)
        for u, au, v, av in bonds:
            a, b = int(offsets[u] + au), int(offsets[v] + av)
            rw.AddBond(a, b, Chem.BondType.SINGLE)
            for idx in (a, b):
                atom = rw.GetAtomWithIdx(idx)
                if atom.GetNumExplicitHs() > 0:
                    atom.SetNumExplicitHs(atom.GetNumExplicitHs() - 1)
        mol = rw.GetMol()
        Chem.SanitizeMol(mol)
        return mol

    def _usable_stems(self, b: int) -> tuple[int, ...]:
        """Stems of block b that can take a bond: each alone, then all together, capped by methyls
        (the joining rule only changes the attachment atom, so this covers any partner)."""
        methyl = Chem.MolFromSmiles("C")
        stems = self.blocks[b].stems

        def ok(ks: Sequence[int]) -> bool:
            mols = [self.block_mols[b]] + [methyl] * len(ks)
            try:
                self._assemble(mols, [(0, stems[k], i + 1, 0) for i, k in enumerate(ks)])
                return True
            except Exception:  # noqa: BLE001 - any RDKit sanitization failure
                return False

        usable = [k for k in range(len(stems)) if ok([k])]
        while usable and not ok(usable):
            usable.pop()
        return tuple(usable)

    def to_mol(self, state: FragState) -> Chem.Mol:
        """The sanitized molecule of a non-empty state."""
        if not state.blocks:
            raise ValueError("the empty state has no molecule")
        mols = [self.block_mols[b] for b in state.blocks]
        atoms = [(u, self.blocks[state.blocks[u]].stems[su], v, self.blocks[state.blocks[v]].stems[sv])
                 for u, su, v, sv in state.bonds]
        return self._assemble(mols, atoms)

    def to_smiles(self, state: FragState) -> str:
        return Chem.MolToSmiles(self.to_mol(state))

    # --- states and transitions -------------------------------------------------------------------
    def initial_state(self) -> FragState:
        return FragState()

    def is_terminal(self, state: FragState) -> bool:
        return state.done

    def make_state(self, blocks: Sequence[int], bonds: Sequence[tuple[int, int, int, int]]
                   ) -> FragState:
        """Canonical (not done) state of a hand-given block tree: `blocks` are block ids of nodes
        0..n-1 in any order, `bonds` (node_u, stem_u, node_v, stem_v) with stems indexing Block.stems."""
        n = len(blocks)
        if n > self.max_blocks:
            raise ValueError(f"{n} blocks exceed max_blocks={self.max_blocks}")
        if any(not 0 <= b < self.n_block_types for b in blocks):
            raise ValueError(f"block ids {list(blocks)} outside 0..{self.n_block_types - 1}")
        if len(bonds) != max(n - 1, 0):
            raise ValueError(f"a tree of {n} blocks has {max(n - 1, 0)} bonds, got {len(bonds)}")
        ends = [(u, su) for u, su, _, _ in bonds] + [(v, sv) for _, _, v, sv in bonds]
        for node, stem in ends:
            if not 0 <= node < n or stem not in self.usable_stems[blocks[node]]:
                raise ValueError(f"bond end (node {node}, stem {stem}) is not a usable stem")
        if len(set(ends)) != len(ends):
            raise ValueError("a stem takes at most one bond")
        reach, frontier = {0}, [0]
        while n and frontier:
            v = frontier.pop()
            for u, _, w, _ in bonds:
                for a, b in ((u, w), (w, u)):
                    if a == v and b not in reach:
                        reach.add(b)
                        frontier.append(b)
        if n and len(reach) != n:
            raise ValueError("the bonds do not connect all blocks into one tree")
        return self._make_state(blocks, bonds)[0]

    def _make_state(self, blocks: Sequence[int], bonds: Sequence[tuple[int, int, int, int]]
                    ) -> tuple[FragState, list[int]]:
        """Canonical state of a block tree, and old node index -> new node index."""
        if not blocks:
            return FragState(), []
        order = _canonical_order(blocks, bonds)
        new = [0] * len(order)
        for i, old in enumerate(order):
            new[old] = i
        new_bonds = []
        for u, su, v, sv in bonds:
            if new[u] > new[v]:
                u, su, v, sv = v, sv, u, su
            new_bonds.append((new[u], su, new[v], sv))
        new_blocks = tuple(blocks[o] for o in order)
        used = {(u, su) for u, su, _, _ in new_bonds} | {(v, sv) for _, _, v, sv in new_bonds}
        open_stems = tuple((i, s) for i, b in enumerate(new_blocks) for s in self.usable_stems[b]
                           if (i, s) not in used)
        return FragState(new_blocks, tuple(sorted(new_bonds)), open_stems), new

    def action_mask(self, state: FragState) -> np.ndarray:
        """Legal actions, bool (n_actions,). Terminal states have none."""
        mask = np.zeros(self.n_actions, dtype=bool)
        if state.done:
            return mask
        if not state.blocks:
            mask[1 + self.start_pairs] = True
            return mask
        mask[STOP] = True
        if state.n_blocks < self.max_blocks:
            mask[1:1 + len(state.open_stems) * self.n_pairs] = True
        return mask

    def action_masks(self, states: Sequence[FragState]) -> np.ndarray:
        return np.stack([self.action_mask(s) for s in states]) if states else \
            np.zeros((0, self.n_actions), dtype=bool)

    def is_legal(self, state: FragState, action: int) -> bool:
        """action_mask(state)[action], without building the mask."""
        if state.done or not 0 <= action < self.n_actions:
            return False
        if not state.blocks:
            return action in self._start_actions
        if action == STOP:
            return True
        return state.n_blocks < self.max_blocks and (action - 1) // self.n_pairs < len(state.open_stems)

    def step(self, state: FragState, action: int) -> FragState:
        action = int(action)
        if not self.is_legal(state, action):
            raise ValueError(f"action {action} is illegal in state {state}")
        if action == STOP:
            return replace(state, done=True)
        slot, block, stem = self.decode_action(action)
        if not state.blocks:
            return self._make_state((block,), ())[0]
        node, node_stem = state.open_stems[slot]
        n = state.n_blocks
        return self._make_state(state.blocks + (block,), state.bonds + ((node, node_stem, n, stem),))[0]

    def parents(self, state: FragState) -> list[tuple[FragState, int]]:
        """Every edge into `state`: the (parent state, action) pairs with step(parent, action) == state.
        A parent can appear with several actions when symmetric stems give the same tree."""
        if state.done:
            return [(replace(state, done=False), STOP)]
        n = state.n_blocks
        if n == 0:
            return []
        if n == 1:
            return [(FragState(), 1 + int(self.start_pairs[state.blocks[0]]))]
        degree = [0] * n
        for u, _, v, _ in state.bonds:
            degree[u] += 1
            degree[v] += 1
        out: set[tuple[FragState, int]] = set()
        for leaf in (i for i in range(n) if degree[i] == 1):
            (bond,) = [b for b in state.bonds if leaf in (b[0], b[2])]
            u, su, v, sv = bond
            (anchor, anchor_stem, leaf_stem) = (v, sv, su) if u == leaf else (u, su, sv)
            keep = [i for i in range(n) if i != leaf]
            idx = {old: i for i, old in enumerate(keep)}
            bonds = [(idx[a], sa, idx[b], sb) for a, sa, b, sb in state.bonds if bond != (a, sa, b, sb)]
            parent, _ = self._make_state([state.blocks[i] for i in keep], bonds)
            # Every slot that rebuilds `state` (symmetric slots give several edges). A tree isomorphism
            # keeps block ids and stem labels, so only slots on a node of the anchor's block, at the
            # anchor's stem, joined by the leaf's own stem can; the others are skipped unbuilt (each
            # `step` costs a canonicalisation). An edge whose new block maps to another leaf is found
            # when that leaf is removed.
            action_of_slot = self.encode_action(0, state.blocks[leaf], leaf_stem) - 1
            for slot, (node, stem) in enumerate(parent.open_stems):
                if parent.blocks[node] != state.blocks[anchor] or stem != anchor_stem:
                    continue
                action = 1 + slot * self.n_pairs + action_of_slot
                if (parent, action) not in out and self.step(parent, action) == state:
                    out.add((parent, action))
        return sorted(out, key=lambda p: (p[1], p[0].blocks, p[0].bonds))

    def n_parents(self, state: FragState) -> int:
        return len(self.parents(state))

    # --- policy inputs ----------------------------------------------------------------------------
    @cached_property
    def feature_dim(self) -> int:
        """Length of `features`: block counts / max_blocks (n_block_types), bonded block-stem counts /
        max_blocks (n_pairs), per open-stem slot a one-hot of its block and one of its stem index
        (n_slots * (n_block_types + P), P = most stems of a block), [n_blocks / max_blocks,
        open stems / n_slots, empty, done] (4), Morgan bits of the molecule (fp_bits). The slot part
        lines up with the action layout, so a policy can tell which atom each slot's logits grow.
        seh_frag blocks, max_blocks=9, fp_bits=512: 72 + 127 + 34 * 78 + 4 + 512 = 3367."""
        stem_positions = max(len(b.stems) for b in self.blocks)
        return (self.n_block_types + self.n_pairs + self.n_slots * (self.n_block_types + stem_positions)
                + 4 + self.fp_bits)

    def features(self, states: Sequence[FragState]) -> np.ndarray:
        """Fixed-length float32 encoding (len(states), feature_dim), see `feature_dim`. Rows are memoised
        per state: training revisits the same prefixes constantly and the fingerprint needs the molecule."""
        if len(self._feature_memo) > self.feature_memo_size:
            self._feature_memo.clear()
        todo = [s for s in dict.fromkeys(states) if s not in self._feature_memo]
        if todo:
            self._feature_memo.update(zip(todo, self._features(todo)))
        if not states:
            return np.zeros((0, self.feature_dim), dtype=np.float32)
        return np.stack([self._feature_memo[s] for s in states])

    def _features(self, states: Sequence[FragState]) -> np.ndarray:
        nb, npair = self.n_block_types, self.n_pairs
        stem_positions = max(len(b.stems) for b in self.blocks)
        slot_width = nb + stem_positions
        out = np.zeros((len(states), self.feature_dim), dtype=np.float32)
        o_pairs, o_slots = nb, nb + npair
        o_scalar = o_slots + self.n_slots * slot_width
        o_fp = o_scalar + 4
        for row, s in zip(out, states):
            np.add.at(row, list(s.blocks), 1.0 / self.max_blocks)
            for u, su, v, sv in s.bonds:
                row[o_pairs + self.pair_index[(s.blocks[u], su)]] += 1.0 / self.max_blocks
                row[o_pairs + self.pair_index[(s.blocks[v], sv)]] += 1.0 / self.max_blocks
            for k, (node, stem) in enumerate(s.open_stems[:self.n_slots]):
                base = o_slots + k * slot_width
                row[base + s.blocks[node]] = 1
                row[base + nb + stem] = 1
            row[o_scalar:o_fp] = (s.n_blocks / self.max_blocks, len(s.open_stems) / self.n_slots,
                                  not s.blocks, s.done)
            if s.blocks:
                row[o_fp:] = self._fpgen.GetFingerprintAsNumPy(self.to_mol(s))
        return out

    # --- sampling ---------------------------------------------------------------------------------
    def random_rollouts(self, n: int, rng: np.random.Generator, stop_prob: float = 0.3
                        ) -> list[FragState]:
        """`n` terminal states of a random policy: stop with probability `stop_prob` when legal (and
        always when nothing else is), otherwise a uniformly random legal non-stop action."""
        out = []
        for _ in range(n):
            state = self.initial_state()
            while not state.done:
                mask = self.action_mask(state)
                grow = np.flatnonzero(mask[1:]) + 1
                if mask[STOP] and (grow.size == 0 or rng.random() < stop_prob):
                    action = STOP
                else:
                    action = int(grow[rng.integers(grow.size)])
                state = self.step(state, action)
            out.append(state)
        return out

"""Stage 1, blocks: the fragment vocabulary of the MDP, as a Parquet table.

`source: seh_frag72` takes the 72 fragments of the `seh_frag` task verbatim; `source: brics` derives a
vocabulary by BRICS decomposition of RDKit's bundled NCI sample (most frequent pieces first). The `source`
column of every row says which, with the exact recipe (repository/commit or input file and cut-offs),
and the Parquet provenance holds the params.
"""
from __future__ import annotations

import logging

from stages.chem.blocks import (
    BLOCKS_SCHEMA,
    BRICS_SOURCE,
    SEH_FRAG_PROVENANCE,
    blocks_table,
    brics_blocks,
    nci_smiles,
    seh_frag_blocks,
)
from stages.common.stage import StageContext

log = logging.getLogger(__name__)


def vocabulary(p: dict):
    """(blocks, source description) for params `lambdazero.blocks`."""
    if p["source"] == "seh_frag72":
        prov = SEH_FRAG_PROVENANCE
        return seh_frag_blocks(), (f"seh_frag72: {prov['repo']}@{prov['commit']} {prov['path']} "
                                   f"{prov['name']} ({prov['license']})")
    if p["source"] == "brics":
        b = p["brics"]
        blocks = brics_blocks(nci_smiles(b["n_molecules"]), max_blocks=b["max_blocks"],
                              min_count=b["min_count"], max_atoms=b["max_atoms"])
        if len(blocks) < 2:
            raise ValueError(f"BRICS vocabulary has {len(blocks)} block(s); lower "
                             f"lambdazero.blocks.brics.min_count or raise n_molecules")
        return blocks, (f"brics: RDKit BRICS.BRICSDecompose of {BRICS_SOURCE}, first {b['n_molecules']} "
                        f"molecules; pieces in >= {b['min_count']} molecules, <= {b['max_atoms']} heavy "
                        f"atoms, {len(blocks)} most frequent (max {b['max_blocks']})")
    raise ValueError(f"lambdazero.blocks.source must be seh_frag72 or brics, got {p['source']!r}")


def run(ctx: StageContext) -> None:
    blocks, source = vocabulary(ctx.params["blocks"])
    log.info("%d blocks (%s)", len(blocks), source)
    ctx.write_table("blocks", blocks_table(blocks, source), BLOCKS_SCHEMA)

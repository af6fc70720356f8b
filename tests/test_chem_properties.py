"""Drug-likeness properties, filters and SMILES parsing (stages/chem/properties.py)."""
import numpy as np
import pytest

from stages.chem.properties import (
    InvalidMolecule,
    lipinski_violations,
    murcko_scaffold,
    pains_alerts,
    parse_smiles,
    qed,
    sa_score,
    soft_gate,
)

ASPIRIN = "CC(=O)Oc1ccccc1C(=O)O"


def test_aspirin_qed():
    assert qed(parse_smiles(ASPIRIN)) == pytest.approx(0.55, abs=0.01)


@pytest.mark.parametrize("simple,complex_", [
    ("CCO", "CC[C@H]1C[C@@H]2[C@H]3CC[C@]4(O)C[C@H](O)[C@@]5(C)[C@@H]4[C@@H]3C[C@@H]2N1C5"),
    (ASPIRIN, "C[C@H]1C[C@@]2(O)[C@@H](C)C(=O)O[C@]23C[C@H]1[C@@]1(C)CC[C@H](O)C[C@@H]31"),
])
def test_sa_score_orders_simple_before_complex(simple, complex_):
    easy, hard = sa_score(parse_smiles(simple)), sa_score(parse_smiles(complex_))
    assert 1 <= easy < hard <= 10


@pytest.mark.parametrize("x,c0,c1,expected", [
    (0.5, 0.0, 1.0, 0.5), (2.0, 0.0, 1.0, 1.0), (-1.0, 0.0, 1.0, 0.01),
    (4.5, 6.0, 3.0, 0.5), (2.0, 6.0, 3.0, 1.0), (7.0, 6.0, 3.0, 0.01),  # SA: lower is better
])
def test_soft_gate(x, c0, c1, expected):
    assert soft_gate(x, c0, c1) == pytest.approx(expected)


def test_soft_gate_vectorized_and_degenerate():
    out = soft_gate(np.array([0.0, 0.5, 1.0]), 0.0, 1.0)
    np.testing.assert_allclose(out, [0.01, 0.5, 1.0])
    with pytest.raises(ValueError, match="c0 != c1"):
        soft_gate(1.0, 2.0, 2.0)


@pytest.mark.parametrize("smiles,violations", [
    (ASPIRIN, 0),
    ("C" * 40, 2),  # MW > 500 and logP > 5
    ("OCC(O)C(O)C(O)C(O)CO", 1),  # six H-bond donors
])
def test_lipinski_violations(smiles, violations):
    assert lipinski_violations(parse_smiles(smiles)) == violations


@pytest.mark.parametrize("smiles,alert", [
    ("Oc1ccc(N=Nc2ccccc2)cc1", "azo_A"),
    ("O=C1C(=Cc2ccccc2)SC(=S)N1", "ene_rhod_A"),
])
def test_pains_hits_known_compounds(smiles, alert):
    alerts = pains_alerts(parse_smiles(smiles))
    assert any(a.startswith(alert) for a in alerts), alerts


def test_pains_clean_on_aspirin():
    assert pains_alerts(parse_smiles(ASPIRIN)) == []


@pytest.mark.parametrize("smiles,scaffold", [
    (ASPIRIN, "c1ccccc1"), ("CCO", ""), ("CC(C)Cc1ccc(C2CCNCC2)cc1", "c1ccc(C2CCNCC2)cc1")])
def test_murcko_scaffold(smiles, scaffold):
    assert murcko_scaffold(smiles) == scaffold


@pytest.mark.parametrize("bad", ["C1CC(", "c1ccccc", "C(C)(C)(C)(C)C", "", "not a molecule"])
def test_invalid_smiles_is_named(bad):
    with pytest.raises(InvalidMolecule, match="SMILES") as err:
        parse_smiles(bad)
    assert isinstance(err.value, ValueError)
    if bad:
        assert repr(bad) in str(err.value)

"""The committed dvc.yaml is exactly what `python -m stages dvc` generates from the Snakefile."""
from pathlib import Path

import yaml

from stages.common import dvcgen

ROOT = Path(__file__).resolve().parents[1]


def test_committed_dvc_yaml_matches_the_snakefile():
    assert (ROOT / "dvc.yaml").read_text() == dvcgen.render(), \
        "dvc.yaml is stale: run `python -m stages dvc` and commit it"


def test_dvc_stages_declare_code_params_and_outputs():
    stages = yaml.safe_load(dvcgen.render())["stages"]
    train = stages["koopman_train_duffing_0"]
    assert train["deps"][0] == "data/code/koopman.train.sha256"  # its code, as one fingerprint file
    assert not any(d.startswith("stages/") for d in train["deps"])
    code = stages["code_fingerprints"]
    assert "stages/koopman/train.py" in code["deps"] and "stages/common/stage.py" in code["deps"]
    assert {"data/code/koopman.train.sha256": {"cache": False}} in code["outs"]
    assert "data/koopman/duffing/trajectories.parquet" in train["deps"]
    assert train["params"] == ["koopman.model", "koopman.systems.duffing", "koopman.train"]
    assert "results/koopman/duffing/seed0/model.safetensors" in train["outs"]
    assert "--params-file params.yaml" in train["cmd"] and "--seed 0" in train["cmd"]
    evaluate = stages["koopman_evaluate_duffing_0"]
    assert evaluate["metrics"] == ["results/koopman/duffing/seed0/metrics.json"]
    # a stage reads only its own system's params: pendulum knobs never re-run duffing stages
    assert not any("pendulum" in p for p in train["params"] + stages["koopman_simulate_duffing"]["params"])

# One DAG for both engines: these rules define the graph; `python -m stages dvc` writes dvc.yaml from it.
# params.yaml is the configfile; profiles overlay it: snakemake --configfile params.yaml config/paper.yaml
from stages.common.params import validate
from stages.common.workflow import STAGE_SHELL, code_inputs, stage_params


configfile: "params.yaml"


validate(config, source="Snakemake config (params.yaml and overlays)")

report: "report/workflow.rst"


include: "stages/koopman/rules.smk"
include: "stages/demp/rules.smk"
include: "stages/maxent_gfn/rules.smk"
include: "stages/decoupled/rules.smk"
include: "stages/motif/rules.smk"
include: "stages/lambdazero/rules.smk"


rule all:
    default_target: True
    input:
        rules.koopman_all.input,
        rules.demp_all.input,
        rules.maxent_gfn_all.input,
        rules.decoupled_all.input,
        rules.motif_all.input,
        rules.lambdazero_all.input,

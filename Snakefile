# One DAG for both engines: these rules define the graph; `python -m stages dvc` writes dvc.yaml from it.
# params.yaml is the config; profiles overlay it: snakemake --configfile config/paper.yaml
# Every method folder stages/<method>/ with a rules.smk is included, and its `<method>_all` target joins
# `all`: adding a method needs no edit here (`python -m stages new <method>`).
from stages.common.params import deep_merge, read_params_file, validate_remembered
from stages.common.workflow import STAGE_SHELL, code_inputs, method_names, stage_env, stage_params


# What `configfile: "params.yaml"` does (params.yaml under what the command line gave: --configfile
# overlays, --config), with libyaml's parser instead of Snakemake's pure-Python one (0.1 s a run).
config.update(deep_merge(read_params_file("params.yaml"), config))
validate_remembered(config, source="Snakemake config (params.yaml and overlays)")

report: "report/workflow.rst"


# The template every stage rule extends (`use rule stage as <method>_<stage> with: ...`): the command
# both engines run, and the conda env of the rule's method (envs/<method>.yaml).
rule stage:
    log:
        "logs/stage.log",  # every rule that extends the template names its own
    conda:
        stage_env
    shell:
        STAGE_SHELL


for _method in method_names():

    include: f"stages/{_method}/rules.smk"


rule all:
    default_target: True
    input:
        [getattr(rules, f"{m}_all").input for m in method_names()],

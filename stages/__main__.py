"""Command line: `python -m stages {run,list,show,summary,dvc,profile,validate}`."""
from __future__ import annotations

import argparse
import difflib
import json
import sys
from pathlib import Path

from stages.common.code import ROOT


def cmd_list(args) -> int:
    import yaml

    from stages.common.params import method_dirs

    dvc = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for method in method_dirs():
        print(f"{method.name}")
        for name, stage in dvc.items():
            if name.startswith(method.name + "_"):
                outs = [next(iter(o)) if isinstance(o, dict) else o
                        for kind in ("outs", "metrics", "plots") for o in stage.get(kind, [])]
                print(f"  {name}\n    " + "\n    ".join(outs))
        print(f"  target: snakemake {method.name}_all")
    return 0


def cmd_show(args) -> int:
    from stages.common import artifacts

    path = Path(args.path)
    print(f"# {path}\n## provenance\n{json.dumps(artifacts.read_provenance(path), indent=2)}")
    if path.suffix == ".parquet":
        table = artifacts.read_table(path)
        print(f"## schema ({table.num_rows} rows)")
        for field in table.schema:
            print(f"  {field.name}: {field.type}")
        print(f"## first {args.rows} rows\n{table.slice(0, args.rows).to_pandas().to_string()}")
    else:
        tensors = artifacts.load_checkpoint(path)
        print("## tensors")
        for name, t in tensors.items():
            print(f"  {name}: {tuple(t.shape)} {t.dtype}")
    return 0


def cmd_summary(args) -> int:
    import pandas as pd

    from stages.common.params import method_dirs

    pd.set_option("display.width", 160)
    for method in method_dirs():
        folder = ROOT / "results" / method.name
        table, metrics = folder / "summary.parquet", folder / "metrics.json"
        print(f"== {method.name}")
        if not table.exists():
            print(f"  not built yet: snakemake {method.name}_all")
            continue
        print(pd.read_parquet(table).to_string(index=False))
        if metrics.exists():
            print(f"  (all metrics: {metrics.relative_to(ROOT)}, or `dvc metrics show`)")
    return 0


def cmd_dvc(args) -> int:
    from stages.common import dvcgen

    target = ROOT / "dvc.yaml"
    if not args.check:
        dvcgen.write(target)
        print(f"wrote {target}")
        return 0
    want, have = dvcgen.render(), target.read_text() if target.exists() else ""
    if want == have:
        return 0
    sys.stdout.writelines(difflib.unified_diff(have.splitlines(True), want.splitlines(True),
                                               "dvc.yaml (committed)", "dvc.yaml (from Snakefile)"))
    print("dvc.yaml is out of date: run `python -m stages dvc`", file=sys.stderr)
    return 1


def cmd_profile(args) -> int:
    from ruamel.yaml import YAML

    from stages.common import dvcgen
    from stages.common.artifacts import atomic_path
    from stages.common.params import load_params

    overlay = ROOT / "config" / f"{args.name}.yaml"
    target = ROOT / "params.yaml"
    load_params(target, overlay)  # validate the result before touching params.yaml
    rt = YAML()
    rt.preserve_quotes = True  # "yes" / "no" must stay strings for YAML 1.1 readers (PyYAML, Snakemake)
    doc, patch = rt.load(target.read_text()), rt.load(overlay.read_text())

    def apply(node, values):
        for key, value in values.items():
            if isinstance(value, dict) and isinstance(node.get(key), dict):
                apply(node[key], value)
            else:
                node[key] = value

    apply(doc, patch)
    with atomic_path(target) as tmp, open(tmp, "w") as fh:
        rt.dump(doc, fh)
    dvcgen.write()  # a profile may add systems or seeds, i.e. DVC stages
    print(f"params.yaml and dvc.yaml now hold the '{args.name}' profile; `dvc repro` re-runs what "
          f"it changes.\n"
          f"Return to the default scale with `git checkout params.yaml dvc.yaml`.")
    return 0


def cmd_validate(args) -> int:
    from stages.common.params import load_params

    load_params(*args.files)
    print(f"ok: {' + '.join(args.files)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["run"]:
        from stages.common.stage import main as run_stage

        return run_stage(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m stages", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("run", help="run one stage (what Snakemake and DVC call)")
    sub.add_parser("list", help="methods, their stages and targets").set_defaults(fn=cmd_list)
    show = sub.add_parser("show", help="one artifact: schema, provenance, first rows")
    show.add_argument("path")
    show.add_argument("--rows", type=int, default=5)
    show.set_defaults(fn=cmd_show)
    sub.add_parser("summary", help="latest results of every method").set_defaults(fn=cmd_summary)
    dvc = sub.add_parser("dvc", help="write dvc.yaml from the Snakefile")
    dvc.add_argument("--check", action="store_true", help="exit 1 if the committed dvc.yaml is stale")
    dvc.set_defaults(fn=cmd_dvc)
    prof = sub.add_parser("profile", help="apply config/NAME.yaml onto params.yaml (for DVC)")
    prof.add_argument("name")
    prof.set_defaults(fn=cmd_profile)
    val = sub.add_parser("validate", help="validate params files (merged in order)")
    val.add_argument("files", nargs="*", default=["params.yaml"])
    val.set_defaults(fn=cmd_validate)
    args = ap.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception as exc:  # one clear line instead of a traceback for the errors we raise on purpose
        from stages.common.artifacts import ArtifactError
        from stages.common.params import ParamsError

        if isinstance(exc, (ArtifactError, ParamsError)):
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        raise

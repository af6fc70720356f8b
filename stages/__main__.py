"""Command line: `python -m stages {run,list,show,summary,fingerprint,dvc,profile,new,validate,sandbox}`."""
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
    """One table of every claim of every method (results/<method>/claims.parquet), then the tables."""
    import pandas as pd

    from stages.common.params import method_dirs

    pd.set_option("display.width", 200)
    pd.set_option("display.max_colwidth", 70)
    claims, missing = [], []
    for method in method_dirs():
        # a method with several aggregates keeps one claims file per aggregate under results/<method>/
        paths = sorted((ROOT / "results" / method.name).glob("**/claims.parquet"))
        claims += [pd.read_parquet(p) for p in paths]
        if not paths:
            missing.append(method.name)
    if claims:
        table = pd.concat(claims, ignore_index=True)
        table["interval"] = [f"[{lo:.3g}, {hi:.3g}]" for lo, hi in zip(table.ci_low, table.ci_high)]
        table["holds"] = table.holds.map({True: "yes", False: "NO"})
        cols = ["method", "claim", "effect", "interval", "n", "unit", "test", "p_value", "holds"]
        print("== claims (effect, its confidence interval, n units, test; holds = test and interval agree)")
        print(table[cols].to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    for name in missing:
        print(f"== {name}: no claims yet (build with `snakemake {name}_all`)")
    for method in method_dirs():
        if args.tables or method.name in missing:
            path = ROOT / "results" / method.name / "summary.parquet"
            if path.exists():
                print(f"== {method.name} summary table\n{pd.read_parquet(path).to_string(index=False)}")
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


def cmd_fingerprint(args) -> int:
    from stages.common import fingerprint

    print(f"wrote {len(fingerprint.write(args.modules))} code fingerprints under {fingerprint.FINGERPRINT_DIR}/")
    return 0


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


def cmd_new(args) -> int:
    from stages.common.scaffold import ScaffoldError, new_method

    try:
        written = new_method(args.method)
    except ScaffoldError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("wrote\n  " + "\n  ".join(str(p.relative_to(ROOT)) for p in written))
    print(f"next: `snakemake --cores 2 {args.method}_all --configfile params.yaml config/tiny.yaml`, "
          f"`pytest tests/test_{args.method}.py`, then `python -m stages dvc` (docs/adding-a-method.md)")
    return 0


def cmd_validate(args) -> int:
    from stages.common.params import load_params

    load_params(*args.files)
    print(f"ok: {' + '.join(args.files)}")
    return 0


def cmd_sandbox(argv: list[str]) -> int:
    """Run a Python file under MaestroMotif's sandbox (checks + limits); non-zero exit on refusal."""
    from stages.maestromotif.sandbox import main as run_sandbox

    return run_sandbox(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["run"]:
        from stages.common.stage import main as run_stage

        return run_stage(argv[1:])
    if argv[:1] == ["sandbox"]:
        return cmd_sandbox(argv[1:])
    ap = argparse.ArgumentParser(prog="python -m stages", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("run", help="run one stage (what Snakemake and DVC call)")
    sub.add_parser("sandbox", help="run FILE.py under the sandbox for LLM-written code (maestromotif)")
    sub.add_parser("list", help="methods, their stages and targets").set_defaults(fn=cmd_list)
    show = sub.add_parser("show", help="one artifact: schema, provenance, first rows")
    show.add_argument("path")
    show.add_argument("--rows", type=int, default=5)
    show.set_defaults(fn=cmd_show)
    summ = sub.add_parser("summary", help="every claim of every method, as one table")
    summ.add_argument("--tables", action="store_true", help="also print each method's summary table")
    summ.set_defaults(fn=cmd_summary)
    fp = sub.add_parser("fingerprint", help="write data/code/<module>.sha256 for stage modules (DVC's code deps)")
    fp.add_argument("modules", nargs="+", help="stage modules, e.g. koopman.train")
    fp.set_defaults(fn=cmd_fingerprint)
    dvc = sub.add_parser("dvc", help="write dvc.yaml from the Snakefile")
    dvc.add_argument("--check", action="store_true", help="exit 1 if the committed dvc.yaml is stale")
    dvc.set_defaults(fn=cmd_dvc)
    prof = sub.add_parser("profile", help="apply config/NAME.yaml onto params.yaml (for DVC)")
    prof.add_argument("name")
    prof.set_defaults(fn=cmd_profile)
    new = sub.add_parser("new", help="write a working skeleton method (rules, schema, stages, env, test)")
    new.add_argument("method", help="lower_snake_case method name")
    new.set_defaults(fn=cmd_new)
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

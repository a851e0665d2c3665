"""Runs every benchmarks/bench_*.py and writes one markdown table of figures vs baselines.

Each bench module defines `run(workdir: str, quick: bool) -> list[common.Row]`; baselines are
measured in the same run, so the ratio is what matters, not the absolute numbers.
"""

import argparse
import datetime
import importlib.util
import os
import sys
import tempfile
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import common  # noqa: E402


def _load(path: str):
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # AutoGraph reads a function's module from sys.modules
    spec.loader.exec_module(module)
    return module


def _format(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"


def render(rows: list[common.Row], failures: list[str], machine: str) -> str:
    """The markdown table of `rows`, each with the machine and the time it was measured."""
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [
        "# Benchmark results",
        "",
        "Written by `make bench` (`benchmarks/run.py`). Each baseline is measured in the same run",
        "as its figure; each row names the machine and the time it was measured.",
        "",
        "| benchmark | figure | value | baseline | baseline value | ratio | target | machine "
        "| measured |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else ""
        lines.append(
            f"| {row.benchmark} | {row.figure} | {_format(row.value)} {row.unit} | {row.baseline} "
            f"| {_format(row.baseline_value)} | {ratio} | {row.target} | {machine} | {when} |"
        )
    for failure in failures:
        lines += ["", f"FAILED: {failure}"]
    return "\n".join(lines) + "\n"


def merge(previous: str, current: str, rerun: list[str]) -> str:
    """`current` (the rerun modules' table) with the rows of every other benchmark kept.

    A module bench_NAME writes rows named NAME. Rows and FAILED lines of modules not rerun are
    kept from `previous` as they were (with the time they were measured).
    """
    names = {module.removeprefix("bench_") for module in rerun}
    lines = current.rstrip("\n").split("\n")
    table_end = max(index for index, line in enumerate(lines) if line.startswith("|")) + 1
    kept_rows, kept_failures = [], []
    for line in previous.split("\n"):
        cells = [cell.strip() for cell in line.split("|")]
        if line.startswith("| ") and len(cells) > 2 and cells[1] not in names | {"benchmark"}:
            kept_rows.append(line)
        elif line.startswith("FAILED: ") and line[len("FAILED: ") :] not in rerun:
            kept_failures += ["", line]
    merged = lines[:table_end] + kept_rows + lines[table_end:]
    return "\n".join(merged + kept_failures) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", default=os.path.join(HERE, "RESULTS.md"))
    parser.add_argument("--only", nargs="*", help="bench module names (e.g. bench_preprocess)")
    parser.add_argument("--quick", action="store_true", help="smaller workloads, for a smoke run")
    parser.add_argument("--workdir", default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument(
        "--update",
        action="store_true",
        help="with --only: replace those benchmarks' rows in --output, keep the others'",
    )
    args = parser.parse_args(argv)

    paths = sorted(
        os.path.join(HERE, name)
        for name in os.listdir(HERE)
        if name.startswith("bench_") and name.endswith(".py")
    )
    if args.only:
        paths = [p for p in paths if os.path.splitext(os.path.basename(p))[0] in args.only]
    rows, failures = [], []
    workdir = args.workdir or tempfile.mkdtemp(prefix="happysad-bench-")
    for path in paths:
        name = os.path.splitext(os.path.basename(path))[0]
        print(f"== {name}", flush=True)
        try:
            module_rows = _load(path).run(os.path.join(workdir, name), args.quick)
        except Exception:  # a broken benchmark must not hide the others' figures
            traceback.print_exc()
            failures.append(name)
            continue
        for row in module_rows:
            ratio = f" ({row.ratio:.2f}x {row.baseline})" if row.ratio is not None else ""
            print(f"   {row.figure}: {_format(row.value)} {row.unit}{ratio}", flush=True)
        rows.extend(module_rows)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    text = render(rows, failures, common.machine())
    if args.update and os.path.exists(args.output):
        with open(args.output, encoding="utf-8") as previous:
            names = [os.path.splitext(os.path.basename(path))[0] for path in paths]
            text = merge(previous.read(), text, names)
    with open(args.output, "w", encoding="utf-8") as out:
        out.write(text)
    print(f"wrote {args.output}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m bench [NAME ...] [--quick] [--out DIR] [--no-write]``: run the benchmarks."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import re
import resource
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path

from ._harness import ROOT, Context, Postgres, Result, machine

#: In the order they run: (name on the command line, module).
BENCHMARKS = {
    "send": "bench.send",
    "sendcost": "bench.sendcost",
    "bulk": "bench.bulk",
    "latency": "bench.latency",
    "fanout": "bench.fanout",
    "connections": "bench.connections",
    "roundtrip": "bench.roundtrip",
    "broadcaster": "bench.alternative",
    "joins": "bench.joins",
    "cluster": "bench.cluster",
    "presence": "bench.presence",
}
DOC = ROOT / "docs" / "benchmarks.md"


def raise_open_files_limit() -> int:
    """Up to the hard limit: the servers and load generators we start inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def section(result: Result, info: dict[str, str], command: str) -> str:
    lines = [
        f"### {result.title}",
        "",
        f"Measured {info['date']} with `{command}`.",
        "",
        result.markdown,
        "",
    ]
    if result.plot is not None:
        rel = result.plot.relative_to(DOC.parent) if result.plot.is_relative_to(DOC.parent) else result.plot
        lines += [f"![{result.title}]({rel})", ""]
    lines.append(f"**Result:** {result.verdict}")
    return "\n".join(lines)


def replace_block(text: str, key: str, body: str) -> str:
    start, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    block = f"{start}\n{body}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        return pattern.sub(lambda _: block, text)
    return text.rstrip("\n") + "\n\n" + block + "\n"


def write_doc(results: list[Result], info: dict[str, str], command: str) -> None:
    text = DOC.read_text() if DOC.exists() else "# Benchmarks\n"
    machine_lines = "\n".join(f"- {key}: {value}" for key, value in info.items())
    text = replace_block(text, "machine", machine_lines)
    for result in results:
        text = replace_block(text, result.name, section(result, info, command))
    DOC.write_text(text)


async def run_all(names: list[str], ctx: Context) -> list[Result]:
    results: list[Result] = []
    for name in names:
        module = importlib.import_module(BENCHMARKS[name])
        print(f"\n== {module.TITLE} ({name})", flush=True)
        started = time.monotonic()
        try:
            result: Result = await module.run(ctx)
        except Exception:
            traceback.print_exc()
            print(f"!! {name} failed", flush=True)
            continue
        print(result.markdown)
        print(f"-> {result.verdict}  [{time.monotonic() - started:.0f} s]", flush=True)
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", metavar="NAME", help="any of: " + ", ".join(BENCHMARKS))
    parser.add_argument("--quick", action="store_true", help="a short smoke run (results are not written)")
    parser.add_argument(
        "--out", type=Path, help="where plots go (default docs/bench, or a temporary directory with --quick)"
    )
    parser.add_argument("--no-write", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    names = args.names or list(BENCHMARKS)
    raise_open_files_limit()
    command = "python -m bench " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    command = command.strip()
    with tempfile.TemporaryDirectory(prefix="pg-realtime-bench-") as tmp:
        workdir = Path(tmp)
        out_dir = args.out or (workdir / "plots" if args.quick else ROOT / "docs" / "bench")
        pg = Postgres(workdir / "pg")
        try:
            ctx = Context(pg=pg, workdir=workdir, out_dir=out_dir, quick=args.quick)
            info = machine()
            info["postgresql"] = pg.version()
            results = asyncio.run(run_all(names, ctx))
        finally:
            pg.stop()
    print("\n== summary")
    for result in results:
        print(f"{result.name:12} {result.verdict}")
    if results and not args.quick and not args.no_write:
        write_doc(results, info, command)
        print(f"results written to {DOC.relative_to(ROOT)}")
    return 0 if len(results) == len(names) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark runner: `make bench` (full) and `make bench-quick`.

Imports every ``tools/bench/bench_*.py``, calls ``run(quick, out_dir)``, and writes each result
to ``docs/benchmarks/<name>.json`` and ``.md``, then an index ``docs/benchmarks/README.md``, and
last regenerates the summary region of ``docs/benchmarks.md`` from every committed JSON report
(``tools/bench/summary.py``; ``--only`` runs still refresh it).

    python tools/bench/run_all.py --quick            # all, quick sizes
    python tools/bench/run_all.py --only ingest      # one benchmark
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")


def discover() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in (ROOT / "tools" / "bench").glob("bench_*.py"))


def machine() -> str:
    import psutil
    import torch

    return (
        f"{platform.machine()}, {psutil.cpu_count(logical=True)} logical cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, "
        f"Python {platform.python_version()}, torch {torch.__version__}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true")
    mode.add_argument("--full", action="store_true")
    parser.add_argument("--only", action="append", help="benchmark name (repeatable)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks"))
    args = parser.parse_args(argv)
    quick = not args.full
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = args.only or discover()
    unknown = set(names) - set(discover())
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; known: {discover()}")
    failures = 0
    for name in names:
        print(f"\n### {name} ({'quick' if quick else 'full'})", flush=True)
        started = time.time()
        module = importlib.import_module(f"tools.bench.bench_{name}")
        try:
            result = module.run(quick=quick, out_dir=out_dir)
        except Exception as exc:  # report and go on with the others
            failures += 1
            print(f"benchmark {name} failed: {exc!r}", flush=True)
            continue
        elapsed = time.time() - started
        command = f"python tools/bench/run_all.py --{'quick' if quick else 'full'} --only {name}"
        header = (
            f"# {result['title']}\n\nCommand: `{command}` ({elapsed:.0f} s, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})  \nMachine: {machine()}\n\n"
        )
        (out_dir / f"{name}.md").write_text(header + result["markdown"].rstrip() + "\n")
        payload = {"title": result["title"], "command": command, "seconds": elapsed, "quick": quick, **result["data"]}
        (out_dir / f"{name}.json").write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
        print(result["markdown"], flush=True)
    index = ["# Benchmark results", "", "Regenerate with `make bench-quick` (or `make bench`).", ""]
    index += [f"- [{p.stem}]({p.name})" for p in sorted(out_dir.glob("*.md")) if p.name != "README.md"]
    (out_dir / "README.md").write_text("\n".join(index) + "\n")
    from tools.bench import summary

    summary.write(out_dir.parent / "benchmarks.md", out_dir)
    print(f"summary written to {out_dir.parent / 'benchmarks.md'}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

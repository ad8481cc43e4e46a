"""Start-up overhead of `imagesim chip` and `imagesim nodata-index` (issue 20, "Start-up").

Whole-process: each command runs as an `imagesim` subprocess on a small delivery (one COG of the small
sample, 1,024 z17 chips), ``--repeat`` times, each into a fresh output folder; its overhead is the median
wall time less the median time of the same work done here, in this already-warm process (every import
done, one untimed run first): the library function the command calls, the same inputs, fresh folders.
The baseline is the same measurement of the CLI as it was at ``--baseline-rev`` (its
python/imagesim/cli/ read from git and loaded as `imagesim.cli`) with the typer it ran with
(``--baseline-typer``, installed into WORK once; the library and the rest of the environment are this
checkout's), in the same run, interleaved with the current one so that load on the machine hits both
alike. imagesim and the baseline CLI are byte-compiled first, as an installed package is (``--no-compile``:
not). Also printed: `python -c pass`, `imagesim --help`, and the library call as a script of its own (no
CLI): the floor under any CLI's overhead. Goal: overhead ≤ 0.15 s.

    python benches/bench_startup.py [--repeat 7] [--proc 2] [--work /tmp/imagesim-bench-startup]
    python benches/bench_startup.py --baseline-typer ''   # the baseline CLI with this environment's typer
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GOAL_S = 0.15
BASELINE_REV = "f28bb62bc0b055537751c756c1d6956be87694bd"  # the CLI before issue 20's start-up work
BASELINE_TYPER = "0.29.2"  # the typer it ran with
CATALOG_ID = "104001008A3C21F0"  # one COG of the small sample: 1,024 z17 chips

# Runs `imagesim` with the CLI package found in argv[1] (a folder holding an older python/imagesim/cli).
_LOADER = """
import importlib.util, sys
folder = sys.argv.pop(1)
spec = importlib.util.spec_from_file_location("imagesim.cli", folder + "/__init__.py", submodule_search_locations=[folder])
module = importlib.util.module_from_spec(spec)
sys.modules["imagesim.cli"] = module
spec.loader.exec_module(module)
sys.argv[0] = "imagesim"
sys.exit(module.main())
"""


# The same library call as a script of its own, no CLI: its overhead is the floor under any CLI's (the
# interpreter and the imports the work needs, e.g. polars), so `wall - library` is what the CLI adds.
_LIBRARY = {
    "chip": """
import sys
from imagesim.imagery.chip import ChipSettings, run_chip
ard, dest, catalog_id, proc = sys.argv[1:]
run_chip(ard, dest, ChipSettings(proc=int(proc)), catalog_ids=[catalog_id])
""",
    "nodata-index": """
import sys
from imagesim.imagery.nodata import NodataSettings, run_nodata_index
chips, proc = sys.argv[1:]
run_nodata_index(chips, NodataSettings(proc=int(proc)))
""",
}


def imagesim_exe() -> str:
    exe = Path(sys.executable).with_name("imagesim")
    return str(exe) if exe.is_file() else "imagesim"


def baseline_cli(rev: str, into: Path) -> Path:
    """python/imagesim/cli/ at ``rev``, written into ``into``."""
    names = subprocess.run(
        ["git", "-C", str(REPO), "ls-tree", "--name-only", f"{rev}:python/imagesim/cli"], capture_output=True, text=True, check=True
    ).stdout.split()
    into.mkdir(parents=True, exist_ok=True)
    for name in names:
        if name.endswith(".py"):
            text = subprocess.run(
                ["git", "-C", str(REPO), "show", f"{rev}:python/imagesim/cli/{name}"], capture_output=True, text=True, check=True
            ).stdout
            (into / name).write_text(text)
    return into


def typer_at(version: str, work: Path) -> Path | None:
    """A folder holding typer ``version`` alone (installed there once), to put first on PYTHONPATH; None
    (and why, on stderr) when pip cannot install it, e.g. offline."""
    folder = work / f"typer-{version}"
    if not (folder / "typer").is_dir():
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(folder), f"typer=={version}"]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            print(
                f"typer {version} not installed for the baseline ({res.stderr.strip()[-300:]}): it runs with this environment's",
                file=sys.stderr,
            )
            shutil.rmtree(folder, ignore_errors=True)
            return None
    return folder


def wall(cmd: list[str], env: dict[str, str] | None = None) -> float:
    """Seconds ``cmd`` takes, start to exit (its output discarded; shown if it fails)."""
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        sys.stderr.write(res.stdout[-2000:] + res.stderr[-4000:])
        raise SystemExit(f"failed ({res.returncode}): {' '.join(cmd)}")
    return seconds


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class Fresh:
    """Fresh output folders under ``root``: ``next()`` is a new, absent path; ``copy(src)`` a new copy of ``src``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.n = 0

    def next(self) -> Path:
        self.n += 1
        return self.root / f"run-{self.n:03d}"

    def copy(self, src: Path) -> Path:
        dest = self.next()
        shutil.copytree(src, dest)
        return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "imagesim-bench-startup")
    ap.add_argument("--repeat", type=int, default=7, help="runs of each command; medians are reported")
    ap.add_argument("--proc", type=int, default=2, help="--proc of both commands")
    ap.add_argument("--baseline-rev", default=BASELINE_REV, help="git revision of the CLI to compare with")
    ap.add_argument("--baseline-typer", default=BASELINE_TYPER, help="typer version the baseline runs with ('': this environment's)")
    ap.add_argument(
        "--no-compile",
        dest="compile",
        action="store_false",
        help="do not byte-compile imagesim (and the baseline CLI) first: measure whatever __pycache__ holds",
    )
    a = ap.parse_args()
    work = a.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    exe = imagesim_exe()

    sample = work / "sample"
    if not (sample / "ard").is_dir():
        print("writing the small sample delivery (once) ...", flush=True)
        subprocess.run([exe, "sample-data", str(sample), "--small", "--overwrite"], check=True, capture_output=True)
    ard = sample / "ard"
    runs = work / "runs"
    shutil.rmtree(runs, ignore_errors=True)
    fresh = Fresh(runs)
    old_cli = baseline_cli(a.baseline_rev, work / "baseline-cli" / a.baseline_rev)
    clis: dict[str, list[str]] = {"now": [exe], "baseline": [sys.executable, "-c", _LOADER, str(old_cli)]}
    envs: dict[str, dict[str, str] | None] = {"now": None, "baseline": None}
    if a.compile:
        # as a pip install leaves the package: its modules byte-compiled. An editable install writes its .pyc on
        # first import, unless PYTHONDONTWRITEBYTECODE is set; then every start compiles imagesim's source again
        # (~0.05 s here), which no installed package does.
        import compileall

        import imagesim

        for folder in (Path(imagesim.__file__).parent, old_cli):
            compileall.compile_dir(str(folder), quiet=1)
    old_typer = typer_at(a.baseline_typer, work) if a.baseline_typer else None
    if old_typer is not None:
        path = [str(old_typer), *filter(None, [os.environ.get("PYTHONPATH")])]
        envs["baseline"] = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}

    # Warm: every import done and the library's own lazy imports too (one untimed run of each).
    from imagesim.cli._common import progress_bar
    from imagesim.imagery.chip import ChipSettings, run_chip
    from imagesim.imagery.nodata import NodataSettings, run_nodata_index

    def chip_work(dest: Path) -> object:
        settings = ChipSettings(proc=a.proc)
        return run_chip(str(ard), str(dest), settings, catalog_ids=[CATALOG_ID], progress=progress_bar("chip"))

    def nodata_work(chips: Path) -> object:
        return run_nodata_index(str(chips), NodataSettings(proc=a.proc), progress=progress_bar("nodata"))

    chips = work / "chips"  # the chips every nodata-index run gets a fresh copy of
    shutil.rmtree(chips, ignore_errors=True)
    summary = chip_work(chips)
    assert getattr(summary, "written", 0) == 1024, summary
    nodata_work(fresh.copy(chips))

    def chip_args(dest: Path) -> list[str]:
        return ["--ard-path", str(ard), "--dest", str(dest), "--catalog-id", CATALOG_ID, "--proc", str(a.proc)]

    def nodata_args(copy: Path) -> list[str]:
        return ["--chips", str(copy), "--proc", str(a.proc)]

    times: dict[str, list[float]] = {}

    def add(key: str, seconds: float) -> None:
        times.setdefault(key, []).append(seconds)

    for _ in range(a.repeat):
        # interleaved: current, baseline, library script and in-process in turn, so that load on the machine hits each alike
        add("python -c pass", wall([sys.executable, "-c", "pass"]))
        for which, cli in clis.items():
            env = envs[which]
            add(f"{which} --help", wall([*cli, "--help"], env))
            add(f"{which} chip", wall([*cli, "chip", *chip_args(fresh.next())], env))
            add(f"{which} nodata-index", wall([*cli, "nodata-index", *nodata_args(fresh.copy(chips))], env))
        dest = fresh.next()
        add("library chip", wall([sys.executable, "-c", _LIBRARY["chip"], str(ard), str(dest), CATALOG_ID, str(a.proc)]))
        add("library nodata-index", wall([sys.executable, "-c", _LIBRARY["nodata-index"], str(fresh.copy(chips)), str(a.proc)]))
        add("work chip", timed(functools.partial(chip_work, fresh.next())))
        add("work nodata-index", timed(functools.partial(nodata_work, fresh.copy(chips))))
        shutil.rmtree(runs, ignore_errors=True)  # outside the timed runs

    med = {k: statistics.median(v) for k, v in times.items()}
    import typer

    base_typer = a.baseline_typer if old_typer is not None else typer.__version__
    print(
        f"\nmedians of {a.repeat} runs, seconds ({os.cpu_count()} cores; now: typer {typer.__version__}; "
        f"baseline: the CLI at {a.baseline_rev[:10]}, typer {base_typer}; "
        f"{'byte-compiled first' if a.compile else 'as __pycache__ was (--no-compile)'})"
    )
    print(f"  python -c pass     {med['python -c pass']:6.3f}")
    now, base = med["now --help"], med["baseline --help"]
    print(f"  imagesim --help    {now:6.3f}   baseline {base:6.3f}   {now / base:5.2f}x")
    print("\noverhead = wall - work (the same call timed in a warm process); library = that call as a script of its own, no CLI")
    head = f"{'command':14} {'work':>6} {'library':>8} {'wall':>6} {'overhead':>9} {'baseline wall':>14} {'baseline overhead':>18} {'ratio':>6}"
    print(f"{head}  goal: overhead ≤ {GOAL_S:.2f} s")
    result: dict[str, dict[str, float]] = {}
    for command in ("chip", "nodata-index"):
        work_s, library = med[f"work {command}"], med[f"library {command}"]
        now, base = med[f"now {command}"], med[f"baseline {command}"]
        over, base_over = now - work_s, base - work_s
        result[command] = {
            "work_s": work_s,
            "library_script_s": library,
            "wall_s": now,
            "overhead_s": over,
            "baseline_wall_s": base,
            "baseline_overhead_s": base_over,
        }
        print(
            f"{command:14} {work_s:6.3f} {library:8.3f} {now:6.3f} {over:9.3f} {base:14.3f} {base_over:18.3f} {over / base_over:5.2f}x  "
            f"{'met' if over <= GOAL_S else 'MISSED'} (the CLI adds {now - library:+.3f} s to the library script; baseline {base - library:+.3f} s)"
        )
    out = {
        "typer": typer.__version__,
        "baseline_typer": base_typer,
        "baseline_rev": a.baseline_rev,
        "repeat": a.repeat,
        "byte_compiled": a.compile,
        "medians_s": med,
        "commands": result,
    }
    (work / "bench_startup.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()

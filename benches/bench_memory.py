"""Peak memory of the stages against the number of chips (issue 22, "memory flat in the number of chips").

For each size N (``--cogs 10,100``) it builds a delivery of N hard-linked copies of one full-size sample COG
(with its masks and metadata) in one level-12 cell, each a distinct acquisition (date, catalog id), so the
imagery takes no disk; then runs each stage of ``STAGES`` as an ``imagesim`` subprocess and records its peak
RSS (``ru_maxrss`` of the child, from ``os.wait4``), its chips/s and, for stages marked ``rerun``, the time of
a second run that skips everything (per 100,000 chips). The goal: the largest delivery within +50 MB of the
smallest, per stage; re-runs ≤ 1 s per 100,000 chips.

    python benches/bench_memory.py --cogs 10,100
    python benches/bench_memory.py --cogs 10,100,300 --stages chip-passthrough,nodata-pixels --work /data/bench-mem

A stage is a :class:`Stage` entry: a name, a function building its command from the :class:`Ctx` of one
delivery, and the stages it needs run first; add an entry to ``STAGES`` to measure another one. WORK keeps the
sample delivery between runs; each size's delivery and outputs are removed after its stages ran (``--keep``
keeps them).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

GOAL_MB = 50.0
RERUN_GOAL_S = 1.0  # per 100,000 chips
CHIPS_PER_COG = 1024  # z17 chips of one level-12 cell
CELL = "120020223032"
BASE_DATE = "2023-06-14"
BASE_ID = "104001008A3C21F0"


@dataclass(frozen=True)
class Ctx:
    """One delivery of ``cogs`` acquisitions and where the stages write."""

    work: Path  # this size's folder
    ard: Path
    cogs: int

    @property
    def chips(self) -> int:
        return self.cogs * CHIPS_PER_COG

    def out(self, name: str) -> Path:
        return self.work / name


@dataclass(frozen=True)
class Stage:
    name: str
    command: Callable[[Ctx], list[str | Path]]
    needs: tuple[str, ...] = ()  # stages run (once) before this one
    rerun: bool = False  # run it a second time and report the re-run (everything skipped)


def imagesim(*args: str | Path) -> list[str | Path]:
    exe = Path(sys.executable).with_name("imagesim")
    return [exe if exe.is_file() else "imagesim", *args]


STAGES: list[Stage] = [
    Stage("chip", lambda c: imagesim("chip", "--ard-path", c.ard, "--dest", c.out("chips"))),
    Stage(
        "chip-passthrough",
        lambda c: imagesim("chip", "--ard-path", c.ard, "--dest", c.out("chips-pt"), "--passthrough", "--no-measure"),
        rerun=True,
    ),
    # the counts `imagesim chip` measured (chips.parquet): no decoding
    Stage("nodata-manifest", lambda c: imagesim("nodata-index", "--chips", c.out("chips")), needs=("chip",)),
    # chips chipped without measuring: every chip decoded
    Stage("nodata-pixels", lambda c: imagesim("nodata-index", "--chips", c.out("chips-pt")), needs=("chip-passthrough",)),
]


def run(args: list[str | Path]) -> tuple[float, float, float | None]:
    """Run a command; (its peak RSS in MB, wall seconds, the seconds the stage itself reports — its
    summary line's "in 1.2s", without the start-up — or None). Its output is shown only when it fails."""
    cmd = [str(a) for a in args]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    out = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)  # the child's own rusage: ru_maxrss is its peak RSS
    seconds = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code
    if code != 0:
        sys.stderr.write(out[-4000:])
        raise SystemExit(f"failed ({code}): {' '.join(cmd)}")
    own = re.findall(r"\bin ([0-9]+(?:\.[0-9]+)?)s\b", out)
    return usage.ru_maxrss / 1024.0, seconds, float(own[-1]) if own else None  # ru_maxrss: KiB on Linux


def prepare_sample(work: Path) -> Path:
    """The full-size sample delivery (made once)."""
    sample = work / "sample"
    if not (sample / "ard" / "10" / CELL / BASE_DATE / f"{BASE_ID}-visual.tif").is_file():
        run(imagesim("sample-data", sample, "--overwrite"))
    return sample


def make_delivery(sample: Path, root: Path, n: int) -> None:
    """``n`` acquisitions of one cell, every file a hard link of the sample's BASE_ID acquisition."""
    src = sample / "ard" / "10" / CELL / BASE_DATE
    cell = root / "10" / CELL
    cell.mkdir(parents=True, exist_ok=True)
    start = dt.date.fromisoformat(BASE_DATE)
    for i in range(n):
        folder = cell / (start + dt.timedelta(days=i)).isoformat()
        folder.mkdir()
        catalog_id = f"10400100{i:08X}"
        for f in src.iterdir():
            os.link(f, folder / f.name.replace(BASE_ID, catalog_id))


def ordered(names: list[str]) -> list[Stage]:
    """The stages asked for, each after the stages it needs (those run too, unreported)."""
    by_name = {s.name: s for s in STAGES}
    out: list[Stage] = []

    def add(name: str) -> None:
        stage = by_name[name]
        for need in stage.needs:
            add(need)
        if stage not in out:
            out.append(stage)

    for name in names:
        add(name)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/imagesim-bench-memory"))
    ap.add_argument("--cogs", default="10,100", help="COGs per delivery, comma-separated (1,024 z17 chips each)")
    ap.add_argument("--stages", default=",".join(s.name for s in STAGES), help=f"comma-separated, of: {', '.join(s.name for s in STAGES)}")
    ap.add_argument("--keep", action="store_true", help="keep each size's delivery and outputs")
    a = ap.parse_args()
    sizes = sorted({int(n) for n in a.cogs.split(",") if n.strip()})
    asked = [s.strip() for s in a.stages.split(",") if s.strip()]
    unknown = [s for s in asked if s not in {st.name for st in STAGES}]
    if unknown or not sizes:
        ap.error(f"unknown stage(s) {unknown}" if unknown else "no size in --cogs")
    work = a.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    sample = prepare_sample(work)
    peaks: dict[str, dict[int, float]] = {}
    reruns: dict[str, dict[int, float]] = {}
    print(f"{'COGs':>5} {'chips':>8}  {'stage':<22} {'peak RSS':>11} {'wall s':>7} {'own s':>7} {'chips/s':>8}", flush=True)
    for n in sizes:
        ctx = Ctx(work=work / f"n{n}", ard=work / f"n{n}" / "ard", cogs=n)
        shutil.rmtree(ctx.work, ignore_errors=True)
        make_delivery(sample, ctx.ard, n)
        for stage in ordered(asked):
            runs = [stage.name] + ([f"{stage.name} (re-run)"] if stage.rerun else [])
            for name in runs:
                rss, wall, own = run(stage.command(ctx))
                peaks.setdefault(name, {})[n] = rss
                # the stage's own seconds (printed to 0.1 s: 0.0 means under 0.05 s), else the wall time
                secs = max(own, 0.05) if own is not None else wall
                if name.endswith("(re-run)"):
                    reruns.setdefault(stage.name, {})[n] = secs
                    rate = f"{secs * 100_000 / ctx.chips:6.2f} s/100k"
                else:
                    rate = f"{ctx.chips / secs:8.0f}" if secs > 0 else ""
                print(
                    f"{n:>5} {ctx.chips:>8}  {name:<22} {rss:8.1f} MB {wall:7.1f} {own if own is not None else float('nan'):7.2f} {rate}",
                    flush=True,
                )
        if not a.keep:
            shutil.rmtree(ctx.work, ignore_errors=True)
    lo, hi = sizes[0], sizes[-1]
    if lo == hi:
        return
    print(f"\npeak RSS, MB ({lo} → {hi} COGs; goal: within +{GOAL_MB:.0f} MB)")
    for name, by_n in peaks.items():
        if lo in by_n and hi in by_n:
            diff = by_n[hi] - by_n[lo]
            print(f"  {name:<22} {by_n[lo]:8.1f} → {by_n[hi]:8.1f}  {diff:+8.1f}  {'ok' if diff <= GOAL_MB else 'OVER'}")
    print(f"\nre-run (everything skipped), the stage's own seconds per 100,000 chips (goal ≤ {RERUN_GOAL_S:g} s)")
    for name, by_n in reruns.items():
        if lo in by_n and hi in by_n:
            per = by_n[hi] * 100_000 / (hi * CHIPS_PER_COG)
            print(
                f"  {name:<22} {by_n[hi]:.2f} s for {hi * CHIPS_PER_COG:,} chips = {per:.2f} s/100k  {'ok' if per <= RERUN_GOAL_S else 'OVER'}"
            )


if __name__ == "__main__":
    main()

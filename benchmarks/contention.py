"""Step time of a short toolqa run, quiet and beside one CPU-bound competitor; the goal is a ratio <= 2.5x.

    python benchmarks/contention.py [--steps 12] [--heldout 16] [--repeats 1] [--json out.json]
                                    [--env KEY=VALUE ...] [--in-process] [--override key=value ...]

Each run is ``python -m reopold_agents.run env=toolqa trainer.total_steps=12 trainer.heldout_tasks=16
trainer.eval_teacher=false`` (the issue's command; its output under a temporary folder), started in a
fresh interpreter so the thread policy acts as it does from the CLI (``reopold_agents/threads.py``:
the OpenMP wait policy must be set before torch loads). The contended run shares the machine with one
single-threaded busy loop (``python -c "while True: pass"``) that this script starts just before the run
and kills after it. The step time is ``perf/step_time_s`` of ``metrics.jsonl`` (rollout, teacher, update,
weight sync), its median over steps 2..N (step 1 warms up). With ``--repeats R`` the quiet and contended
runs alternate R times and the medians over repeats are compared. The last line prints the ratio.

``--env`` sets variables for the runs (e.g. ``OMP_WAIT_POLICY=ACTIVE`` to see the old spinning);
``--in-process`` calls ``reopold_agents.run.train`` here instead (no interpreter start-up; the tests).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

GOAL = 2.5
BASE = ["env=toolqa", "trainer.eval_teacher=false"]


@dataclass
class RunTimes:
    """One run's step times (steps 2..N) and their median."""

    condition: str  # quiet | contended
    step_times: list[float]
    wall_s: float
    load_before: float  # 1-minute load average when the run started

    @property
    def median(self) -> float:
        return statistics.median(self.step_times)


@dataclass
class Report:
    runs: list[RunTimes] = field(default_factory=list)

    def medians(self, condition: str) -> list[float]:
        return [r.median for r in self.runs if r.condition == condition]

    @property
    def quiet(self) -> float:
        return statistics.median(self.medians("quiet"))

    @property
    def contended(self) -> float:
        return statistics.median(self.medians("contended"))

    @property
    def ratio(self) -> float:
        return self.contended / self.quiet


def step_times(metrics_file: Path) -> list[float]:
    """``perf/step_time_s`` of steps 2..N of a run's ``metrics.jsonl`` (the last record of each step)."""
    by_step: dict[int, float] = {}
    for line in metrics_file.read_text().splitlines():
        record = json.loads(line)
        if "perf/step_time_s" in record and int(record["step"]) >= 2:
            by_step[int(record["step"])] = float(record["perf/step_time_s"])
    if not by_step:
        raise SystemExit(f"{metrics_file}: no perf/step_time_s for steps >= 2 (run at least 2 steps)")
    return [by_step[s] for s in sorted(by_step)]


class Competitor:
    """A single-threaded busy loop in its own process, for the duration of a ``with`` block."""

    def __enter__(self) -> "Competitor":
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.2)  # let it get scheduled
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.kill()
        self.proc.wait()


def _run(overrides: list[str], out: Path, env: dict[str, str], in_process: bool) -> None:
    args = [*BASE, *overrides, f"trainer.output_dir={out}"]
    if in_process:
        from reopold_agents.config.schema import compose
        from reopold_agents.run import train

        train(compose(args), progress=False)
        return
    cmd = [sys.executable, "-m", "reopold_agents.run", *args, f"hydra.run.dir={out / 'hydra'}"]
    proc = subprocess.run(cmd, env={**os.environ, **env}, cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the run failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def measure(condition: str, overrides: list[str], root: Path, env: dict[str, str], in_process: bool) -> RunTimes:
    out = root / f"{condition}-{len(list(root.iterdir()))}"
    load = os.getloadavg()[0]
    start = time.perf_counter()
    if condition == "contended":
        with Competitor():
            _run(overrides, out, env, in_process)
    else:
        _run(overrides, out, env, in_process)
    times = RunTimes(condition, step_times(out / "metrics.jsonl"), time.perf_counter() - start, load)
    print(f"{condition:9s} median step {times.median:.3f}s over steps 2..{len(times.step_times) + 1} "
          f"(run {times.wall_s:.0f}s, load {load:.2f} at start)", flush=True)
    return times


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--heldout", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--env", nargs="*", default=[], metavar="KEY=VALUE", help="environment of the runs")
    ap.add_argument("--in-process", action="store_true", help="call run.train here (no interpreter start-up)")
    ap.add_argument("--json", default=None, help="write every run's step times here")
    ap.add_argument("--override", nargs="*", default=[], help="more run config overrides")
    args = ap.parse_args(argv)
    if args.steps < 2 or args.repeats < 1:
        ap.error("--steps must be >= 2 (step 1 is not timed) and --repeats >= 1")
    if any("=" not in kv for kv in args.env):
        ap.error("--env takes KEY=VALUE")
    return args


def main(argv: list[str] | None = None) -> float:
    args = parse_args(argv)
    env = dict(kv.split("=", 1) for kv in args.env)
    overrides = [f"trainer.total_steps={args.steps}", f"trainer.heldout_tasks={args.heldout}", *args.override]
    report = Report()
    with tempfile.TemporaryDirectory(prefix="contention-") as tmp:
        for _ in range(args.repeats):
            for condition in ("quiet", "contended"):
                report.runs.append(measure(condition, overrides, Path(tmp), env, args.in_process))
    if args.json:
        runs = [{**asdict(r), "median": r.median} for r in report.runs]
        waits = {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ}
        # the runs' OpenMP waiting: what this environment and --env set (unset: the package's defaults)
        Path(args.json).write_text(json.dumps({"args": vars(args), "openmp_env": {**waits, **env}, "runs": runs,
                                               "quiet": report.quiet, "contended": report.contended,
                                               "ratio": report.ratio}, indent=1))
    verdict = "met" if report.ratio <= GOAL else "MISSED"
    print(f"median step time (steps 2..{args.steps}, {args.repeats} repeat{'s' if args.repeats > 1 else ''}): "
          f"quiet {report.quiet:.3f}s, beside one busy process {report.contended:.3f}s: "
          f"ratio {report.ratio:.2f}x (goal <= {GOAL}x: {verdict})")
    return report.ratio


if __name__ == "__main__":
    main()

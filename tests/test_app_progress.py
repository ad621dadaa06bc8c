"""Applications report every phase with a count, end finished on every rank, and ``hpcai run`` prints their
progress: a line per phase change and a few during a long phase, with elapsed time and time left."""
import io
import json

from hpcai import cli
from hpcai.apps import climate_sr, make_config
from hpcai.apps.progress import Progress, duration
from mpijob import mpirun

CLIMATE = {"nlon": 32, "nlat": 16, "days": 1.0, "ratio": 10.0, "iters_per_output": 1, "final_epochs": 30,
           "channels": 2}

# every rank of a coupled run: the phases it went through (name, total, the most done) and its last snapshot
COUPLED = """
import json, sys
from hpcai.apps import climate_sr, make_config
from hpcai.apps.progress import Progress
from hpcai.parallel import world
from hpcai.workflow import run_workflow
snaps = []
control, _ = climate_sr.workflow(make_config("climate_sr", json.loads(sys.argv[1])), world().size, verbose=0)
run_workflow(control, world(), 0, Progress([snaps.append], every=0))  # every snapshot, none thinned out
phases = {}
for s in snaps:
    total, done = phases.get(s["phase"], (0, 0))
    phases[s["phase"]] = (max(total, s["total"]), max(done, s["done"]))
with open(f"{sys.argv[2]}/rank{world().rank}.json", "w") as f:  # a file each: ranks' stdout lines may mix
    json.dump({"rank": world().rank, "phases": phases, "last": {k: snaps[-1][k] for k in
               ("phase", "finished", "message", "overall")}}, f)
"""


def phases_of(snaps):
    seen = []
    for s in snaps:
        if not seen or seen[-1][0] != s["phase"]:
            seen.append([s["phase"], s["total"], s["done"]])
        seen[-1][2] = max(seen[-1][2], s["done"])
    return seen


def test_climate_in_one_process_counts_every_phase_and_ends_finished():
    snaps = []
    climate_sr.run(make_config("climate_sr", CLIMATE), verbose=0, progress=Progress([snaps.append], every=0))
    seen = phases_of(snaps)
    names = [p[0] for p in seen]
    assert names == ["simulation + in situ training", "simulation of the other flow",
                                                     "final training", "evaluation"]
    simulation, final = seen[names.index("simulation + in situ training")], seen[names.index("final training")]
    assert simulation[1] == 9 and simulation[2] == 9  # 1 day every 3 h: 9 output steps, all counted
    assert final[1] > 0 and final[2] == final[1]
    assert snaps[-1]["finished"] and "held-out L2 error" in snaps[-1]["message"]
    assert snaps[-1]["overall"] == 1.0
    overall = [s["overall"] for s in snaps]
    assert overall == sorted(overall), "one bar across the phases never goes back"


def test_coupled_climate_ranks_count_the_in_situ_phase_and_none_is_left_waiting(tmp_path):
    script = tmp_path / "coupled.py"
    script.write_text(COUPLED)
    code, out, err, _ = mpirun(3, [script, json.dumps(CLIMATE), tmp_path], timeout=240)
    assert code == 0, err[-3000:]
    ranks = {r["rank"]: r for r in (json.loads(path.read_text()) for path in tmp_path.glob("rank*.json"))}
    assert sorted(ranks) == [0, 1, 2], out
    for rank, report in ranks.items():
        last = report["last"]
        assert last["finished"] and last["overall"] == 1.0, (rank, last)
        assert "waiting" not in last["phase"] and "waiting" not in json.dumps(report["phases"]), (rank, report)
    producer, learners = ranks[0]["phases"], [ranks[1]["phases"], ranks[2]["phases"]]
    assert producer["simulation"] == [9, 9]
    total, done = producer["final training (learners)"]  # the learners' final training, relayed
    assert total > 0 and done == total
    assert "held-out L2 error" in ranks[0]["last"]["message"]
    for phases in learners:
        assert phases["in situ training"] == [7, 7]  # 7 training pairs of 9 steps (the later 1/4 held out)
        assert phases["final training"][0] == total and phases["final training"][1] == total


def test_cli_prints_progress_of_the_coupled_run_under_mpiexec(tmp_path):
    args = [f"--{k.replace('_', '-')}={v}" for k, v in CLIMATE.items()] + [f"--output-dir={tmp_path}"]
    code, out, err, _ = mpirun(2, ["-m", "hpcai", "run", "climate_sr", *args], timeout=240)
    assert code == 0, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("[progress]")]
    text = "\n".join(lines)
    for phase in ("simulation 0/9", "final training (learners)", "evaluation", "finished: held-out L2 error"):
        assert phase in text, text
    assert "rank 1" not in text  # rank 0 speaks for the job


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def snap(phase, done, total, **extra):
    return {"phase": phase, "done": done, "total": total, "elapsed": extra.pop("elapsed", 1.0), "message": "",
            "finished": False, "losses": [], **extra}


def test_progress_printer_prints_phase_changes_and_a_modest_rate_with_time_left():
    out, clock = io.StringIO(), Clock()
    printer = cli.ProgressPrinter(out, every=10, clock=clock)
    printer([snap("simulation", 0, 9)])
    for k in range(1, 10):  # 9 reports within 4.5 s: no line until the phase changes
        clock.now += 0.5
        printer([snap("simulation", k, 9)])
    printer([snap("final training", 0, 600, eta=None, rate=None)])
    for k in range(1, 61):  # 60 reports over 30 s: a line every 10 s, with the loss and the time left
        clock.now += 0.5
        printer([snap("final training", 10 * k, 600, elapsed=5.0 + 0.5 * k, rate=20.0, eta=(600 - 10 * k) / 20,
                      losses=[1.0 / k] * k)])
    printer([{**snap("final training", 600, 600, elapsed=40.0, eta=0.0), "finished": True, "message": "done"}])
    lines = out.getvalue().splitlines()
    assert lines[0] == "[progress] simulation 0/9 (0%) -- 1s elapsed"
    assert lines[1] == "[progress] final training 0/600 (0%) -- 1s elapsed"
    periodic = lines[2:-1]
    assert len(periodic) == 3, lines
    assert periodic[0].startswith("[progress] final training 200/600 (33%), loss 0.05 -- 15s elapsed, 20 steps/s, "
                                  "about 20s left")
    assert lines[-1] == "[progress] finished: done -- 40s elapsed"


def test_progress_printer_names_ranks_and_skips_those_not_reporting():
    out = io.StringIO()
    printer = cli.ProgressPrinter(out, every=0)
    printer([snap("simulation", 1, 9), {}])
    printer([snap("simulation", 1, 9), snap("in situ training", 2, 7, message="training pairs received")])
    assert out.getvalue().splitlines() == [
        "[progress] rank 0: simulation 1/9 (11%) -- 1s elapsed",
        "[progress] rank 1: in situ training 2/7 (28%): training pairs received -- 1s elapsed"]
    assert duration(3725, compact=True) == "1h02m" and duration(125, compact=True) == "2m05s"
    assert duration(0.4, compact=True) == "0s" and duration(125) == "2 min 05 s" and duration(3725) == "1 h 02 min"

"""The straggler study: its statistics are taken over the seeds, its conclusion claims only what the spread
supports, and its simulated time is deterministic, with sync waiting for the slowest worker."""
import math

import numpy as np
import pytest

from hpcai.parallel import straggler
from hpcai.parallel.straggler import Trial, simulate, study

TIMES = {  # (strategy, k) -> time to target per seed 0..4
    ("sync", 1): [10, 11, 12, 13, 14], ("hogwild", 1): [9, 12, 13, 10, 16],
    ("sync", 4): [40, 44, 48, 52, 56], ("hogwild", 4): [12, 14, 13, 11, 15],
}


def fake(strategy, k, seed):
    return Trial(strategy, k, seed, TIMES[strategy, k][seed], accuracy=0.9 + 0.01 * seed, final_loss=0.1)


def test_statistics_are_taken_over_the_seeds():
    calls = []
    result = study("simulated", strategies=("sync", "hogwild"), slowdowns=(1, 4), seeds=5,
                   trial=lambda s, k, seed: calls.append((s, k, seed)) or fake(s, k, seed))
    assert sorted(calls) == sorted((s, k, seed) for s, k in TIMES for seed in range(5))
    for (s, k), times in TIMES.items():
        row = result.row(s, k)
        assert row["seeds"] == [0, 1, 2, 3, 4]
        assert row["time_mean"] == pytest.approx(np.mean(times))
        assert row["time_std"] == pytest.approx(np.std(times, ddof=1))
        assert (row["time_min"], row["time_max"]) == (min(times), max(times))
        assert row["accuracy_mean"] == pytest.approx(0.92) and row["accuracy_max"] == pytest.approx(0.94)
    assert len(result.rows) == 4 and "+-" in result.table()


def test_conclusion_claims_a_difference_only_where_the_spreads_do_not_overlap():
    result = study("simulated", strategies=("sync", "hogwild"), slowdowns=(1, 4), seeds=5, trial=fake)
    text = result.conclusion()
    assert "k=1: no difference beyond the seeds' spread" in text
    assert f"k=4: hogwild reaches the target {48 / 13:.2f}x sooner than sync" in text
    assert "sync x4.00" in text  # 48 / 12
    assert "final accuracy: no difference beyond the seeds' spread" in text


def test_one_seed_claims_no_difference():
    result = study("simulated", strategies=("sync", "hogwild"), slowdowns=(1, 4), seeds=[0], trial=fake)
    text = result.conclusion()
    assert "sooner" not in text and "differs" not in text and "one seed, no spread" in text, text


def test_a_seed_that_never_reaches_the_target_is_not_averaged():
    def never(s, k, seed):
        t = fake(s, k, seed)
        return Trial(s, k, seed, math.inf if (s, seed) == ("hogwild", 3) else t.time_to_target, t.accuracy)
    result = study("simulated", strategies=("sync", "hogwild"), slowdowns=(4,), seeds=5, trial=never)
    assert result.row("hogwild", 4)["reached"] == 4 and result.row("hogwild", 4)["time_mean"] == math.inf
    assert "reached in 4/5 seeds" in result.table() and "no time comparison" in result.conclusion()


def test_simulated_time_is_deterministic_and_sync_waits_for_the_slowest():
    kw = dict(workers=4, gradients=480, target=0.3)
    runs = {(s, k): simulate(s, k, seed=1, **kw) for s in ("sync", "hogwild") for k in (1, 4)}
    assert simulate("hogwild", 4, seed=1, **kw) == runs["hogwild", 4]  # the same run, to the last bit
    assert all(math.isfinite(r.time_to_target) for r in runs.values())
    sync1, sync4 = runs["sync", 1].time_to_target, runs["sync", 4].time_to_target
    assert sync4 == 4 * sync1  # every step waits for the slowed worker
    assert runs["sync", 4].final_loss == runs["sync", 1].final_loss  # the same steps, only slower
    async1, async4 = runs["hogwild", 1].time_to_target, runs["hogwild", 4].time_to_target
    assert async4 < 2 * async1 and async4 < sync4 / 2  # the three fast workers carry on
    assert runs["hogwild", 4].updates == runs["sync", 4].updates * 4  # the same number of gradients


def test_parameter_server_simulation_has_one_worker_fewer_and_rejects_bad_input():
    ps = simulate("ps", 1, seed=0, workers=2, gradients=64, target=0.01)
    assert ps.updates == 64 and math.isinf(ps.time_to_target)
    with pytest.raises(ValueError, match="workers"):
        simulate("ps", 1, workers=1)
    with pytest.raises(ValueError, match="mode"):
        study("guessed")
    with pytest.raises(ValueError, match="strategies"):
        study(strategies=("sync", "elastic"))


def test_simulated_study_runs_end_to_end_and_plots():
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    result = study(strategies=("sync", "rma"), slowdowns=(1, 2), seeds=2, workers=2, gradients=96, target=1.0)
    assert {r["strategy"] for r in result.rows} == {"sync", "rma"} and result.unit == "gradient times"
    assert result.plot() is not None
    assert straggler.STRATEGIES == ("sync", "hogwild", "ps", "rma")

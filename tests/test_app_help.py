"""Every application documents itself: each Config field has help text (and the CLI's --help shows it with
its unit), and each metric a run returns is described by the application's ``metric_info`` (group, unit)."""
import dataclasses
import math

import pytest

from hpcai import cli
from hpcai.apps import APPS
from hpcai.runner import run_app

# the fastest runs of each application (seconds each on 2 cores)
TINY = {
    "digits": [{"epochs": 1}, {"epochs": 1, "strategy": "hogwild", "optimizer": "sgd"}],
    "climate_sr": [{"nlon": 32, "nlat": 16, "days": 1.0, "ratio": 10.0, "iters_per_output": 1, "final_epochs": 2,
                    "channels": 2}],
    "alloy_surrogate": [{"rounds": 2, "initial": 16, "per_round": 10, "epochs": 20, "explore_sweeps": 4,
                         "scan_sweeps": 16, "temperatures": 4, "tc_sizes": "2,3", "ensemble": 2, "hidden": 4,
                         "size": 3}],
    "cbed": [{"materials_per_group": 1, "pixels": 32, "input_size": 16, "epochs": 1, "width": 2, "batch_size": 16}],
}


@pytest.mark.parametrize("name", sorted(APPS))
def test_every_config_field_has_help_and_a_unit_that_is_text(name):
    for field in dataclasses.fields(APPS[name].config):
        text = field.metadata.get("help")
        assert isinstance(text, str) and len(text.split()) >= 3, f"{name}.{field.name}: no help text in its metadata"
        unit = field.metadata.get("unit", "")
        assert isinstance(unit, str) and unit == unit.strip(), f"{name}.{field.name}: unit {unit!r}"


@pytest.mark.parametrize("name", sorted(APPS))
def test_run_help_shows_each_fields_help_and_unit(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", name, "--help"])
    assert exit_info.value.code == 0
    out = "".join(capsys.readouterr().out.split())  # argparse wraps lines, at spaces and hyphens
    for field in dataclasses.fields(APPS[name].config):
        option = "--" + field.name.replace("_", "-")
        assert option in out
        unit = f"[{field.metadata['unit']}]" if field.metadata.get("unit") else ""
        assert "".join((unit + field.metadata["help"]).split()) in out, f"{option}: its help or unit is not shown"


def test_metric_info_entries_are_group_and_unit():
    for name, app in APPS.items():
        assert app.metric_info, f"{name}: no metric_info"
        for metric, info in app.metric_info.items():
            assert isinstance(info, tuple) and len(info) == 2 and all(isinstance(s, str) for s in info), (name, metric)
            assert info[0], f"{name}.{metric}: empty group"


@pytest.mark.parametrize("name,overrides", [(n, o) for n in sorted(TINY) for o in TINY[n]])
def test_every_metric_a_run_returns_is_described(name, overrides):
    assert set(TINY) == set(APPS), "a new application needs a tiny run here"
    result = run_app(name, overrides, verbose=0)
    missing = sorted(set(result.metrics) - set(APPS[name].metric_info))
    assert not missing, f"{name}: metrics without (group, unit) in metric_info: {missing}"
    absent = sorted(set(APPS[name].key_metrics) - set(result.metrics))  # the run history's first columns
    assert APPS[name].key_metrics and not absent, f"{name}: key_metrics the run does not return: {absent}"
    numbers = [v for v in result.metrics.values() if isinstance(v, float)]
    assert numbers and any(math.isfinite(v) for v in numbers)


def test_what_the_seed_help_says_one_blas_thread_repeats_a_run_in_the_main_thread_and_in_a_background_one():
    """The panel trains in a background thread, the CLI in the main one: with one BLAS thread both give the
    same errors (with several, BLAS may split the float32 products differently; see the seed's help)."""
    import threading

    from threadpoolctl import threadpool_limits
    config = {**TINY["climate_sr"][0], "final_epochs": 6}
    with threadpool_limits(limits=1, user_api="blas"):
        main = run_app("climate_sr", config, verbose=0).metrics
        box = {}
        worker = threading.Thread(target=lambda: box.setdefault("m", run_app("climate_sr", config, verbose=0).metrics))
        worker.start()
        worker.join()
    for name in ("l2_restored", "max_restored", "final_training_loss"):
        assert box["m"][name] == main[name], name
    assert "OMP_NUM_THREADS=1" in next(f for f in dataclasses.fields(APPS["climate_sr"].config)
                                       if f.name == "seed").metadata["help"]

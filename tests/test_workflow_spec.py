"""Workflow control files: parsing (TOML and dict alike), every refusal's message, plan(), ranks, round trip,
and random DAGs (hypothesis) whose plan must be a topological order and whose back edges must be refused."""
import copy
import json
import re
import sys
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpcai.apps import APPS
from hpcai.workflow import spec as wf
from hpcai.workflow.spec import (ChannelSpec, Loop, LoopSpec, ModuleSpec, SpecError, TupleSpaceSpec, WorkflowSpec,
                                 load, resolve_entry)

FULL_TOML = """\
[workflow]
name = "demo"

[tuple_space]
servers = 1
max_mb = 64

[modules.setup]
entry = "mypkg.prep:main"

[modules.sim]
app = "climate_sr"
ranks = 1
params = { days = 0.5, nlon = 64 }
after = ["setup"]

[modules.learner]
entry = "mypkg.learn:main"
ranks = 2
params = { lr = 1e-3, layers = [8, 8] }
after = ["setup"]

[modules.report]
entry = "mypkg.report:main"
after = ["learner"]

[[channels]]
from = "sim"
to = "learner"
name = "fields"

[[channels]]
from = "learner"
to = "sim"

[loop]
modules = ["sim", "learner"]
until = "learner"
max_iterations = 10
"""

FULL_DICT = {
    "workflow": {"name": "demo"},
    "tuple_space": {"servers": 1, "max_mb": 64},
    "modules": {
        "setup": {"entry": "mypkg.prep:main"},
        "sim": {"app": "climate_sr", "ranks": 1, "params": {"days": 0.5, "nlon": 64}, "after": ["setup"]},
        "learner": {"entry": "mypkg.learn:main", "ranks": 2, "params": {"lr": 1e-3, "layers": [8, 8]},
                    "after": ["setup"]},
        "report": {"entry": "mypkg.report:main", "after": ["learner"]},
    },
    "channels": [{"from": "sim", "to": "learner", "name": "fields"}, {"from": "learner", "to": "sim"}],
    "loop": {"modules": ["sim", "learner"], "until": "learner", "max_iterations": 10},
}


def write(tmp_path, text, name="control.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def chain(**after):
    """A workflow dict of entry modules, in keyword order, each with its ``after`` list (a space-split string)."""
    return {"modules": {m: {"entry": f"pkg.{m}:main", "after": deps.split()} for m, deps in after.items()}}


def fails(control, message, source=None):
    """Assert that loading ``control`` raises SpecError with exactly ``message``."""
    with pytest.raises(SpecError) as info:
        load(control, source=source)
    assert str(info.value) == message
    return info.value


# --- a valid workflow -------------------------------------------------------------------------------------

def test_full_file_and_dict_give_equal_specs(tmp_path):
    path = write(tmp_path, FULL_TOML)
    from_file, from_dict = load(path), load(FULL_DICT)
    assert from_file == from_dict
    assert (from_file.source, from_dict.source) == (str(path), "<dict>")
    assert load(str(path)) == from_file  # str or Path
    assert isinstance(from_file, WorkflowSpec) and load(from_file) is from_file  # a spec is returned as is
    assert list(from_file.modules) == ["setup", "sim", "learner", "report"]  # file order
    assert from_file.modules["sim"] == ModuleSpec("sim", None, "climate_sr", 1, {"days": 0.5, "nlon": 64},
                                                  ("setup",))
    assert from_file.modules["setup"] == ModuleSpec("setup", "mypkg.prep:main", None, 1, {}, ())
    assert from_file.channels == (ChannelSpec("fields", "sim", "learner"),
                                  ChannelSpec("learner->sim", "learner", "sim"))
    assert from_file.loop == LoopSpec(("sim", "learner"), "learner", 10)
    assert from_file.tuple_space == TupleSpaceSpec(1, 64 * 2 ** 20)
    assert from_file.plan() == [("setup",), Loop((("sim", "learner"),), "learner", 10), ("report",)]


def test_defaults(tmp_path):
    path = write(tmp_path, """\
        [modules.only]
        entry = "pkg.mod:main"
        """, name="my_flow.toml")
    spec = load(path)
    assert spec.name == "my_flow"  # the file's stem
    assert load(chain(only="")).name == "workflow"
    assert spec.modules["only"] == ModuleSpec("only", "pkg.mod:main", None, 1, {}, ())
    assert spec.channels == () and spec.loop is None
    assert spec.tuple_space == TupleSpaceSpec(servers=0, max_bytes=256 * 2 ** 20)  # no [tuple_space]: none
    assert load({**chain(only=""), "tuple_space": {}}).tuple_space == TupleSpaceSpec(1, 256 * 2 ** 20)


def test_docstring_example_is_valid():
    block = wf.__doc__.split("The format, as TOML")[1].split("::\n", 1)[1].split("\nIts :meth:")[0]
    spec = load(pytest.importorskip("tomllib").loads(textwrap.dedent(block)))
    assert spec.plan() == [("setup",), Loop((("sim", "learner"),), "learner", 10), ("report",)]
    assert spec.ranks_needed(8) == 4


def test_dict_is_not_aliased():
    doc = copy.deepcopy(FULL_DICT)
    spec = load(doc)
    doc["modules"]["learner"]["params"]["layers"].append(99)
    assert spec.modules["learner"].params["layers"] == [8, 8]


# --- plan ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("after, plan", [
    ({"a": "", "b": "a", "c": "b"}, [("a",), ("b",), ("c",)]),                              # chain
    ({"a": "", "b": "a", "c": "a", "d": "b c"}, [("a",), ("b", "c"), ("d",)]),              # diamond
    ({"x": "", "y": "", "z": ""}, [("x", "y", "z")]),                                       # all at once
    ({"a": "", "b": "", "c": "a", "d": "a b", "e": "c"}, [("a", "b"), ("c", "d"), ("e",)]),  # groups
    ({"late": "b", "a": "", "b": "a"}, [("a",), ("b",), ("late",)]),                        # not file order
    ({"a": "", "b": "a", "c": "a b"}, [("a",), ("b",), ("c",)]),                            # longest path
])
def test_plan_without_loop(after, plan):
    assert load(chain(**after)).plan() == plan


@pytest.mark.parametrize("after, loop, plan", [
    # a loop alone
    ({"sim": "", "learner": ""}, "sim learner", [Loop((("sim", "learner"),), "sim", 5)]),
    # stages inside the loop; a setup before it and a report after it
    ({"setup": "", "sim": "setup", "learn": "sim", "report": "learn"}, "sim learn",
     [("setup",), Loop((("sim",), ("learn",)), "sim", 5), ("report",)]),
    # a module unrelated to the loop runs before it; one waiting for the loop after the whole loop
    ({"free": "", "sim": "", "post": "sim", "post2": "post free"}, "sim",
     [("free",), Loop((("sim",),), "sim", 5), ("post",), ("post2",)]),
    # a loop module waiting for a module that itself comes late in the file
    ({"sim": "prep", "prep": ""}, "sim", [("prep",), Loop((("sim",),), "sim", 5)]),
])
def test_plan_with_loop(after, loop, plan):
    doc = {**chain(**after), "loop": {"modules": loop.split(), "until": loop.split()[0], "max_iterations": 5}}
    assert load(doc).plan() == plan


# --- ranks --------------------------------------------------------------------------------------------------

def test_ranks_needed_and_check(tmp_path):
    spec = load(write(tmp_path, FULL_TOML))
    assert spec.ranks_needed(1) == 3  # the loop's stage: sim 1 + learner 2; one rank holds the space itself
    assert spec.ranks_needed(4) == 4  # plus one tuple-space server
    spec.check_ranks(4)
    spec.check_ranks(16)
    for too_few in (1, 2, 3):
        with pytest.raises(SpecError) as info:
            spec.check_ranks(too_few)
        assert str(info.value) == (f"{spec.source}: needs 4 ranks (stage ['sim', 'learner'] uses 3, plus 1 "
                                   f"tuple-space server), but the job has {too_few}")


def test_ranks_without_tuple_space_and_serial():
    doc = chain(a="", b="", c="a")
    doc["modules"]["c"]["ranks"] = 5
    spec = load(doc)
    assert spec.ranks_needed(1) == spec.ranks_needed(8) == 5  # the largest stage is ('c',)
    with pytest.raises(SpecError, match=re.escape("<dict>: needs 5 ranks (stage ['c'] uses 5), but the job has 2")):
        spec.check_ranks(2)
    serial = load({**chain(a="", b="a"), "tuple_space": {"servers": 1}})
    serial.check_ranks(1)  # one module per stage runs on one rank; the space lives in the process
    assert serial.ranks_needed(3) == 2
    with pytest.raises(SpecError, match=re.escape("needs 3 ranks (stage ['a'] uses 2, plus 1 tuple-space server), "
                                                  "but the job has 2")):
        load({"modules": {"a": {"entry": "m:f", "ranks": 2}}, "tuple_space": {}}).check_ranks(2)
    with pytest.raises(SpecError, match=re.escape("tuple_space.servers: expected 0 or 1")):
        load({**chain(a=""), "tuple_space": {"servers": 2}})
    with pytest.raises(ValueError, match="world_size: expected an integer >= 1, got 0"):
        serial.ranks_needed(0)


# --- round trip ---------------------------------------------------------------------------------------------

def test_round_trip_through_json(tmp_path):
    spec = load(write(tmp_path, FULL_TOML))
    doc = json.loads(json.dumps(spec.to_dict()))
    again = load(doc, source=spec.source)
    assert again == spec and again.source == spec.source
    assert again.plan() == spec.plan() and again.to_dict() == spec.to_dict()
    small = load({**chain(a=""), "tuple_space": {"max_mb": 0.5}})
    assert load(small.to_dict()) == small and small.tuple_space.max_bytes == 2 ** 19


# --- refusals, each with its message ------------------------------------------------------------------------

def test_missing_file(tmp_path):
    fails(tmp_path / "nope.toml", f"{tmp_path / 'nope.toml'}: no such control file")


def test_toml_syntax_error_has_line_and_column(tmp_path):
    path = write(tmp_path, """\
        [modules.sim]
        entry = "pkg.mod:main"
        ranks 2
        """)
    with pytest.raises(SpecError, match=rf"^{re.escape(str(path))}: TOML syntax error: .*line 3, column 7"):
        load(path)


def test_messages_name_the_file(tmp_path):
    path = write(tmp_path, """\
        [modules.sim]
        entry = "pkg.mod:main"
        ranks = 0
        """)
    fails(path, f"{path}: modules.sim.ranks: expected a positive integer, got 0")
    fails(path, "control.toml: modules.sim.ranks: expected a positive integer, got 0", source="control.toml")


def modify(edit):
    doc = copy.deepcopy(FULL_DICT)
    edit(doc)
    return doc


def set_in(*keys_value):
    *keys, value = keys_value

    def edit(doc):
        node = doc
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return edit


def drop(*keys):
    def edit(doc):
        node = doc
        for k in keys[:-1]:
            node = node[k]
        del node[keys[-1]]
    return edit


ALLOWED_MODULE = "allowed: entry, app, ranks, params, after"
CASES = {
    # unknown keys, with the allowed ones and a guess
    "top-level typo": (set_in("modles", {}),
                       "unknown top-level key 'modles' (did you mean 'modules'?); "
                       "allowed: workflow, tuple_space, modules, channels, loop"),
    "module typo": (set_in("modules", "sim", "rank", 2),
                    f"modules.sim: unknown key 'rank' (did you mean 'ranks'?); {ALLOWED_MODULE}"),
    "workflow key": (set_in("workflow", "title", "x"), "workflow: unknown key 'title'; allowed: name"),
    "tuple-space key": (set_in("tuple_space", "max_gb", 1),
                        "tuple_space: unknown key 'max_gb' (did you mean 'max_mb'?); allowed: servers, max_mb"),
    "channel key": (set_in("channels", 0, "form", "sim"),
                    "channels[0]: unknown key 'form' (did you mean 'from'?); allowed: from, to, name"),
    "loop key": (set_in("loop", "until_done", "sim"),
                 "loop: unknown key 'until_done' (did you mean 'until'?); allowed: modules, until, max_iterations"),
    # wrong types and values
    "ranks zero": (set_in("modules", "learner", "ranks", 0),
                   "modules.learner.ranks: expected a positive integer, got 0"),
    "ranks text": (set_in("modules", "learner", "ranks", "2"),
                   "modules.learner.ranks: expected a positive integer, got '2'"),
    "ranks bool": (set_in("modules", "learner", "ranks", True),
                   "modules.learner.ranks: expected a positive integer, got True"),
    "ranks float": (set_in("modules", "learner", "ranks", 2.0),
                    "modules.learner.ranks: expected a positive integer, got 2.0"),
    "module not a table": (set_in("modules", "sim", "x"), "modules.sim: expected a table, got 'x'"),
    "params not a table": (set_in("modules", "learner", "params", [1]),
                           "modules.learner.params: expected a table, got an array [1]"),
    "after not a list": (set_in("modules", "sim", "after", "setup"),
                         "modules.sim.after: expected a list of module names, got 'setup'"),
    "after item": (set_in("modules", "sim", "after", [3]), "modules.sim.after[0]: expected a non-empty string, got 3"),
    "name empty": (set_in("workflow", "name", ""), "workflow.name: expected a non-empty string, got ''"),
    "module name": (set_in("modules", "my sim", {"entry": "a.b:c"}),
                    "modules: module name 'my sim': expected letters, digits, '_' or '-', starting with a letter "
                    "or '_'"),
    "no modules": (drop("modules"), "no [modules.<name>] table: a workflow needs at least one module"),
    "empty modules": (set_in("modules", {}), "modules: expected at least one module, got none"),
    "servers negative": (set_in("tuple_space", "servers", -1),
                         "tuple_space.servers: expected an integer >= 0, got -1"),
    "max_mb zero": (set_in("tuple_space", "max_mb", 0), "tuple_space.max_mb: expected a positive number (MiB), got 0"),
    "channels a table": (set_in("channels", {"from": "sim"}),
                         "channels: expected an array of tables ([[channels]]), got a table {'from': 'sim'}"),
    # entry / app
    "entry and app": (set_in("modules", "sim", "entry", "a.b:c"),
                      "modules.sim: expected exactly one of 'entry' (a function \"package.module:function\") or "
                      "'app' (an application of hpcai.apps.APPS), got both"),
    "neither": (drop("modules", "setup", "entry"),
                "modules.setup: expected exactly one of 'entry' (a function \"package.module:function\") or "
                "'app' (an application of hpcai.apps.APPS), got neither"),
    "entry form": (set_in("modules", "setup", "entry", "mypkg.prep.main"),
                   "modules.setup.entry: expected \"package.module:function\", got 'mypkg.prep.main'"),
    "entry no function": (set_in("modules", "setup", "entry", "mypkg.prep:"),
                          "modules.setup.entry: expected \"package.module:function\", got 'mypkg.prep:'"),
    "unknown app": (set_in("modules", "sim", "app", "climate"),
                    f"modules.sim.app: expected one of {', '.join(sorted(APPS))}, got 'climate'"),
    "app param": (set_in("modules", "sim", "params", {"dayz": 1.0}),
                  "modules.sim.params: unknown key 'dayz' for app 'climate_sr' (did you mean 'days'?); allowed: "),
    # references to nowhere
    "after nowhere": (set_in("modules", "sim", "after", ["setup", "stup"]),
                      "modules.sim.after[1]: no module named 'stup' (did you mean 'setup'?); "
                      "modules: setup, sim, learner, report"),
    "channel to nowhere": (set_in("channels", 0, "to", "viz"),
                           "channels[0].to: no module named 'viz'; modules: setup, sim, learner, report"),
    "channel from nowhere": (set_in("channels", 1, "from", "learnr"),
                             "channels[1].from: no module named 'learnr' (did you mean 'learner'?); "
                             "modules: setup, sim, learner, report"),
    "channel missing end": (drop("channels", 0, "to"), "channels[0]: missing key 'to' (a module name)"),
    "channel to itself": (set_in("channels", 0, "to", "sim"),
                          "channels[0]: 'from' and 'to' are both 'sim': a channel joins two modules"),
    "channel name twice": (set_in("channels", 1, "name", "fields"),
                           "channels[1].name: 'fields' is already the name of channels[0]"),
    "loop nowhere": (set_in("loop", "modules", ["sim", "learn"]),
                     "loop.modules[1]: no module named 'learn' (did you mean 'learner'?); "
                     "modules: setup, sim, learner, report"),
    # the loop
    "until outside": (set_in("loop", "until", "setup"),
                      "loop.until: expected one of the loop's modules (sim, learner), got 'setup'"),
    "until nowhere": (set_in("loop", "until", "x"),
                      "loop.until: no module named 'x'; modules: setup, sim, learner, report"),
    "max_iterations zero": (set_in("loop", "max_iterations", 0),
                            "loop.max_iterations: expected a positive integer, got 0"),
    "max_iterations missing": (drop("loop", "max_iterations"),
                               "loop: missing key 'max_iterations' (a positive integer bounding the repetitions)"),
    "loop empty": (set_in("loop", "modules", []),
                   "loop.modules: expected a non-empty list of module names, got an array []"),
    "loop twice": (set_in("loop", "modules", ["sim", "learner", "sim"]), "loop.modules[2]: 'sim' is listed twice"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_refusals(case):
    edit, message = CASES[case]
    with pytest.raises(SpecError) as info:
        load(modify(edit))
    if message.endswith("allowed: "):  # the app's field list is long and its own business
        assert str(info.value).startswith(f"<dict>: {message}")
    else:
        assert str(info.value) == f"<dict>: {message}"


@pytest.mark.parametrize("after, cycle", [
    ({"a": "a"}, "modules.a.after: the 'after' lists form a cycle: a -> a (each waits for the next)"),
    ({"a": "b", "b": "a"}, "modules.a.after: the 'after' lists form a cycle: a -> b -> a (each waits for the next)"),
    ({"x": "", "a": "c", "b": "a", "c": "b x"},
     "modules.a.after: the 'after' lists form a cycle: a -> c -> b -> a (each waits for the next)"),
    ({"ok": "", "p": "ok q", "q": "r", "r": "p"},   # the cycle is named from its first module in the file
     "modules.p.after: the 'after' lists form a cycle: p -> q -> r -> p (each waits for the next)"),
])
def test_cycle_is_named(after, cycle):
    fails(chain(**after), f"<dict>: {cycle}")


def test_channel_across_stages_suggests_tuple_space():
    doc = {**chain(sim="", post="sim"), "channels": [{"from": "sim", "to": "post"}]}
    fails(doc, "<dict>: channels[0]: 'sim' (stage ['sim']) and 'post' (stage ['post']) never run at the same time; "
               "a channel joins modules of one stage: pass data between stages through the tuple space ([tuple_space])")
    in_loop = {**chain(a="", b="a", c=""), "channels": [{"from": "a", "to": "b"}],
               "loop": {"modules": ["a", "b"], "until": "b", "max_iterations": 2}}
    fails(in_loop, "<dict>: channels[0]: 'a' (in the loop, stage ['a']) and 'b' (in the loop, stage ['b']) never run "
                   "at the same time; a channel joins modules of one stage: pass data between stages through the "
                   "tuple space ([tuple_space])")
    # the same two modules are fine in one stage, and so is a loop module with another of its stage
    load({**chain(a="", b=""), "channels": [{"from": "a", "to": "b"}]})
    outside = {**chain(a="", b=""), "channels": [{"from": "a", "to": "b"}],
               "loop": {"modules": ["a"], "until": "a", "max_iterations": 2}}
    with pytest.raises(SpecError, match=re.escape("'a' (in the loop, stage ['a']) and 'b' (stage ['b']) never")):
        load(outside)  # b does not wait for the loop, so it runs before it


def test_loop_must_be_contiguous():
    doc = {**chain(a="", b="a", c="b"), "loop": {"modules": ["a", "c"], "until": "c", "max_iterations": 3}}
    fails(doc, "<dict>: loop.modules: the loop must be a contiguous block of the plan, but 'b' (not in the loop) "
               "runs after 'a' and before 'c'; add 'b' to loop.modules or change the 'after' lists")


def test_wrong_control_type():
    with pytest.raises(TypeError, match="control: expected a path to a .toml file, a dict or a WorkflowSpec, got int"):
        load(3)


def test_load_does_not_import_entries():
    spec = load(chain(a=""))  # "pkg.a:main" exists nowhere here
    assert spec.modules["a"].entry == "pkg.a:main" and "pkg" not in sys.modules


# --- resolve_entry ------------------------------------------------------------------------------------------

def test_resolve_entry(tmp_path, monkeypatch):
    (tmp_path / "wf_entry_mod.py").write_text("VALUE = 3\n\ndef main(ctx):\n    return {'done': True}\n\n"
                                              "class Job:\n    @staticmethod\n    def run(ctx):\n        return 1\n")
    (tmp_path / "wf_entry_broken.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert resolve_entry("wf_entry_mod:main")(None) == {"done": True}
    assert resolve_entry("wf_entry_mod:Job.run")(None) == 1
    assert resolve_entry("os.path:join") is __import__("os").path.join
    with pytest.raises(SpecError, match=re.escape("entry 'nopkg_xyz.sim:main': cannot import module "
                                                  "'nopkg_xyz.sim': No module named 'nopkg_xyz'")):
        resolve_entry("nopkg_xyz.sim:main")
    with pytest.raises(SpecError, match=re.escape("entry 'wf_entry_mod:mian': 'wf_entry_mod' has no attribute "
                                                  "'mian'; did you mean 'main'?")):
        resolve_entry("wf_entry_mod:mian")
    with pytest.raises(SpecError, match=re.escape("entry 'wf_entry_mod:VALUE': expected a function, got int 3")):
        resolve_entry("wf_entry_mod:VALUE")
    with pytest.raises(SpecError, match=re.escape("entry 'wf_entry_broken:main': importing 'wf_entry_broken' "
                                                  "failed: RuntimeError: boom at import")) as info:
        resolve_entry("wf_entry_broken:main")
    assert isinstance(info.value.__cause__, RuntimeError)
    with pytest.raises(SpecError, match=re.escape("entry 'main': expected \"package.module:function\"")):
        resolve_entry("main")


# --- random DAGs ----------------------------------------------------------------------------------------------

@st.composite
def dags(draw):
    """(module names in file order, after lists): each module waits only for earlier ones."""
    n = draw(st.integers(1, 9))
    names = [f"m{i}" for i in range(n)]
    after = {names[i]: draw(st.lists(st.sampled_from(names[:i]), unique=True)) if i else [] for i in range(n)}
    perm = draw(st.permutations(names))  # the file order need not be topological
    return perm, {m: after[m] for m in perm}


def as_doc(after):
    return {"modules": {m: {"entry": f"pkg.{m}:main", "after": list(deps)} for m, deps in after.items()}}


def ancestors(after, m):
    found, todo = set(), list(after[m])
    while todo:
        d = todo.pop()
        if d not in found:
            found.add(d)
            todo.extend(after[d])
    return found


def flat_stages(plan):
    return [s for step in plan for s in (step.stages if isinstance(step, Loop) else (step,))]


def assert_topological(plan, after, order):
    stages = flat_stages(plan)
    position = {m: i for i, stage in enumerate(stages) for m in stage}
    assert sorted(m for stage in stages for m in stage) == sorted(after)  # each module exactly once
    for m, deps in after.items():
        assert all(position[d] < position[m] for d in deps), (m, deps, plan)
    for stage in stages:  # a stage keeps the file order
        assert list(stage) == sorted(stage, key=order.index)


@settings(max_examples=150, deadline=None)
@given(dags())
def test_random_dag_plan_is_topological(dag):
    order, after = dag
    plan = load(as_doc(after)).plan()
    assert all(isinstance(step, tuple) for step in plan)
    assert_topological(plan, after, order)
    # topological levels: a module with no dependency starts at once; every other right after its last one
    position = {m: i for i, stage in enumerate(plan) for m in stage}
    for m, deps in after.items():
        assert position[m] == (max(position[d] for d in deps) + 1 if deps else 0)


@settings(max_examples=150, deadline=None)
@given(dags(), st.data())
def test_random_back_edge_is_a_cycle(dag, data):
    order, after = dag
    m = data.draw(st.sampled_from(order))
    back = data.draw(st.sampled_from(sorted(ancestors(after, m) | {m})))  # m already waits for it (or is it)
    after = {k: list(v) for k, v in after.items()}
    after[back].append(m)
    with pytest.raises(SpecError) as info:
        load(as_doc(after))
    found = re.fullmatch(r"<dict>: modules\.(\S+)\.after: the 'after' lists form a cycle: (.*) \(each waits for "
                         r"the next\)", str(info.value))
    assert found, str(info.value)
    cycle = found.group(2).split(" -> ")
    assert cycle[0] == cycle[-1] == found.group(1) and len(set(cycle[:-1])) == len(cycle) - 1
    assert all(b in after[a] for a, b in zip(cycle, cycle[1:], strict=False))  # each really waits for the next


@settings(max_examples=150, deadline=None)
@given(dags(), st.data())
def test_random_loop_plan(dag, data):
    order, after = dag
    inside = data.draw(st.lists(st.sampled_from(order), min_size=1, unique=True))
    doc = {**as_doc(after), "loop": {"modules": inside, "until": inside[0], "max_iterations": 2}}
    between = {b for b in order if b not in inside
               and any(a in ancestors(after, b) for a in inside) and any(b in ancestors(after, c) for c in inside)}
    if between:
        with pytest.raises(SpecError, match="the loop must be a contiguous block of the plan"):
            load(doc)
        return
    plan = load(doc).plan()
    loops = [i for i, step in enumerate(plan) if isinstance(step, Loop)]
    assert len(loops) == 1
    assert sorted(m for s in plan[loops[0]].stages for m in s) == sorted(inside)  # loop modules only inside
    assert_topological(plan, after, order)
    for i, step in enumerate(plan):  # outside the loop: after it exactly those that wait for a loop module
        if not isinstance(step, Loop):
            for m in step:
                assert (i > loops[0]) == any(a in ancestors(after, m) for a in inside)

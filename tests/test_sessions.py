"""SessionMemory: what a reload gets back, and when it is forgotten."""

from __future__ import annotations

import numpy as np

from vessel_core.sessions import SessionMemory


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_session_gets_back_what_it_remembered():
    memory = SessionMemory()
    sid = memory.new_id()
    assert memory.known(sid) and memory.recall(sid) == {}
    cases = ["a", "b"]
    values = {"cases": cases, "dataset": "DRIVE"}
    memory.remember(sid, values)
    values["dataset"] = "changed after"  # the memory holds its own dict
    kept = memory.recall(sid)
    assert kept == {"cases": ["a", "b"], "dataset": "DRIVE"}
    assert kept["cases"] is cases  # kept by reference: no copy of the images
    kept["extra"] = 1  # a recall is a copy too
    # what the tab no longer holds (cases dropped) is no longer kept
    memory.remember(sid, {"dataset": "STARE"}, before=memory.recall(sid))
    assert memory.recall(sid) == {"dataset": "STARE"}


def test_two_tabs_on_one_session_each_keep_their_own_changes():
    memory = SessionMemory()
    sid = memory.new_id()
    images = [object()]  # not comparable as data: compared by identity
    memory.remember(sid, {"cases": images, "seed": 7, "image": "01", "pick": ["a"]})
    tab_a, tab_b = memory.recall(sid), memory.recall(sid)
    now_a = {**tab_a, "seed": 11}
    memory.remember(sid, now_a, before=tab_a)
    # tab B changes the image only; its seed (7) and equal copies are not news
    now_b = {**tab_b, "image": "02", "pick": ["a"], "cases": images}
    memory.remember(sid, now_b, before=tab_b)
    assert memory.recall(sid) == {
        "cases": images,
        "seed": 11,
        "image": "02",
        "pick": ["a"],
    }
    # the same setting changed in both: the later change wins
    memory.remember(sid, {**now_b, "seed": 3}, before=now_b)
    assert memory.recall(sid)["seed"] == 3
    # a new load (other objects) is a change; arrays that == cannot settle count
    # as changed, not as an error
    other = [np.zeros(3)]
    memory.remember(sid, {**now_a, "cases": other}, before=now_a)
    assert memory.recall(sid)["cases"] is other
    memory.remember(sid, {**now_a, "cases": [np.ones(3)]}, before={"cases": other})
    assert memory.recall(sid)["cases"][0].tolist() == [1.0, 1.0, 1.0]


def test_a_tab_takes_in_what_another_tab_changed_and_it_did_not():
    memory = SessionMemory()
    sid = memory.new_id()
    images = [object()]
    memory.remember(sid, {"cases": images, "seed": 7, "image": "01", "gone": 1})
    tab_a, tab_b = memory.recall(sid), memory.recall(sid)
    assert memory.news(sid, tab_b, tab_b) == ({}, set())  # nothing new yet

    # tab A loads new data, changes the image, adds a value and drops one
    other = [object()]
    now_a = {"cases": other, "seed": 7, "image": "02", "new": "x"}
    memory.remember(sid, now_a, before=tab_a)
    # tab B changed the image itself (and nothing else): its own choice stands
    mine_b = {**tab_b, "image": "03"}
    take, drop = memory.news(sid, mine_b, tab_b)
    assert take == {"cases": other, "new": "x"} and take["cases"] is other
    assert drop == {"gone"}
    # an unchanged equal copy in tab B is not a change of its own
    take, _ = memory.news(sid, {**tab_b, "seed": 7}, tab_b)
    assert "seed" not in take and take["image"] == "02"


def test_only_ids_it_gave_out_are_known():
    memory = SessionMemory()
    sid = memory.new_id()
    other = SessionMemory().new_id()
    for asked in (other, "0" * 32, sid.upper(), sid + "0", "", None, 7, ["x"]):
        assert not memory.known(asked), asked
    assert memory.recall(other) == {}


def test_sessions_are_forgotten_after_the_timeout_since_their_last_use():
    clock = Clock()
    memory = SessionMemory(timeout=100, clock=clock)
    old, busy = memory.new_id(), memory.new_id()
    memory.remember(old, {"cases": [1]})
    clock.now = 90
    memory.remember(busy, {"cases": [2]})
    clock.now = 150  # old: 150 s idle, busy: 60 s
    assert not memory.known(old) and memory.recall(old) == {}
    assert memory.known(busy) and memory.recall(busy) == {"cases": [2]}
    clock.now = 240  # the recall at 150 counted as use
    assert memory.known(busy)
    clock.now = 251
    assert len(memory) == 0

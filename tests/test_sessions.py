"""SessionMemory: what a reload gets back, and when it is forgotten."""

from __future__ import annotations

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
    # what the session no longer holds (cases dropped) is no longer kept
    memory.remember(sid, {"dataset": "STARE"})
    assert memory.recall(sid) == {"dataset": "STARE"}


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

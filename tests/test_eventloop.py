"""The converter's event loop: uvloop where installed (auto), asyncio's on request, and a config
that names uvloop without it installed fails before anything runs."""

import asyncio

import pytest
from pydantic import ValidationError

from pipeline import eventloop
from pipeline.config import ConvertConfig
from pipeline.finished import config_fingerprint

uvloop = pytest.importorskip("uvloop")


async def _loop_type():
    return type(asyncio.get_running_loop())


def test_auto_runs_on_uvloop_and_asyncio_on_request():
    assert eventloop.run(_loop_type(), "auto") is uvloop.Loop
    assert eventloop.run(_loop_type(), "uvloop") is uvloop.Loop
    assert not issubclass(eventloop.run(_loop_type(), "asyncio"), uvloop.Loop)


def test_auto_falls_back_to_asyncio_without_uvloop(monkeypatch):
    monkeypatch.setattr(eventloop, "uvloop_available", lambda: False)
    assert not issubclass(eventloop.run(_loop_type(), "auto"), uvloop.Loop)


def test_each_event_loop_fixture_gives_the_loop_it_names(each_event_loop):
    # The transport tests rely on this fixture to run on both loops.
    assert issubclass(asyncio.run(_loop_type()), uvloop.Loop) is (each_event_loop == "uvloop")


def test_naming_uvloop_without_it_installed_is_a_config_error(monkeypatch):
    monkeypatch.setattr(eventloop, "uvloop_available", lambda: False)
    with pytest.raises(ValidationError, match="uvloop is not installed"):
        ConvertConfig(event_loop="uvloop")
    assert ConvertConfig(event_loop="auto").event_loop == "auto"
    with pytest.raises(ValidationError):
        ConvertConfig(event_loop="trio")


def test_the_loop_does_not_change_what_a_finished_run_is():
    # Same outputs either way: re-running a finished run on the other loop sends nothing.
    a = ConvertConfig(event_loop="asyncio").model_dump(mode="json")
    b = ConvertConfig(event_loop="auto").model_dump(mode="json")
    assert config_fingerprint(a) == config_fingerprint(b)
    c = ConvertConfig(hint_answer=True).model_dump(mode="json")
    assert config_fingerprint(a) != config_fingerprint(c)
    # How responses are read and connections opened does not change them either.
    d = ConvertConfig(event_loop="asyncio", vlm={"read_batch_bytes": 0, "spare_connections": 0},
                      reasoner={"spare_connections": 32}).model_dump(mode="json")
    assert config_fingerprint(a) == config_fingerprint(d)


def test_a_run_sets_the_gc_for_a_conversion_and_restores_it():
    import gc

    before = gc.get_threshold()

    async def inside():
        return gc.get_threshold(), gc.get_freeze_count()

    threshold, frozen = eventloop.run(inside())
    assert threshold[0] == eventloop.GC_YOUNG_THRESHOLD and threshold[1:] == before[1:]
    assert frozen > 0  # the imports' objects are not scanned during the run
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


def test_a_run_leaves_a_callers_own_frozen_objects_frozen():
    import gc

    marker = [object()]  # a container the collector tracks
    gc.freeze()
    try:
        eventloop.run(_loop_type())
        # Still in the permanent generation: gc.get_objects() lists generations 0-2 only. (Not the
        # freeze count: frozen objects freed by reference counting during the run lower it.)
        assert gc.get_freeze_count() > 0
        assert id(marker) not in {id(o) for o in gc.get_objects()}
    finally:
        gc.unfreeze()
    assert id(marker) in {id(o) for o in gc.get_objects()}  # what unfreeze() would have done


async def _burst(use_turns: bool, n: int = 20) -> tuple[int, list[int], int]:
    """n CPU-heavy steps become ready in one loop iteration (traces whose verdicts came back together)
    while a request needs four iterations to go out (connect, write, ...): how many heavy steps ran
    before it was out, in which order they ran, and how many turns were given."""
    import time

    turns, ran = eventloop.Turns(), []

    async def heavy(i: int) -> None:
        await asyncio.sleep(0)
        if use_turns:
            await turns.take()
        time.sleep(0.002)  # ~a quality gate's rules
        ran.append(i)

    async def send() -> int:
        await asyncio.sleep(0)
        for _ in range(3):
            await asyncio.sleep(0)
        return len(ran)

    heavies = [asyncio.create_task(heavy(i)) for i in range(n)]
    sent_after = await asyncio.create_task(send())
    await asyncio.gather(*heavies)
    return sent_after, ran, turns.taken


def test_heavy_steps_take_turns_so_a_burst_does_not_hold_up_a_send(each_event_loop):
    sent_after, ran, _ = asyncio.run(_burst(use_turns=False))
    assert sent_after == 20  # without turns the whole burst runs in one iteration, before the send
    sent_after, ran, taken = asyncio.run(_burst(use_turns=True))
    assert sent_after <= 4  # one per iteration
    assert ran == list(range(20)) and taken == 20  # all of them, first come first served


def test_a_cancelled_turn_passes_to_the_next_waiter(each_event_loop):
    async def main() -> list[str]:
        turns, got = eventloop.Turns(), []

        async def wait(name: str) -> None:
            await turns.take()
            got.append(name)

        a, b, c = (asyncio.create_task(wait(x)) for x in "abc")
        await asyncio.sleep(0)  # all three waiting
        b.cancel()
        await asyncio.gather(a, c)
        await asyncio.sleep(0)
        assert b.cancelled() and turns.taken == 2
        await asyncio.wait_for(turns.take(), 1)  # still handing out turns after
        return got

    assert asyncio.run(main()) == ["a", "c"]

from __future__ import annotations

import pytest
from pydantic import ValidationError

from broker.messages import Order
from broker.priority import Priority, broker_priority, effective_priority, prioritize
from broker.settings import LaneConfig, Settings
from broker.topology import build_topology


def order(priority: int, user_type: str = "regular") -> Order:
    return Order.model_validate({"order_id": "o-1", "priority": priority, "items": ["x"], "user_type": user_type})


# docs/priorities.md's table, for the default ORDERLANE_MAX_PRIORITY=10: 0 is the most urgent and gets the top level.
DEFAULT_TABLE = {0: 10, 1: 8, 2: 7, 3: 6, 4: 5, 5: 4, 6: 3, 7: 2, 8: 1, 9: 0}


@pytest.mark.parametrize(("effective", "expected"), DEFAULT_TABLE.items())
def test_broker_priority_table_at_default_max(effective: int, expected: int) -> None:
    assert broker_priority(effective, max_priority=10) == expected


@pytest.mark.parametrize("max_priority", [1, 2, 3, 5, 9, 10, 32, 255])
def test_more_urgent_never_maps_lower_and_ends_reach_the_bounds(max_priority: int) -> None:
    levels = [broker_priority(p, max_priority=max_priority) for p in range(10)]
    assert levels == sorted(levels, reverse=True)
    assert levels[0] == max_priority
    assert levels[-1] == 0


def test_enough_broker_levels_keep_every_api_level_distinct() -> None:
    for max_priority in (9, 10, 255):
        assert len({broker_priority(p, max_priority=max_priority) for p in range(10)}) == 10


@pytest.mark.parametrize(
    ("priority", "user_type", "vip_priority", "expected"),
    [
        (5, "regular", 0, 5),
        (0, "regular", 0, 0),
        (5, "vip", 0, 0),
        (9, "vip", 2, 2),
        (1, "vip", 2, 1),  # a VIP who asked for more urgency than the boost keeps it
    ],
)
def test_effective_priority(priority: int, user_type: str, vip_priority: int, expected: int) -> None:
    assert effective_priority(order(priority, user_type), vip_priority=vip_priority) == expected


def test_prioritize_combines_the_vip_boost_and_the_broker_mapping() -> None:
    assert prioritize(order(7, "vip"), vip_priority=0, max_priority=10) == Priority(effective=0, broker=10)
    assert prioritize(order(7), vip_priority=0, max_priority=10) == Priority(effective=7, broker=2)


def test_lanes_parse_and_cover_every_priority_once() -> None:
    settings = Settings(lanes="high:0-2:10, default:3-9")
    assert settings.lanes == (LaneConfig("high", 0, 2, 10), LaneConfig("default", 3, 9, None))
    topology = build_topology(settings.model_copy(update={"queue": "shop"}))
    assert [lane.work.name for lane in topology.lanes] == ["shop.high", "shop"], "the least urgent keeps the name"
    assert [topology.lane_for(p).name for p in range(10)] == ["high"] * 3 + ["default"] * 7
    assert topology.lanes[0].retry_queue(1).arguments["x-dead-letter-routing-key"] == "shop.high"
    assert {lane.work.arguments["x-dead-letter-routing-key"] for lane in topology.lanes} == {"shop.dlq"}
    assert topology.queues[-1].name == "shop.dlq"


@pytest.mark.parametrize("lanes", ["high:0-2", "high:0-2,default:4-9", "a:0-9,b:0-9", "high:0-2,high:3-9", "x:0-9:0"])
def test_lanes_that_miss_or_repeat_priorities_are_refused(lanes: str) -> None:
    with pytest.raises(ValidationError):
        Settings(lanes=lanes)


def test_by_default_urgent_orders_have_a_lane_of_their_own() -> None:
    """The FastAPI + Celery original's split: effective priorities 0..2 (every VIP order, by default) in `<queue>.high`,
    the rest in the queue itself."""
    topology = build_topology(Settings(queue="shop"))
    assert [(lane.name, lane.work.name, lane.priorities) for lane in topology.lanes] == [
        ("high", "shop.high", range(3)),
        ("default", "shop", range(3, 10)),
    ]


def test_without_lanes_the_queue_is_the_single_lane(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERLANE_LANES", "")
    [lane] = build_topology(Settings(queue="shop")).lanes
    assert (lane.work.name, lane.priorities, lane.prefetch) == ("shop", range(10), None)


@pytest.mark.parametrize(
    ("lanes", "max_priority", "levels"),
    [
        ("high:0-2,default:3-9", 10, [10, 6]),  # the default lanes
        ("", 10, [10]),  # one queue: ORDERLANE_MAX_PRIORITY's levels, as before lanes
        ("high:0-2,default:3-9", 5, [5, 3]),
        ("urgent:0-8,bulk:9-9", 10, [10, None]),  # every bulk order is level 0: a queue without priorities
    ],
)
def test_each_work_queue_has_the_levels_of_its_most_urgent_orders(
    lanes: str, max_priority: int, levels: list[int | None]
) -> None:
    topology = build_topology(Settings(queue="shop", lanes=lanes, max_priority=max_priority))
    assert [lane.work.arguments.get("x-max-priority") for lane in topology.lanes] == levels
    for lane in topology.lanes:  # no order of the lane gets a broker priority its queue would cap
        top = lane.work.arguments.get("x-max-priority", 0)
        assert isinstance(top, int)
        assert all(broker_priority(p, max_priority=max_priority) <= top for p in lane.priorities)

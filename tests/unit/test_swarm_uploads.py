"""A node's upload slots with a fake clock: serve, queue, decline with Retry-After, and
how many slots an uplink gets."""

from __future__ import annotations

from peerprog.swarm.uploads import QUEUE, SERVE, UploadConfig, UploadSlots, slots_for


def test_slots_follow_a_known_uplink_and_never_fall_below_the_configured_number() -> None:
    assert slots_for(0, 4) == 4  # no cap configured: the uplink is not known
    assert slots_for(2.5e6, 4) == 4  # a slow uplink keeps the configured floor
    assert slots_for(125e6, 4) == 20  # 1 Gbit/s: one slot per 6.25 MB/s
    assert slots_for(26e6, 4) == 5


def test_requests_are_served_then_queued_then_declined_until_a_place_frees() -> None:
    up = UploadSlots(UploadConfig(slots=1, queue=1))
    assert up.request("r1", 0.0) == SERVE
    assert up.request("r2", 0.0) == QUEUE
    retry = up.request("r3", 0.1)
    assert isinstance(retry, float) and retry >= 0.0
    assert up.end("r1", 1.0) == "r2"  # the waiting request takes the slot
    assert up.request("r3", 1.1) == QUEUE


def test_declined_requesters_are_told_to_come_back_spread_over_the_places() -> None:
    up = UploadSlots(UploadConfig(slots=2, queue=0))
    up.request("a", 0.0)
    up.request("b", 0.0)
    up.expect("a", 1.0)
    up.expect("b", 2.0)
    first, second = up.request("c", 0.5), up.request("d", 0.5)
    assert first == 0.5 and second == 1.5  # one each as the uploads end, not both at 1.0


def test_a_patient_requester_waits_past_the_queue_and_in_arrival_order() -> None:
    slots = UploadSlots(UploadConfig(slots=1, queue=1))
    assert slots.request("a", 0.0) == SERVE
    assert slots.request("b", 0.0) == QUEUE
    assert isinstance(slots.request("c", 0.0), float)  # the queue is full: 503
    assert slots.request("web", 0.0, patient=True) == QUEUE
    assert slots.request("web2", 0.0, patient=True) == QUEUE
    assert slots.waiting == 3
    assert slots.end("a", 1.0) == "b"
    assert slots.end("b", 2.0) == "web"
    assert slots.end("web", 3.0) == "web2"

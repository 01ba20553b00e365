"""Persistent subscriptions through the official Python client: groups on a
stream and on `$all` (filtered or not) created, reported, listed, updated and
deleted; consumed with acks until the checkpoint shows in `get_subscription_info`;
resumed after a reconnect at the first unacknowledged event; nacks that park and
retry; the errors a client sees. Against the testkit by default, against a real
cluster with `ESDB_URL` (see conftest.py).

Every wait is bounded (`eventually`): the checkpoint and the message timeout are
real-time timers on the server, so the tests wait for what they cause, never for
a fixed time.
"""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
from kurrentdbclient import KurrentDBClient, NewEvent, StreamState
from kurrentdbclient.exceptions import (
    AlreadyExistsError,
    MaximumSubscriptionsReachedError,
    NotFoundError,
)

# How long the server may take to deliver, checkpoint or time out what a test
# waits for.
DEADLINE = 20.0


def append(client: KurrentDBClient, stream: str, count: int, kind: str = "Happened") -> list[uuid.UUID]:
    events = [NewEvent(type=kind, data=json.dumps({"n": n}).encode()) for n in range(count)]
    client.append_to_stream(stream, current_version=StreamState.ANY, events=events)
    return [e.id for e in events]


def take(subscription, count: int, what: str) -> list:
    """The next `count` events of `subscription`; fails naming `what` when they
    do not come within the deadline."""
    timer = threading.Timer(DEADLINE, subscription.stop)
    timer.start()
    items = []
    try:
        for item in subscription:
            items.append(item)
            if len(items) == count:
                break
    finally:
        timer.cancel()
    assert len(items) == count, f"{what}: got {len(items)} of {count} in {DEADLINE}s"
    return items


def eventually(what: str, check):
    """Polls `check` until it returns something truthy, and returns that."""
    deadline = time.monotonic() + DEADLINE
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {DEADLINE}s: {what}"
        time.sleep(0.05)


def group_name() -> str:
    return f"group-{uuid.uuid4().hex[:8]}"


# ---------------------------------------------------------------- management


def test_a_stream_group_is_created_reported_listed_updated_and_deleted(client, prefix):
    stream, group = f"{prefix}orders", group_name()
    append(client, stream, 5)
    client.create_subscription_to_stream(
        group,
        stream,
        stream_position=3,
        resolve_links=True,
        consumer_strategy="RoundRobin",
        message_timeout=12.5,
        max_retry_count=7,
        min_checkpoint_count=3,
        max_checkpoint_count=30,
        checkpoint_after=1.5,
        max_subscriber_count=4,
        live_buffer_size=300,
        read_batch_size=40,
        history_buffer_size=600,
        extra_statistics=True,
    )
    info = client.get_subscription_info(group, stream)
    assert (info.event_source, info.group_name) == (stream, group)
    assert info.start_from == "3"
    assert info.resolve_links is True and info.extra_statistics is True
    assert info.consumer_strategy == "RoundRobin"
    assert (info.message_timeout, info.checkpoint_after) == (12.5, 1.5)
    assert (info.max_retry_count, info.min_checkpoint_count, info.max_checkpoint_count) == (7, 3, 30)
    assert (info.max_subscriber_count, info.live_buffer_size) == (4, 300)
    assert (info.read_batch_size, info.history_buffer_size) == (40, 600)
    assert info.last_checkpointed_event_position == ""
    assert info.parked_message_count == 0

    listed = [(i.event_source, i.group_name) for i in client.list_subscriptions()]
    assert (stream, group) in listed
    assert [i.group_name for i in client.list_subscriptions_to_stream(stream)] == [group]

    client.update_subscription_to_stream(group, stream, max_retry_count=2, consumer_strategy="Pinned")
    info = client.get_subscription_info(group, stream)
    assert (info.max_retry_count, info.consumer_strategy, info.start_from) == (2, "Pinned", "3")
    assert info.history_buffer_size == 600, "update keeps what it was not told to change"

    client.update_subscription_to_stream(group, stream, from_end=True)
    assert client.get_subscription_info(group, stream).start_from == "-1"

    client.delete_subscription(group, stream)
    with pytest.raises(NotFoundError):
        client.get_subscription_info(group, stream)
    assert client.list_subscriptions_to_stream(stream) == []


def test_all_groups_report_their_start_as_a_position(client, prefix):
    stream = f"{prefix}positions"
    append(client, stream, 3)
    commit = max(e.commit_position for e in client.get_stream(stream))
    start, end, at = group_name(), group_name(), group_name()
    client.create_subscription_to_all(start)
    client.create_subscription_to_all(end, from_end=True, filter_include=[f"{prefix}.*"], filter_by_stream_name=True)
    client.create_subscription_to_all(at, commit_position=commit, filter_exclude=(), filter_include=())
    try:
        assert client.get_subscription_info(start).start_from == "C:0/P:0"
        assert client.get_subscription_info(end).start_from == "C:-1/P:-1"
        assert client.get_subscription_info(at).start_from == f"C:{commit}/P:{commit}"
        assert client.get_subscription_info(at).event_source == "$all"
        listed = {i.group_name for i in client.list_subscriptions() if i.event_source == "$all"}
        assert {start, end, at} <= listed
        client.update_subscription_to_all(at, max_retry_count=3)
        info = client.get_subscription_info(at)
        assert (info.max_retry_count, info.start_from) == (3, f"C:{commit}/P:{commit}")
    finally:
        for group in (start, end, at):
            client.delete_subscription(group)
    with pytest.raises(NotFoundError):
        client.get_subscription_info(at)


def test_creating_an_existing_group_and_using_a_missing_one_fail(client, prefix):
    stream, group = f"{prefix}errors", group_name()
    client.create_subscription_to_stream(group, stream)
    with pytest.raises(AlreadyExistsError):
        client.create_subscription_to_stream(group, stream)
    missing = group_name()
    with pytest.raises(NotFoundError):
        client.get_subscription_info(missing, stream)
    with pytest.raises(NotFoundError):
        client.update_subscription_to_stream(missing, stream)
    with pytest.raises(NotFoundError):
        client.delete_subscription(missing, stream)
    with pytest.raises(NotFoundError):
        client.get_subscription_info(missing)
    with pytest.raises(NotFoundError):
        sub = client.read_subscription_to_stream(missing, stream)
        next(iter(sub))
    client.delete_subscription(group, stream)


# ---------------------------------------------------------------- consuming


def test_acked_events_show_as_the_checkpoint_and_a_reconnect_resumes_at_the_first_unacked(client, prefix):
    stream, group = f"{prefix}consume", group_name()
    ids = append(client, stream, 10)
    client.create_subscription_to_stream(
        group, stream, min_checkpoint_count=1, max_checkpoint_count=1000, checkpoint_after=0.2
    )
    sub = client.read_subscription_to_stream(group, stream)
    events = take(sub, 6, "the first six events")
    assert [e.stream_position for e in events] == list(range(6))
    assert [e.id for e in events] == ids[:6]
    assert all(e.retry_count == 0 for e in events)
    assert all(e.commit_position is not None for e in events)
    for e in events[:4]:
        sub.ack(e)
    # The checkpoint is the event before the lowest unacked one (revision 4).
    info = eventually(
        "the checkpoint at revision 3",
        lambda: (i := client.get_subscription_info(group, stream)).last_checkpointed_event_position == "3" and i,
    )
    assert info.last_known_event_position == "9"
    assert info.total_in_flight_messages >= 2
    sub.stop()

    again = client.read_subscription_to_stream(group, stream)
    resumed = take(again, 6, "the events not acknowledged before the reconnect")
    assert [e.stream_position for e in resumed] == [4, 5, 6, 7, 8, 9]
    assert [e.retry_count for e in resumed[:2]] == [1, 1], "redelivered events count their retries"
    for e in resumed:
        again.ack(e)
    eventually(
        "the checkpoint at the last event",
        lambda: client.get_subscription_info(group, stream).last_checkpointed_event_position == "9",
    )
    # Live: a new event reaches the connected consumer.
    (new,) = append(client, stream, 1)
    (live,) = take(again, 1, "the event appended while connected")
    assert (live.id, live.stream_position) == (new, 10)
    again.ack(live)
    again.stop()
    client.delete_subscription(group, stream)


def test_a_group_created_over_an_existing_checkpoint_resumes_after_it(client, prefix):
    stream, group = f"{prefix}seeded", group_name()
    append(client, stream, 8)
    client.append_to_stream(
        f"$persistentsubscription-{stream}::{group}-checkpoint",
        current_version=StreamState.ANY,
        events=[NewEvent(type="$SubscriptionCheckpoint", data=json.dumps("4").encode())],
    )
    client.create_subscription_to_stream(group, stream)
    assert client.get_subscription_info(group, stream).last_checkpointed_event_position == "4"
    sub = client.read_subscription_to_stream(group, stream)
    (first,) = take(sub, 1, "the first event after the checkpoint")
    assert first.stream_position == 5
    sub.stop()
    client.delete_subscription(group, stream)


def test_a_filtered_all_group_delivers_only_matching_events_with_positions(client, prefix):
    stream, other, group = f"{prefix}wanted", f"{prefix}other", group_name()
    client.create_subscription_to_all(
        group, from_end=True, filter_include=[f"{prefix}wanted"], filter_by_stream_name=True,
        min_checkpoint_count=1, checkpoint_after=0.2,
    )
    append(client, other, 2)
    ids = append(client, stream, 3)
    sub = client.read_subscription_to_all(group)
    events = take(sub, 3, "the events of the wanted stream")
    assert [e.id for e in events] == ids
    assert {e.stream_name for e in events} == {stream}
    for e in events:
        sub.ack(e)
    last = events[-1]
    eventually(
        "the $all checkpoint at the last event",
        lambda: client.get_subscription_info(group).last_checkpointed_event_position
        == f"C:{last.commit_position}/P:{last.prepare_position}",
    )
    sub.stop()
    client.delete_subscription(group)


def test_an_event_type_filter_applies_to_all_groups(client, prefix):
    stream, group = f"{prefix}typed", group_name()
    kind = f"Kind{uuid.uuid4().hex[:6]}"
    client.create_subscription_to_all(group, from_end=True, filter_include=[kind])
    append(client, stream, 2, kind="Other")
    ids = append(client, stream, 2, kind=kind)
    sub = client.read_subscription_to_all(group)
    assert [e.id for e in take(sub, 2, "events of the filtered type")] == ids
    sub.stop()
    client.delete_subscription(group)


def test_nacks_retry_and_park_and_parked_events_replay(client, prefix):
    stream, group = f"{prefix}nacks", group_name()
    ids = append(client, stream, 2)
    client.create_subscription_to_stream(group, stream)
    sub = client.read_subscription_to_stream(group, stream)
    first, second = take(sub, 2, "both events")
    sub.nack(first, "retry")
    (retried,) = take(sub, 1, "the retried event")
    assert (retried.id, retried.retry_count) == (ids[0], 1)
    sub.ack(retried)
    sub.nack(second, "park")
    eventually("one parked event", lambda: client.get_subscription_info(group, stream).parked_message_count == 1)
    client.replay_parked_events(group, stream)
    (replayed,) = take(sub, 1, "the replayed parked event")
    assert replayed.id == ids[1]
    sub.ack(replayed)
    eventually("no parked event", lambda: client.get_subscription_info(group, stream).parked_message_count == 0)
    sub.stop()
    client.delete_subscription(group, stream)


def test_an_unacknowledged_event_times_out_is_retried_then_parked(client, prefix):
    stream, group = f"{prefix}timeouts", group_name()
    (event_id,) = append(client, stream, 1)
    client.create_subscription_to_stream(group, stream, message_timeout=0.3, max_retry_count=1)
    sub = client.read_subscription_to_stream(group, stream)
    first, second = take(sub, 2, "the event and its redelivery after the timeout")
    assert (first.id, first.retry_count) == (event_id, 0)
    assert (second.id, second.retry_count) == (event_id, 1)
    eventually(
        "the event parked after its last retry",
        lambda: client.get_subscription_info(group, stream).parked_message_count == 1,
    )
    sub.stop()
    client.delete_subscription(group, stream)


def test_a_group_refuses_consumers_beyond_its_maximum(client, prefix):
    stream, group = f"{prefix}crowded", group_name()
    client.create_subscription_to_stream(group, stream, max_subscriber_count=1)
    first = client.read_subscription_to_stream(group, stream)
    eventually("one connection", lambda: len(client.get_subscription_info(group, stream).connections) == 1)
    with pytest.raises(MaximumSubscriptionsReachedError):
        sub = client.read_subscription_to_stream(group, stream)
        next(iter(sub))
    first.stop()
    client.delete_subscription(group, stream)


def test_round_robin_shares_events_between_consumers(client, prefix):
    stream, group = f"{prefix}shared", group_name()
    client.create_subscription_to_stream(group, stream, consumer_strategy="RoundRobin")
    a = client.read_subscription_to_stream(group, stream)
    b = client.read_subscription_to_stream(group, stream)
    eventually("two connections", lambda: len(client.get_subscription_info(group, stream).connections) == 2)
    ids = append(client, stream, 4)
    got = take(a, 2, "consumer a's share") + take(b, 2, "consumer b's share")
    assert sorted(e.stream_position for e in got) == [0, 1, 2, 3]
    assert {e.id for e in got} == set(ids)
    a.stop()
    b.stop()
    client.delete_subscription(group, stream)


@pytest.mark.parametrize("strategy", ["Pinned", "PinnedByCorrelation", "DispatchToSingle"])
def test_every_strategy_delivers(client, prefix, strategy):
    stream, group = f"{prefix}{strategy.lower()}", group_name()
    ids = append(client, stream, 3)
    client.create_subscription_to_stream(group, stream, consumer_strategy=strategy)
    assert client.get_subscription_info(group, stream).consumer_strategy == strategy
    sub = client.read_subscription_to_stream(group, stream)
    assert [e.id for e in take(sub, 3, f"the events through {strategy}")] == ids
    sub.stop()
    client.delete_subscription(group, stream)


def test_links_are_resolved_and_acknowledged_by_the_link(client, prefix):
    stream, links, group = f"{prefix}linked", f"{prefix}links", group_name()
    (target,) = append(client, stream, 1)
    client.append_to_stream(
        links,
        current_version=StreamState.ANY,
        events=[NewEvent(type="$>", data=f"0@{stream}".encode(), content_type="application/octet-stream")],
    )
    client.create_subscription_to_stream(
        group, links, resolve_links=True, min_checkpoint_count=1, checkpoint_after=0.2
    )
    sub = client.read_subscription_to_stream(group, links)
    (event,) = take(sub, 1, "the resolved link")
    assert (event.id, event.stream_name, event.stream_position) == (target, stream, 0)
    assert event.link is not None and event.link.stream_name == links
    assert event.ack_id == event.link.id
    sub.ack(event)
    eventually(
        "the checkpoint at the link",
        lambda: client.get_subscription_info(group, links).last_checkpointed_event_position == "0",
    )
    sub.stop()
    client.delete_subscription(group, links)

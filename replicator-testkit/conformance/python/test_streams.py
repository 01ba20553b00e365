"""The same scenarios as the Rust server tests, driven through the official Python
client (`kurrentdbclient`): every operation a client of the Streams API uses, and
the typed exception each failure raises. Against the testkit by default, against
a real cluster with `ESDB_URL` (see conftest.py).
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterable

import pytest
from kurrentdbclient import KurrentDBClient, NewEvent, RecordedEvent, StreamState
from kurrentdbclient.events import CaughtUp, Checkpoint
from kurrentdbclient.exceptions import (
    FailedPreconditionError,
    GrpcError,
    MaximumAppendSizeExceededError,
    NotFoundError,
    StreamIsDeletedError,
    WrongCurrentVersionError,
)

# The real server's default maximum append size (`MaxAppendSize`).
MAX_APPEND_SIZE = 1024 * 1024
# How long a subscription may take to deliver what a test waits for.
SUBSCRIPTION_DEADLINE = 20.0


def event(kind: str = "Happened", n: int = 0, **kwargs) -> NewEvent:
    data = kwargs.pop("data", json.dumps({"n": n}).encode())
    return NewEvent(type=kind, data=data, **kwargs)


def take(subscription, count: int, what: str) -> list:
    """The next `count` items of `subscription` (events, and `CaughtUp` when asked
    for); fails naming `what` when they do not come within the deadline."""
    timer = threading.Timer(SUBSCRIPTION_DEADLINE, subscription.stop)
    timer.start()
    items = []
    try:
        for item in subscription:
            items.append(item)
            if len(items) == count:
                break
    finally:
        timer.cancel()
    assert len(items) == count, f"{what}: got {len(items)} of {count} in {SUBSCRIPTION_DEADLINE}s"
    return items


def positions(events: Iterable[RecordedEvent]) -> list[int]:
    return [e.stream_position for e in events]


# ---------------------------------------------------------------- appends


def test_single_and_batch_appends_assign_revisions_and_positions(client, prefix):
    stream = prefix + "orders"
    first = client.append_to_stream(
        stream, events=event(n=0), current_version=StreamState.NO_STREAM
    )
    second = client.append_to_stream(
        stream, events=[event(n=1), event(n=2), event(n=3)], current_version=0
    )
    assert second > first
    events = client.get_stream(stream)
    assert positions(events) == [0, 1, 2, 3]
    assert [json.loads(e.data)["n"] for e in events] == [0, 1, 2, 3]
    assert events[-1].commit_position == second
    assert client.get_current_version(stream) == 3


def test_event_fields_round_trip(client, prefix):
    stream = prefix + "fields"
    sent = [
        NewEvent(type="Json", data=b'{"a":1}', metadata=b'{"m":"x"}'),
        NewEvent(
            type="Bin",
            data=bytes(range(256)),
            metadata=b"\x00\xff",
            content_type="application/octet-stream",
        ),
        NewEvent(type="Empty", data=b""),
    ]
    client.append_to_stream(stream, events=sent, current_version=StreamState.NO_STREAM)
    got = client.get_stream(stream)
    assert [(e.id, e.type, e.data, e.metadata, e.content_type) for e in got] == [
        (e.id, e.type, e.data, e.metadata, e.content_type) for e in sent
    ]
    assert all(e.stream_name == stream for e in got)
    assert all(e.recorded_at is not None for e in got)


def test_idempotent_retries_write_once(client, prefix):
    stream = prefix + "retry"
    batch = [event(n=i) for i in range(3)]
    client.append_to_stream(stream, events=batch, current_version=StreamState.NO_STREAM)
    # The same events again (a retry after a lost reply): success, no copy.
    client.append_to_stream(stream, events=batch, current_version=StreamState.NO_STREAM)
    client.append_to_stream(stream, events=batch, current_version=StreamState.ANY)
    single = event(n=9)
    client.append_to_stream(stream, events=single, current_version=2)
    client.append_to_stream(stream, events=single, current_version=2)
    got = client.get_stream(stream)
    assert positions(got) == [0, 1, 2, 3]
    assert [e.id for e in got] == [e.id for e in batch] + [single.id]


@pytest.mark.parametrize("batch", [False, True], ids=["single", "batch"])
def test_wrong_expected_revisions_raise_wrong_current_version(client, prefix, batch):
    stream = prefix + "expect"

    def append(current_version):
        events = [event(), event()] if batch else event()
        return client.append_to_stream(stream, events=events, current_version=current_version)

    with pytest.raises(WrongCurrentVersionError):
        append(StreamState.EXISTS)  # the stream does not exist yet
    with pytest.raises(WrongCurrentVersionError):
        append(0)
    append(StreamState.NO_STREAM)
    last = 1 if batch else 0
    with pytest.raises(WrongCurrentVersionError):
        append(StreamState.NO_STREAM)
    with pytest.raises(WrongCurrentVersionError):
        append(last + 5)
    append(last)
    append(StreamState.EXISTS)
    append(StreamState.ANY)
    assert client.get_current_version(stream) == (last + 1) * 4 - 1


# ---------------------------------------------------------------- stream reads


def test_stream_reads_forwards_backwards_from_a_revision_with_a_limit(client, prefix):
    stream = prefix + "reads"
    client.append_to_stream(
        stream, events=[event(n=i) for i in range(10)], current_version=StreamState.NO_STREAM
    )
    assert positions(client.get_stream(stream, stream_position=4, limit=3)) == [4, 5, 6]
    assert positions(client.get_stream(stream, backwards=True, limit=3)) == [9, 8, 7]
    assert positions(client.get_stream(stream, stream_position=2, backwards=True)) == [2, 1, 0]
    assert positions(client.get_stream(stream, stream_position=10)) == []
    assert positions(client.read_stream(stream)) == list(range(10))


def test_reading_a_missing_stream_raises_not_found(client, prefix):
    with pytest.raises(NotFoundError):
        client.get_stream(prefix + "missing")
    assert client.get_current_version(prefix + "missing") is StreamState.NO_STREAM


# ---------------------------------------------------------------- $all


def write_three_streams(client, prefix) -> list[RecordedEvent]:
    """Appends interleaved to three streams of `prefix` and returns what $all
    holds for them, in order."""
    for i in range(9):
        client.append_to_stream(
            f"{prefix}{'abc'[i % 3]}",
            events=event(kind=f"Kind{i % 2}", n=i),
            current_version=StreamState.ANY,
        )
    return list(
        client.read_all(filter_include=[prefix + ".*"], filter_by_stream_name=True)
    )


def test_read_all_forwards_and_backwards_with_stream_filters(client, prefix):
    ours = write_three_streams(client, prefix)
    assert [json.loads(e.data)["n"] for e in ours] == list(range(9))
    commits = [e.commit_position for e in ours]
    assert commits == sorted(commits) and len(set(commits)) == 9

    backwards = list(
        client.read_all(
            backwards=True, filter_include=[prefix + ".*"], filter_by_stream_name=True
        )
    )
    assert [e.id for e in backwards] == [e.id for e in reversed(ours)]

    only_b = list(
        client.read_all(filter_include=[prefix + "b"], filter_by_stream_name=True)
    )
    assert [json.loads(e.data)["n"] for e in only_b] == [1, 4, 7]

    by_prefix = list(
        client.read_all(
            filter_include=[prefix + "c"], filter_by_stream_name=True, filter_by_prefix=True
        )
    )
    assert [json.loads(e.data)["n"] for e in by_prefix] == [2, 5, 8]

    limited = list(
        client.read_all(filter_include=[prefix + ".*"], filter_by_stream_name=True, limit=4)
    )
    assert [e.id for e in limited] == [e.id for e in ours[:4]]


def test_read_all_from_a_position_is_inclusive(client, prefix):
    ours = write_three_streams(client, prefix)
    start = ours[3].commit_position
    forwards = list(
        client.read_all(
            commit_position=start, filter_include=[prefix + ".*"], filter_by_stream_name=True
        )
    )
    assert [e.id for e in forwards] == [e.id for e in ours[3:]]


def test_read_all_with_the_default_filter_excludes_system_event_types(client, prefix):
    stream = prefix + "sys"
    client.append_to_stream(
        stream,
        events=[event(kind="UserEvent"), event(kind="$system-like"), event(kind="UserEvent")],
        current_version=StreamState.NO_STREAM,
    )
    first = client.get_stream(stream)[0].commit_position
    # No filter given: the client's default excludes `$`-types with a negative
    # look-ahead (`^(?!(\$.+$|…))`), which a .NET-compatible server accepts.
    types = [e.type for e in client.read_all(commit_position=first) if e.stream_name == stream]
    assert types == ["UserEvent", "UserEvent"]
    # Backwards too, and the newest event of the whole log is a user event.
    newest = next(iter(client.read_all(backwards=True, limit=1)))
    assert not newest.type.startswith("$")
    # Filtering on the event type, include and exclude.
    only = [
        e.type
        for e in client.read_all(commit_position=first, filter_include=[r"\$system-.*"])
        if e.stream_name == stream
    ]
    assert only == ["$system-like"]
    excluded = [
        e.type
        for e in client.read_all(commit_position=first, filter_exclude=["UserEvent"])
        if e.stream_name == stream
    ]
    assert excluded == ["$system-like"]


def test_commit_position_is_the_last_event_of_all(client, prefix):
    position = client.append_to_stream(
        prefix + "last", events=event(), current_version=StreamState.NO_STREAM
    )
    assert client.get_commit_position() >= position


# ---------------------------------------------------------------- subscriptions


def test_subscription_to_all_catches_up_then_goes_live(client, prefix):
    ours = write_three_streams(client, prefix)
    subscription = client.subscribe_to_all(
        filter_include=[prefix + ".*"], filter_by_stream_name=True, include_caught_up=True
    )
    try:
        caught_up = take(subscription, 10, "catch-up")
        assert [e.id for e in caught_up[:9]] == [e.id for e in ours]
        assert isinstance(caught_up[9], CaughtUp)
        live = [event(n=100), event(n=101)]
        client.append_to_stream(prefix + "a", events=live, current_version=StreamState.ANY)
        client.append_to_stream(
            prefix.rstrip("-") + "x-other", events=event(), current_version=StreamState.ANY
        )
        got = take(subscription, 2, "live events")
        assert [e.id for e in got] == [e.id for e in live]
    finally:
        subscription.stop()


def test_subscription_to_all_from_a_position_is_exclusive(client, prefix):
    ours = write_three_streams(client, prefix)
    subscription = client.subscribe_to_all(
        commit_position=ours[5].commit_position,
        filter_include=[prefix + ".*"],
        filter_by_stream_name=True,
    )
    try:
        got = take(subscription, 3, "events after the position")
        assert [e.id for e in got] == [e.id for e in ours[6:]]
    finally:
        subscription.stop()


def test_subscription_to_a_stream_catches_up_then_goes_live(client, prefix):
    stream = prefix + "sub"
    client.append_to_stream(
        stream, events=[event(n=i) for i in range(3)], current_version=StreamState.NO_STREAM
    )
    subscription = client.subscribe_to_stream(stream, include_caught_up=True)
    try:
        got = take(subscription, 4, "catch-up")
        assert positions(got[:3]) == [0, 1, 2]
        assert isinstance(got[3], CaughtUp)
        client.append_to_stream(stream, events=event(n=3), current_version=2)
        assert positions(take(subscription, 1, "live event")) == [3]
    finally:
        subscription.stop()
    after = client.subscribe_to_stream(stream, stream_position=1)
    try:
        assert positions(take(after, 2, "events after revision 1")) == [2, 3]
    finally:
        after.stop()


def test_filtered_subscription_to_all_sends_checkpoints_while_nothing_matches(client, prefix):
    noise = [event(n=i) for i in range(10)]
    client.append_to_stream(prefix + "noise", events=noise, current_version=StreamState.NO_STREAM)
    start = client.get_stream(prefix + "noise")[0].commit_position
    subscription = client.subscribe_to_all(
        commit_position=start,
        filter_include=[prefix + "signal"],
        filter_by_stream_name=True,
        include_checkpoints=True,
        window_size=2,
        checkpoint_interval_multiplier=1,
    )
    try:
        signal = client.append_to_stream(
            prefix + "signal", events=event(n=99), current_version=StreamState.NO_STREAM
        )
        items = []
        timer = threading.Timer(SUBSCRIPTION_DEADLINE, subscription.stop)
        timer.start()
        try:
            for item in subscription:
                items.append(item)
                if not isinstance(item, Checkpoint) or len(items) > 100:
                    break
        finally:
            timer.cancel()
        checkpoints = [i for i in items if isinstance(i, Checkpoint)]
        assert items and not isinstance(items[-1], Checkpoint), f"no event among {items}"
        assert items[-1].stream_name == prefix + "signal"
        assert items[-1].commit_position == signal
        # Checkpoints came while only noise was read, in order, before the event.
        assert checkpoints, "a filtered subscription reports progress with checkpoints"
        positions_seen = [c.commit_position for c in checkpoints]
        assert positions_seen == sorted(positions_seen)
        assert all(start <= p <= signal for p in positions_seen)
    finally:
        subscription.stop()


# ---------------------------------------------------------------- metadata


def test_stream_metadata_round_trips_and_is_versioned(client, prefix):
    stream = prefix + "meta"
    metadata, version = client.get_stream_metadata(stream)
    assert metadata == {} and version is StreamState.NO_STREAM
    client.set_stream_metadata(
        stream, metadata={"$maxCount": 5, "custom": "x"}, current_version=StreamState.NO_STREAM
    )
    metadata, version = client.get_stream_metadata(stream)
    assert metadata == {"$maxCount": 5, "custom": "x"} and version == 0
    client.set_stream_metadata(stream, metadata={"$maxAge": 60}, current_version=0)
    metadata, version = client.get_stream_metadata(stream)
    assert metadata == {"$maxAge": 60} and version == 1
    with pytest.raises(WrongCurrentVersionError):
        client.set_stream_metadata(stream, metadata={}, current_version=0)


# ---------------------------------------------------------------- deletes


def test_soft_delete_hides_the_stream_until_it_is_written_again(client, prefix):
    stream = prefix + "soft"
    client.append_to_stream(
        stream, events=[event(n=i) for i in range(3)], current_version=StreamState.NO_STREAM
    )
    client.delete_stream(stream, current_version=2)
    with pytest.raises(NotFoundError):
        client.get_stream(stream)
    # The server marks the deletion with `$tb` = i64::MAX in the metadata.
    metadata, _ = client.get_stream_metadata(stream)
    assert metadata.get("$tb") == 2**63 - 1
    # Written again, it continues after the deleted revisions, and the server
    # moves `$tb` to the first revision that is left.
    client.append_to_stream(stream, events=event(n=3), current_version=StreamState.ANY)
    assert positions(client.get_stream(stream)) == [3]
    metadata, _ = client.get_stream_metadata(stream)
    assert metadata.get("$tb") == 3


def test_deleting_with_a_wrong_revision_fails(client, prefix):
    stream = prefix + "del"
    client.append_to_stream(stream, events=event(), current_version=StreamState.NO_STREAM)
    with pytest.raises(WrongCurrentVersionError) as wrong:
        client.delete_stream(stream, current_version=5)
    assert wrong.value.actual_version == 0 and wrong.value.expected_version == 5
    with pytest.raises(NotFoundError):
        client.delete_stream(prefix + "never-written", current_version=0)


def test_tombstone_deletes_for_ever_and_every_operation_says_so(client, prefix):
    stream = prefix + "tomb"
    client.append_to_stream(
        stream, events=[event(), event()], current_version=StreamState.NO_STREAM
    )
    client.tombstone_stream(stream, current_version=1)
    with pytest.raises(StreamIsDeletedError):
        client.get_stream(stream)
    with pytest.raises(StreamIsDeletedError):  # batch append: typed error details
        client.append_to_stream(stream, events=[event(), event()], current_version=StreamState.ANY)
    # A single event goes through the unary Append: FAILED_PRECONDITION with the
    # `exception: stream-deleted` header, which this client does not map further.
    with pytest.raises(FailedPreconditionError, match="is deleted"):
        client.append_to_stream(stream, events=event(), current_version=StreamState.ANY)
    with pytest.raises(StreamIsDeletedError):
        client.delete_stream(stream, current_version=StreamState.ANY)
    with pytest.raises(StreamIsDeletedError):
        client.tombstone_stream(stream, current_version=StreamState.ANY)
    with pytest.raises(StreamIsDeletedError):
        take(client.subscribe_to_stream(stream), 1, "the deleted stream's error")


# ---------------------------------------------------------------- links


def test_links_resolve_to_their_events(client, prefix):
    target = prefix + "target"
    client.append_to_stream(
        target, events=[event(n=0), event(n=1)], current_version=StreamState.NO_STREAM
    )
    links = prefix + "links"
    client.append_to_stream(
        links,
        events=[
            NewEvent(type="$>", data=f"1@{target}".encode(), content_type="application/octet-stream"),
            NewEvent(type="$>", data=f"0@{target}".encode(), content_type="application/octet-stream"),
        ],
        current_version=StreamState.NO_STREAM,
    )
    raw = client.get_stream(links)
    assert [e.type for e in raw] == ["$>", "$>"] and all(e.link is None for e in raw)
    resolved = client.get_stream(links, resolve_links=True)
    assert [(e.stream_name, e.stream_position) for e in resolved] == [(target, 1), (target, 0)]
    assert [(e.link.stream_name, e.link.stream_position) for e in resolved] == [
        (links, 0),
        (links, 1),
    ]


# ---------------------------------------------------------------- large events


def test_events_up_to_the_maximum_append_size_round_trip(client, prefix):
    stream = prefix + "large"
    # Data + metadata + 2 x the type's length counts towards the limit.
    data = bytes([7]) * (MAX_APPEND_SIZE - 2 * len("Large"))
    client.append_to_stream(
        stream,
        events=[NewEvent(type="Large", data=data, content_type="application/octet-stream")],
        current_version=StreamState.NO_STREAM,
    )
    (got,) = client.get_stream(stream)
    assert got.data == data


def test_appends_over_the_maximum_append_size_fail(client, prefix):
    half = bytes(600 * 1024)
    with pytest.raises(MaximumAppendSizeExceededError, match=str(MAX_APPEND_SIZE)):
        client.append_to_stream(
            prefix + "too-large",
            events=[event(data=half), event(data=half)],
            current_version=StreamState.ANY,
        )
    # The unary Append answers INVALID_ARGUMENT with the limit in the message.
    with pytest.raises(GrpcError, match=f"Maximum Append Size of {MAX_APPEND_SIZE} Exceeded"):
        client.append_to_stream(
            prefix + "too-large", events=event(data=bytes(MAX_APPEND_SIZE)), current_version=StreamState.ANY
        )
    with pytest.raises(NotFoundError):
        client.get_stream(prefix + "too-large")


def test_a_rejected_batch_leaves_the_batch_session_usable(client, prefix):
    stream = prefix + "after-error"
    with pytest.raises(WrongCurrentVersionError):
        client.append_to_stream(stream, events=[event(), event()], current_version=3)
    client.append_to_stream(stream, events=[event(), event()], current_version=StreamState.NO_STREAM)
    assert positions(client.get_stream(stream)) == [0, 1]


def test_unique_ids_are_kept(client, prefix):
    stream = prefix + "ids"
    ids = [uuid.uuid4() for _ in range(5)]
    client.append_to_stream(
        stream, events=[NewEvent(type="E", data=b"{}", id=i) for i in ids], current_version=StreamState.ANY
    )
    assert [e.id for e in client.get_stream(stream)] == ids


def test_one_batch_append_call_writes_its_requests_in_order_past_a_refused_one(
    client, prefix
):
    """The facts the replicator's source order rests on (ARCHITECTURE.md,
    "Source order"): the requests of one BatchAppend call are written in the
    order they were sent, across streams; a refused request (wrong expected
    version) writes nothing and the call goes on; answers are matched by
    correlation id. Sent through the client's own stub and request builder,
    as one call of many requests."""
    streams = client.streams
    plan = [
        ("a", StreamState.NO_STREAM, 2),
        ("b", StreamState.NO_STREAM, 1),
        ("a", 1, 1),
        ("c", 7, 1),  # refused: c does not exist
        ("b", 0, 2),
        ("c", StreamState.NO_STREAM, 1),
        ("a", 2, 1),
    ]
    requests, sent = [], []
    for i, (name, version, count) in enumerate(plan):
        events = [event(n=10 * i + k) for k in range(count)]
        correlation = uuid.uuid4()
        requests.append(
            streams._construct_batch_append_req(
                stream_name=prefix + name,
                current_version=version,
                events=events,
                timeout=None,
                correlation_id=correlation,
            )
        )
        sent.append((correlation, events))
    answers = {}
    for answer in streams._stub.BatchAppend(
        iter(requests),
        metadata=streams._metadata(None, requires_leader=True),
        credentials=client._call_credentials,
    ):
        answers[uuid.UUID(answer.correlation_id.string)] = answer.WhichOneof("result")
        if len(answers) == len(requests):
            break
    assert [answers[c] for c, _ in sent] == [
        "success", "success", "success", "error", "success", "success", "success"
    ]
    written = [e.id for i, (_, events) in enumerate(sent) if i != 3 for e in events]
    ours = list(client.read_all(filter_include=[prefix + ".*"], filter_by_stream_name=True))
    assert [e.id for e in ours] == written

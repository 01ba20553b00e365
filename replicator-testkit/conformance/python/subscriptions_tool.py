"""Persistent subscription groups through the official Python client
(`kurrentdbclient`), for other crates' tests: create groups, consume and
acknowledge events, look at what a consumer would get next, report groups.
Every command prints one JSON document on stdout; a failure prints
`{"error": <exception class>, "message": ...}` on stdout and exits 1.

    subscriptions_tool.py create-stream URL GROUP STREAM [--from N | --from-end] [settings]
    subscriptions_tool.py create-all URL GROUP [--commit C | --from-end]
        [--filter-include REGEX ...] [--filter-exclude REGEX ...] [--no-filter]
        [--filter-by-stream-name] [settings]
    subscriptions_tool.py consume URL GROUP [--stream S] --ack N [--wait-checkpoint]
    subscriptions_tool.py next URL GROUP [--stream S] --count K
    subscriptions_tool.py info URL GROUP [--stream S]
    subscriptions_tool.py list URL

Settings (the client's defaults otherwise): --min-checkpoint, --max-checkpoint,
--checkpoint-after (s), --message-timeout (s), --max-retry, --max-subscribers,
--strategy, --resolve-links, --live-buffer, --read-batch, --history-buffer,
--extra-statistics.

`next` reads without acknowledging: the events go back to the group when it
disconnects, with their retry count up (as on the server), so a group peeked
more than its max retry count parks them. Waits are bounded by --timeout
(default 20 s).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import threading
import time
from typing import Any

from kurrentdbclient import KurrentDBClient


def event_json(event) -> dict[str, Any]:
    try:
        data: Any = event.data.decode()
    except UnicodeDecodeError:
        data = None
    out = {
        "id": str(event.id),
        "ack_id": str(event.ack_id),
        "type": event.type,
        "stream": event.stream_name,
        "revision": event.stream_position,
        "commit_position": event.commit_position,
        "prepare_position": event.prepare_position,
        "retry_count": event.retry_count,
        "data": data,
    }
    if event.link is not None:
        out["link"] = {
            "id": str(event.link.id),
            "stream": event.link.stream_name,
            "revision": event.link.stream_position,
        }
    return out


def info_json(info) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(info), default=str))


def settings(args: argparse.Namespace) -> dict[str, Any]:
    names = {
        "min_checkpoint": "min_checkpoint_count",
        "max_checkpoint": "max_checkpoint_count",
        "checkpoint_after": "checkpoint_after",
        "message_timeout": "message_timeout",
        "max_retry": "max_retry_count",
        "max_subscribers": "max_subscriber_count",
        "strategy": "consumer_strategy",
        "live_buffer": "live_buffer_size",
        "read_batch": "read_batch_size",
        "history_buffer": "history_buffer_size",
    }
    out = {kw: getattr(args, name) for name, kw in names.items() if getattr(args, name) is not None}
    if args.resolve_links:
        out["resolve_links"] = True
    if args.extra_statistics:
        out["extra_statistics"] = True
    return out


def take(subscription, count: int, timeout: float) -> list:
    timer = threading.Timer(timeout, subscription.stop)
    timer.start()
    items = []
    try:
        if count > 0:
            for item in subscription:
                items.append(item)
                if len(items) == count:
                    break
    finally:
        timer.cancel()
    if len(items) < count:
        raise TimeoutError(f"got {len(items)} of {count} events in {timeout}s")
    return items


def covers(checkpoint: str, event: dict[str, Any], stream: str | None) -> bool:
    """Whether a group's checkpoint string is at or past `event`."""
    if not checkpoint:
        return False
    if stream is not None:
        return int(checkpoint) >= event["revision"]
    commit, prepare = (int(part.split(":")[1]) for part in checkpoint.split("/"))
    return (commit, prepare) >= (event["commit_position"], event["prepare_position"])


def read(client: KurrentDBClient, group: str, stream: str | None):
    if stream is None:
        return client.read_subscription_to_all(group)
    return client.read_subscription_to_stream(group, stream)


def get_info(client: KurrentDBClient, group: str, stream: str | None):
    return client.get_subscription_info(group, stream)


def run(args: argparse.Namespace) -> Any:
    client = KurrentDBClient(args.url)
    try:
        if args.command == "create-stream":
            kwargs = settings(args)
            if args.from_end:
                kwargs["from_end"] = True
            elif args.start is not None:
                kwargs["stream_position"] = args.start
            client.create_subscription_to_stream(args.group, args.stream, **kwargs)
            return info_json(get_info(client, args.group, args.stream))
        if args.command == "create-all":
            kwargs = settings(args)
            if args.from_end:
                kwargs["from_end"] = True
            elif args.commit is not None:
                kwargs["commit_position"] = args.commit
            if args.no_filter:
                kwargs["filter_include"] = ()
                kwargs["filter_exclude"] = ()
            else:
                if args.filter_include:
                    kwargs["filter_include"] = args.filter_include
                if args.filter_exclude:
                    kwargs["filter_exclude"] = args.filter_exclude
            if args.filter_by_stream_name:
                kwargs["filter_by_stream_name"] = True
            client.create_subscription_to_all(args.group, **kwargs)
            return info_json(get_info(client, args.group, None))
        if args.command == "consume":
            sub = read(client, args.group, args.stream)
            try:
                events = take(sub, args.ack, args.timeout)
                for event in events:
                    sub.ack(event)
            finally:
                # Stopping sends the acknowledgements still batched.
                sub.stop()
            out = [event_json(e) for e in events]
            checkpoint = None
            if args.wait_checkpoint and out:
                deadline = time.monotonic() + args.timeout
                while True:
                    checkpoint = get_info(client, args.group, args.stream).last_checkpointed_event_position
                    if covers(checkpoint, out[-1], args.stream):
                        break
                    if time.monotonic() >= deadline:
                        raise TimeoutError(
                            f"the checkpoint {checkpoint!r} does not cover the last acked event "
                            f"after {args.timeout}s"
                        )
                    time.sleep(0.05)
            return {"events": out, "checkpoint": checkpoint}
        if args.command == "next":
            sub = read(client, args.group, args.stream)
            try:
                events = take(sub, args.count, args.timeout)
            finally:
                sub.stop()
            return {"events": [event_json(e) for e in events]}
        if args.command == "info":
            return info_json(get_info(client, args.group, args.stream))
        if args.command == "list":
            return [info_json(i) for i in client.list_subscriptions()]
        raise ValueError(f"unknown command {args.command}")
    finally:
        client.close()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--timeout", type=float, default=20.0, help="bound of every wait, in seconds")
    commands = p.add_subparsers(dest="command", required=True)

    def with_settings(c: argparse.ArgumentParser) -> None:
        c.add_argument("--min-checkpoint", type=int)
        c.add_argument("--max-checkpoint", type=int)
        c.add_argument("--checkpoint-after", type=float)
        c.add_argument("--message-timeout", type=float)
        c.add_argument("--max-retry", type=int)
        c.add_argument("--max-subscribers", type=int)
        c.add_argument("--strategy")
        c.add_argument("--live-buffer", type=int)
        c.add_argument("--read-batch", type=int)
        c.add_argument("--history-buffer", type=int)
        c.add_argument("--resolve-links", action="store_true")
        c.add_argument("--extra-statistics", action="store_true")
        c.add_argument("--from-end", action="store_true")

    c = commands.add_parser("create-stream", help="create a group on a stream", parents=[common])
    c.add_argument("url")
    c.add_argument("group")
    c.add_argument("stream")
    c.add_argument("--from", dest="start", type=int, help="first revision (inclusive)")
    with_settings(c)

    c = commands.add_parser("create-all", help="create a group on $all", parents=[common])
    c.add_argument("url")
    c.add_argument("group")
    c.add_argument("--commit", type=int, help="first commit position (inclusive)")
    c.add_argument("--filter-include", nargs="+", default=[])
    c.add_argument("--filter-exclude", nargs="+", default=[])
    c.add_argument("--no-filter", action="store_true", help="no filter at all (the client excludes system events by default)")
    c.add_argument("--filter-by-stream-name", action="store_true")
    with_settings(c)

    for name, what in (("consume", "read N events and acknowledge them"), ("next", "read K events without acknowledging")):
        c = commands.add_parser(name, help=what, parents=[common])
        c.add_argument("url")
        c.add_argument("group")
        c.add_argument("--stream", help="the group's stream (default: a $all group)")
        if name == "consume":
            c.add_argument("--ack", type=int, required=True)
            c.add_argument("--wait-checkpoint", action="store_true", help="wait until the checkpoint covers the last acked event")
        else:
            c.add_argument("--count", type=int, required=True)

    c = commands.add_parser("info", help="one group's info", parents=[common])
    c.add_argument("url")
    c.add_argument("group")
    c.add_argument("--stream")

    c = commands.add_parser("list", help="every group's info", parents=[common])
    c.add_argument("url")
    return p


def main() -> int:
    args = parser().parse_args()
    try:
        result = run(args)
    except Exception as error:  # noqa: BLE001 - reported as JSON for the caller
        print(json.dumps({"error": type(error).__name__, "message": str(error)}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

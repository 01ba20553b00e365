"""An independent client for the order tests: the official Python client
(`kurrentdbclient`), not ours, writes the source and reads both `$all`s.

    independent_client.py write URL EVENTS STREAMS SEED
        appends EVENTS user events one at a time, each to one of STREAMS
        streams chosen by a seeded generator (so the streams interleave in
        `$all`), as an application would
    independent_client.py read URL
        prints the ids of the user events of `$all` (streams and types not
        starting with `$`), in `$all` order, one per line
"""

from __future__ import annotations

import json
import random
import sys
import uuid

from kurrentdbclient import KurrentDBClient, NewEvent, StreamState


def write(client: KurrentDBClient, events: int, streams: int, seed: int) -> None:
    rng = random.Random(seed)
    for n in range(events):
        stream = f"order-{rng.randrange(streams)}"
        client.append_to_stream(
            stream,
            events=NewEvent(
                type="Happened",
                data=json.dumps({"n": n}).encode(),
                id=uuid.UUID(int=rng.getrandbits(128), version=4),
            ),
            current_version=StreamState.ANY,
        )


def read(client: KurrentDBClient) -> None:
    for event in client.read_all():
        if not event.stream_name.startswith("$") and not event.type.startswith("$"):
            print(event.id)


def main() -> None:
    command, url = sys.argv[1], sys.argv[2]
    client = KurrentDBClient(url)
    try:
        if command == "write":
            write(client, int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
        elif command == "read":
            read(client)
        else:
            sys.exit(f"unknown command {command!r}")
    finally:
        client.close()


if __name__ == "__main__":
    main()

//! Helpers shared by the test modules.
//!
//! Every test runs against [`Fixture::new`]'s cluster: a fresh in-process server, or
//! the real cluster in `ESDB_URL` (see `replicator_testkit::cluster`). So that the
//! tests can run again and again against one persistent cluster, each names its
//! streams with [`Fixture::stream`] (a prefix unique to the run) and looks at `$all`
//! only from where it ended when the test began ([`Fixture::all`]). On a fresh
//! in-process server both change nothing: `$all` starts empty.

use eventstore::{Client, EventData, Position, ReadAllOptions, ResolvedEvent, StreamPosition};
use replicator_testkit::cluster::TestCluster;
use replicator_testkit::support::last_position;

/// The variable that points these tests at a real cluster.
pub const VAR: &str = "ESDB_URL";

/// One test's cluster, its client, and where `$all` ended when the test began.
pub struct Fixture {
    pub cluster: TestCluster,
    pub client: Client,
    /// The last record of `$all` before the test wrote anything; `None` while empty.
    start: Option<Position>,
    prefix: String,
}

impl Fixture {
    pub async fn new() -> Fixture {
        let cluster = TestCluster::from_env(VAR)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let client = cluster.client();
        let start = last_position(&client).await.map(|p| Position {
            commit: p.commit,
            prepare: p.prepare,
        });
        Fixture {
            cluster,
            client,
            start,
            prefix: format!("t{}-", &uuid::Uuid::new_v4().simple().to_string()[..8]),
        }
    }

    /// The prefix of every stream this test writes (`t1a2b3c4d-`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `name` made unique to this run.
    pub fn stream(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Where a subscription to everything written since the test began starts.
    pub fn start(&self) -> StreamPosition<Position> {
        self.start
            .map_or(StreamPosition::Start, StreamPosition::Position)
    }

    /// Everything `$all` received since the test began, forwards.
    pub async fn all(&self) -> Vec<ResolvedEvent> {
        let options = ReadAllOptions::default()
            .position(self.start())
            .max_count(usize::MAX);
        let mut reader = self.client.read_all(&options).await.expect("read_all");
        let mut events = Vec::new();
        while let Some(event) = reader.next().await.expect("read_all next") {
            let position = event.get_original_event().position;
            // Reads from a position include the record there: it is not the test's.
            if self.start.is_some_and(|start| position <= start) {
                continue;
            }
            events.push(event);
        }
        events
    }
}

/// Appends one event to `stream` with the default options (any revision).
pub async fn append_one(
    client: &Client,
    stream: &str,
    event: EventData,
) -> eventstore::Result<eventstore::WriteResult> {
    client
        .append_to_stream(stream, &eventstore::AppendToStreamOptions::default(), event)
        .await
}

pub fn json_event(event_type: &str, n: u64) -> EventData {
    EventData::json(event_type, &serde_json::json!({ "n": n })).expect("json")
}

/// Reads a whole stream forwards; `Err` carries the client's error.
pub async fn read_stream(client: &Client, stream: &str) -> eventstore::Result<Vec<ResolvedEvent>> {
    let options = eventstore::ReadStreamOptions::default().max_count(usize::MAX);
    let mut reader = client.read_stream(stream, &options).await?;
    let mut events = Vec::new();
    while let Some(event) = reader.next().await? {
        events.push(event);
    }
    Ok(events)
}

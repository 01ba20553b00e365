//! Helpers shared by the test modules.

use eventstore::{Client, ClientSettings, EventData, ResolvedEvent};
use replicator_testkit::EsdbServer;

pub fn client_for(connection_string: &str) -> Client {
    let settings: ClientSettings = connection_string
        .parse()
        .unwrap_or_else(|e| panic!("bad connection string {connection_string}: {e}"));
    Client::new(settings).expect("client")
}

pub async fn server_and_client() -> (EsdbServer, Client) {
    let server = EsdbServer::start().await.expect("server starts");
    let client = client_for(&server.connection_string());
    (server, client)
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

/// Reads all of `$all` forwards.
pub async fn read_all(client: &Client) -> Vec<ResolvedEvent> {
    let options = eventstore::ReadAllOptions::default().max_count(usize::MAX);
    let mut reader = client.read_all(&options).await.expect("read_all");
    let mut events = Vec::new();
    while let Some(event) = reader.next().await.expect("read_all next") {
        events.push(event);
    }
    events
}

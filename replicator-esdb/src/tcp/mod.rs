//! The legacy TCP protocol of EventStoreDB v5 (`docs/tcp-protocol.md`): the
//! [`TcpReader`] of a v5 source, the [`TcpSource`] reads of its streams and
//! `$all` (for `verify`, `map-position` and the scavenge filter) and the .NET
//! ClientAPI connection string both are configured with.

mod connection;
mod discovery;
mod proto;
mod reader;
mod settings;
mod streams;

pub use connection::TcpError;
pub use reader::{TcpReader, TcpReaderConfig};
pub use settings::SettingsError;
pub use streams::TcpSource;

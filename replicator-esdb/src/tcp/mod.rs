//! The legacy TCP protocol of EventStoreDB v5 (`docs/tcp-protocol.md`): the
//! [`TcpReader`] of a v5 source and the .NET ClientAPI connection string it
//! is configured with.

mod connection;
mod discovery;
mod proto;
mod reader;
mod settings;

pub use connection::TcpError;
pub use reader::{TcpReader, TcpReaderConfig};
pub use settings::SettingsError;

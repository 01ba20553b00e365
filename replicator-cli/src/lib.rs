//! The `replicator` command-line tool as a library: the configuration (the C#
//! Replicator's `appsettings.yaml`, read as it is), the wiring that turns it
//! into a checkpoint store, a reader, transforms, a sink and a pipeline
//! ([`app`]), the status server, and one module per command. The
//! `replicator` binary only parses its arguments and calls into here, so
//! configuration and wiring are tested without starting a process.
//!
//! ```
//! use std::path::Path;
//!
//! use replicator_cli::config::{Config, StoreConfig};
//!
//! let yaml = "
//! replicator:
//!   reader:
//!     connectionString: esdb://source:2113?tls=false
//!   sink:
//!     connectionString: esdb://target:2113?tls=false
//!     partitionCount: 4
//!   checkpoint:
//!     type: file
//!     path: ./checkpoint
//! ";
//! let config = Config::from_yaml(yaml, Path::new("appsettings.yaml"), []).unwrap();
//! assert_eq!(config.sink.partition_count(), 4);
//! assert!(matches!(config.checkpoint.store, StoreConfig::File { .. }));
//!
//! // Every key the tool does not know is an error naming it.
//! let typo = yaml.replace("partitionCount", "partitionCont");
//! let error = Config::from_yaml(&typo, Path::new("appsettings.yaml"), []).unwrap_err();
//! assert!(error.to_string().contains("replicator.sink.partitionCont"), "{error}");
//! ```
#![warn(missing_docs)]

pub mod app;
pub mod checkpoint_cmd;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod map_position_cmd;
pub mod projections_cmd;
pub mod report;
pub mod status;
pub mod subscriptions_cmd;
mod time;
pub mod verify_cmd;

//! Filters, transforms and partitioners between the reader and the sink: the
//! C# Replicator's `filters`, `transform` (`default`, `js`, `http`) and
//! `sink.partitioner`, as implementations of [`replicator_core::Transform`] and
//! [`replicator_core::Partitioner`].
#![warn(missing_docs)]

pub mod filter;
pub mod http;
pub mod js;
pub mod original;

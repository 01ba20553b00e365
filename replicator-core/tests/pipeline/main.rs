//! Integration tests of the pipeline with the in-memory parts.

mod behaviour;
mod health;
mod properties;
mod support;
mod transforms;

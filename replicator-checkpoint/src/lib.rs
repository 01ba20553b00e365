//! File and MongoDB checkpoint stores and chaser.chk seeding for replicator.
#![warn(missing_docs)]

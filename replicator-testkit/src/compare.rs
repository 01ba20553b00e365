//! Comparison of two servers.

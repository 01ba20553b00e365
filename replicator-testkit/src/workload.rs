//! Seeded workload generator.

//! The Weft stream worker: sources, the join, state and checkpoints, local mode, and the
//! traffic generator.

pub mod generate;
pub mod join;
pub mod local;
pub mod sinks;
pub mod sources;
pub mod state;

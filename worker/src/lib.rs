//! The Weft stream worker: sources, the join, the process stage, state and checkpoints, local mode, and the
//! traffic generator.

pub mod generate;
pub mod join;
pub mod local;
pub mod process;
pub mod replay;
pub mod sinks;
pub mod sources;
pub mod state;

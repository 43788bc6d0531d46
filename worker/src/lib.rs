//! The Weft stream worker: sources, the join, the process stage, state and checkpoints, the
//! stages over Kafka with their admin API and metrics, local mode, and the traffic generator.

pub mod admin;
pub mod generate;
pub mod join;
pub mod kafka;
pub mod local;
pub mod metrics;
pub mod process;
pub mod replay;
pub mod run;
pub mod sinks;
pub mod sources;
pub mod state;
pub mod time;

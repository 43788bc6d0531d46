//! The Weft operator: start-up checks, the child builders, and the controllers that reconcile
//! ProcessDefinitions and JoinPipelines.

pub mod builders;
pub mod conditions;
pub mod context;
pub mod definition;
pub mod error;
pub mod leader;
pub mod pipeline;
pub mod preflight;
pub mod topics;
pub mod workers;

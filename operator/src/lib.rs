//! The Weft operator. This release holds the start-up checks; the controllers that reconcile
//! ProcessDefinitions and JoinPipelines build on them.

pub mod preflight;

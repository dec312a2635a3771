//! The I/O shell: the store, the message sources and the sinks around the pure pipeline.
//!
//! No business decisions live here; every branch is about I/O succeeding or failing.

pub mod engine;
pub mod replay;
pub mod store;

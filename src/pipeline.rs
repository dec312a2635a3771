//! The pure core: from the bytes of one message to the exact reply it should produce.
//!
//! Nothing under `pipeline/` does I/O: no tokio, no sockets, no files, no clock, no randomness.
//! Time, ids and the current case are passed in; new state and planned mail are returned.
//! `tests/it/tidy.rs` checks that by reading the sources.

pub mod candidate;
pub mod case;
pub mod classify;
pub mod compose;
pub mod console;
pub mod decide;
pub mod extract;
pub mod features;
pub mod fleet;
pub mod learned;
pub mod parse;
pub mod render;
pub mod rules;
pub mod score;
pub mod snds;
pub mod sync;
pub mod webhook;
pub mod witness;

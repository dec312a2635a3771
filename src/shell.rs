//! The I/O shell: the store, the message sources and the sinks around the pure pipeline.
//!
//! No business decisions live here; every branch is about I/O succeeding or failing.

pub mod background;
pub mod classifier;
pub mod daemon;
pub mod dkim;
pub mod engine;
pub mod failpoint;
pub mod fleet;
pub mod imap;
pub mod instance;
pub mod logging;
pub mod oauth;
pub mod progress;
pub mod queue;
pub mod replay;
pub mod secret;
pub mod smtp;
pub mod store;
pub mod teach;
pub mod tls;
pub mod web;
pub mod webhook;
pub mod witness;

//! postmaster-bot runs a mail operator's postmaster inbox: it recognises Microsoft
//! sender-support mail, block-list bounces, JMRP and SNDS, keeps each delisting case in a
//! persistent state machine and drafts or sends the replies.
//!
//! The data flows one way:
//! bytes -> [`pipeline::parse`] -> [`pipeline::classify`] -> [`pipeline::case`] ->
//! [`pipeline::decide`] -> [`pipeline::render`] -> [`pipeline::compose`] ->
//! [`shell::store`] (outbox) -> delivery.
//!
//! Everything under [`pipeline`] is pure: no I/O, no clock, no randomness. [`shell`] holds
//! the adapters (the SQLite store, replay) and [`shell::engine`] strings the stages together.

pub mod clock;
pub mod config;
pub mod pipeline;
pub mod shell;

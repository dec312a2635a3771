//! The one integration-test binary: corpus, snapshots, the command line and code tidiness.

mod browser;
mod cli;
mod console;
mod corpus;
mod cyrus;
mod dkim;
mod fake_imap;
mod faults;
mod fleet;
mod guards;
mod hostile;
mod learned;
mod live;
mod oauth;
mod rule_cost;
mod snapshots;
mod state;
mod support;
mod tidy;
mod webhook;

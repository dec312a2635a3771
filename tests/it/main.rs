//! The one integration-test binary: corpus, snapshots, the command line and code tidiness.

mod cli;
mod corpus;
mod faults;
mod guards;
mod live;
mod snapshots;
mod support;
mod tidy;

//! Test harness: the test kit (`testkit`: the real `grandstand` binary on port 0 against a
//! chosen backend, typed requests, the version-line checker) plus the clients and scenarios
//! these end-to-end tests share.
#![allow(dead_code)]

pub mod clients;
pub mod proxy;
pub mod scenarios;
pub mod viewers;

pub use testkit::app::{run_to_completion, REDIS_URL};
pub use testkit::{eventually, App, Backend, VersionLine};

//! Quarry: find what is eating the CPU on a Linux server, see through hiding,
//! and remove cryptominers for good.
//!
//! Data flows one way: [`collect`] → [`detect`] → [`report`] (and, later,
//! respond). Every read of the machine goes through [`host::Host`].

pub mod collect;
pub mod detect;
pub mod escape;
pub mod fuzz;
pub mod host;
pub mod report;
pub mod respond;
pub mod rules;
pub mod scan;
pub mod watch;

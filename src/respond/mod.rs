//! `quarry fix`, `quarry restore`, `quarry cases`: plan → journal → act →
//! verify → restore.
//!
//! - [`plan`]: from findings to a plan (what is proven, what is protected, the
//!   restarters linked by evidence);
//! - [`execute`]: freeze, evidence, kill, unmount, edit, quarantine, each step
//!   journaled before it is done;
//! - [`restore`]: undo a case, trusting nothing but the case itself;
//! - [`case`]: the case folder and its journal;
//! - [`allowlist`]: what is never touched;
//! - [`safe_fs`]: every change to the file system, through descriptors.
//!
//! Never touched: PID 1, kernel threads, Quarry itself and its ancestors, and
//! anything the allowlist names. See docs/FIX.md.

pub mod allowlist;
pub mod case;
pub mod execute;
pub mod plan;
pub mod restore;
pub mod safe_fs;

pub use allowlist::Allowlist;
pub use execute::{execute, Outcome};
pub use plan::{describe, plan, FixOptions, Plan};
pub use restore::{cases, restore};

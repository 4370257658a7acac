//! Kernel modules: module files on disk, and the loaded-module views.
//!
//! Files: a bounded walk of the places malware drops modules, identifying each
//! candidate natively (what `file` prints) and reading its `.modinfo`,
//! compressed modules included (xz, zstd and gzip are decoded in pure Rust).
//!
//! Loaded modules, from independent views that a module unlinking itself from
//! the kernel's list does not clean up (shared/ioc-notes.md, tested on Debian
//! 6.1 and 6.12 kernels): `/proc/modules`, `/sys/module/*/initstate`, module
//! tags in `/proc/kallsyms`, tracefs `available_filter_functions`,
//! `/proc/vmallocinfo`, the taint mask and the kernel log.
//!
//! - [`walk`]: the bounded, parallel walk of the places modules are dropped;
//! - [`identify`]: what a candidate file is (ELF type, `.modinfo`, compression);
//! - [`place`]: where it lies and who put it there (tree, DKMS, build, package,
//!   signer, kernel release);
//! - [`cache`]: what was judged, remembered between scans by inode and times;
//! - [`loaded`]: the loaded-module views and their disagreements.

pub mod cache;
mod identify;
mod loaded;
pub mod place;
mod walk;

pub use identify::*;
pub use loaded::*;
pub use walk::*;

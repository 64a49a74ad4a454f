//! # janitor: reaps what is orphaned
//!
//! Watches worker heartbeats and the session registry. When a worker dies
//! its sessions are restarted elsewhere or ended (per their spec); a worker
//! that still runs a session the registry gave away is fenced; ended entries
//! are purged after their retention; sessions past their max lifetime are
//! ended as a backstop.
//!
//! The logic is pure and takes `now` as an argument: [`Liveness`] (which
//! workers are alive), [`Reconciler`] (what to repair) and [`Core`] (both,
//! behind one owner). [`run`] is the thin async driver around them; every
//! registry write it makes is a compare-and-set, so several janitors can run
//! at once and only the winner of each write publishes its event.

pub mod config;
pub mod core;
pub mod driver;
pub mod error;
pub mod liveness;
pub mod reconcile;

#[cfg(test)]
mod testkit;

pub use crate::config::Config;
pub use crate::core::{Core, Plan};
pub use crate::driver::run;
pub use crate::error::JanitorError;
pub use crate::liveness::{Candidate, Liveness, Observed, WorkerStatus};
pub use crate::reconcile::{Action, Reconciler, Snapshot, Timing};

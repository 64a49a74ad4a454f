//! The worker's logic with state, as plain structs that take `now` as an
//! argument. No IO, no clocks, no tasks: the drivers in the crate root feed
//! them and act on what they return.

pub mod clock;
pub mod cluster;
pub mod directory;
pub mod input;
pub mod lease;
pub mod listing;
pub mod session;

pub use clock::SessionClock;
pub use cluster::{Cluster, Placement};
pub use directory::{Directory, Refusal};
pub use lease::{Lease, LeaseGate, LeaseStatus};
pub use session::SessionCore;

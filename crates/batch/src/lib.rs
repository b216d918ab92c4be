//! What one godwit batch does to rows, below the scheduler that decides when it runs.
//!
//! The scheduler (`godwit-sched`) claims a key range, opens the transaction and commits it;
//! this crate does the rest, for every kind of step through one interface ([`Work`]): a SQL
//! step's statement (`work.rs`), a transform step's read–transform–fit–write
//! (`transform.rs`; optimistic, its read and transform before the transaction and its checked
//! writes in it, `transform/optimistic.rs`), a copy's read–fit–write (`copy/`). Beside them: the key walk that finds
//! batch ranges (`walk.rs`), slices of wide batches (`slices.rs`), savepoints that set refused
//! rows aside (`savepoint.rs`, `refused.rs`), fitting values to their columns (`fit.rs`),
//! the key and column checks a plan must pass (`key.rs`), compiling a step's transform
//! (`script.rs`), and `godwit verify` (`verify.rs`).
//!
//! This crate knows nothing of claims, leases or the state tables.
#![deny(missing_docs)]

mod copy;
mod error;
mod fit;
mod key;
mod refused;
mod savepoint;
mod script;
mod slices;
mod transform;
mod verify;
mod walk;
mod work;

pub use crate::error::{BatchError, Error, ErrorKind};
pub use crate::key::{columns_target_lacks, key_problem, KeyProblem};
pub use crate::refused::DeadLetter;
pub use crate::script::build_transform;
pub use crate::transform::RowChange;
pub use crate::verify::{verify, RangeDifference, SetAside, StepCheck};
pub use crate::walk::{open_walker, KeyRange, KeyWalk};
pub use crate::work::{needs_autocommit, Started, Work, Written};

//! Where a godwit plan is judged against its databases before anything changes.
//!
//! [`judge`] returns every *problem* (the plan cannot run as written: a missing table or key
//! index, chunked SQL without `:start`/`:end`, a transform that does not load, …) and every
//! *finding* (advice about speed or safety that leaves the plan valid) in one [`Judgement`].
//! `godwit check` prints it; `run` and `submit` (in `godwit-sched`) judge the plan by the same
//! rules, through [`judge_before_run`] over the connection they already hold, and refuse it on
//! any problem, so the two cannot drift apart. The one difference: `check` also tries the
//! plan's statements (the key walk's first query, each batch statement on an empty range),
//! which a run leaves to its first batch, where a failure names the key range and the
//! database's code (and where other processes may be at work on the same tables).
//!
//! Judging changes no data: the one statement it tries runs on an empty key range inside a
//! transaction it rolls back. A step that comes after a one-off `sql` step is judged only on
//! what the plan itself says, because what the one-off step creates may not exist yet; the
//! scheduler asks the database about it when the step starts.
#![deny(missing_docs)]

pub mod ensure;
mod findings;
mod judge;
mod judgement;
mod latency;
mod probes;
mod replicas;
mod script;

pub use crate::judge::{judge, judge_before_run};
pub use crate::judgement::{Finding, Judgement, Problem, Refusal};

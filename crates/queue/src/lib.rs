//! Dispatch of jobs from the gateway to GPU workers through Redis, with Postgres (through
//! `huaxian-store`) as the source of truth. ARCHITECTURE.md ("Dispatch") says why per-user
//! lists and a round-robin ring stand in for streams.
//!
//! Invariants:
//! - A job's row is committed before its dispatch entry exists ([`Dispatcher::submit`]).
//! - Redis only says who should try a job next; the guarded `queued → running` transition in
//!   Postgres decides who gets it, so duplicate entries are dropped at claim.
//! - A queued job missing from Redis (restart, flush) is put back by [`Dispatcher::reconcile`],
//!   which also takes back jobs whose lease ran out.
//! - Within a lane users are served round-robin; relax yields to fast except on every
//!   `relax_every`-th claim.

mod dispatch;
mod events;
mod notes;
mod position;
mod scripts;
mod submit;

pub use dispatch::{Claimed, Config, DispatchError, Dispatcher, Done, ReconcileReport, WorkerSpec};
pub use events::{Delivery, EventReader, JobResult, Outcome, Progress, ResultImage, PROGRESS_KEPT};
pub use position::Position;

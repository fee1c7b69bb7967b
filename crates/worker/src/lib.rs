//! `huaxian worker`: the process on each GPU machine (or CPU, for tests and small setups)
//! that turns queued jobs into images.
//!
//! It keeps its models resident, claims batches of compatible jobs from the dispatch queue
//! ([`huaxian_queue`]), renders them with the engine ([`huaxian_engine`]), writes the PNGs
//! to the blob store, completes the jobs in Postgres in one transaction, and publishes
//! progress and results for the gateway. [`plan`] says what each kind of job renders;
//! [`render`] runs a batch and splits it when the device runs out of memory; [`run`] is the
//! loop around them, with leases, cancellation and a graceful stop.

pub mod control;
pub mod expand;
pub mod metrics;
pub mod plan;
pub mod render;
pub mod renderer;
pub mod run;
pub mod settings;

pub use run::{attempt_folder, Models, Worker};
pub use settings::{ExpanderSettings, ModelSettings, Settings, Strengths, WorkerSettings};

//! The gateway's Prometheus metrics.

use prometheus::{
    exponential_buckets, GaugeVec, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry,
};

/// Everything `/metrics` shows for the gateway.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Interactions by command (or button action) and outcome.
    pub interactions: IntCounterVec,
    /// Seconds from receiving an interaction to Discord accepting our first response.
    pub ack_seconds: Histogram,
    /// Discord API errors by JSON error code (or HTTP status when there is none).
    pub discord_errors: IntCounterVec,
    /// Jobs waiting per lane, sampled from the store.
    pub queue_depth: IntGaugeVec,
    /// Age of the oldest waiting job per lane, in seconds.
    pub queue_oldest: GaugeVec,
    /// Wait (queued to started) and run (started to succeeded) times of the last hour, by
    /// `quantile` (0.5, 0.95), in seconds.
    pub wait_seconds: GaugeVec,
    pub run_seconds: GaugeVec,
    /// Workers that heartbeat within the last 30 s.
    pub workers_alive: IntGauge,
    /// Fast-lane refunds in the last hour.
    pub refunds_last_hour: IntGauge,
    /// Seconds from a result event being read to the result showing in Discord.
    pub delivery_seconds: Histogram,
    /// Results delivered, by how: `edit` (the interaction's message), `channel` (a channel
    /// message after the token expired), `failed` (given up).
    pub deliveries: IntCounterVec,
}

impl Metrics {
    /// Registers the metrics in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let interactions = IntCounterVec::new(
            Opts::new(
                "huaxian_gateway_interactions_total",
                "Interactions by command and outcome",
            ),
            &["command", "outcome"],
        )
        .expect("valid metric");
        let ack_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "huaxian_gateway_ack_seconds",
                "Time from receiving an interaction to Discord accepting the first response",
            )
            .buckets(exponential_buckets(0.005, 2.0, 12).expect("valid buckets")),
        )
        .expect("valid metric");
        let discord_errors = IntCounterVec::new(
            Opts::new(
                "huaxian_gateway_discord_errors_total",
                "Discord API errors by code",
            ),
            &["code"],
        )
        .expect("valid metric");
        let queue_depth = IntGaugeVec::new(
            Opts::new("huaxian_gateway_queue_depth", "Jobs waiting, per lane"),
            &["lane"],
        )
        .expect("valid metric");
        let delivery_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "huaxian_gateway_result_delivery_seconds",
                "Time from reading a result event to showing it in Discord",
            )
            .buckets(exponential_buckets(0.01, 2.0, 14).expect("valid buckets")),
        )
        .expect("valid metric");
        let deliveries = IntCounterVec::new(
            Opts::new(
                "huaxian_gateway_results_total",
                "Results delivered, by path",
            ),
            &["path"],
        )
        .expect("valid metric");
        let queue_oldest = GaugeVec::new(
            Opts::new(
                "huaxian_gateway_queue_oldest_seconds",
                "Age of the oldest waiting job, per lane",
            ),
            &["lane"],
        )
        .expect("valid metric");
        let wait_seconds = GaugeVec::new(
            Opts::new(
                "huaxian_gateway_job_wait_seconds",
                "Queued-to-started time of the last hour's jobs, by quantile",
            ),
            &["quantile"],
        )
        .expect("valid metric");
        let run_seconds = GaugeVec::new(
            Opts::new(
                "huaxian_gateway_job_run_seconds",
                "Started-to-succeeded time of the last hour's jobs, by quantile",
            ),
            &["quantile"],
        )
        .expect("valid metric");
        let workers_alive = IntGauge::new(
            "huaxian_gateway_workers_alive",
            "Workers that heartbeat within the last 30 s",
        )
        .expect("valid metric");
        let refunds_last_hour = IntGauge::new(
            "huaxian_gateway_refunds_last_hour",
            "Fast-lane refunds in the last hour",
        )
        .expect("valid metric");
        for collector in [
            Box::new(interactions.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(ack_seconds.clone()),
            Box::new(discord_errors.clone()),
            Box::new(queue_depth.clone()),
            Box::new(delivery_seconds.clone()),
            Box::new(deliveries.clone()),
            Box::new(queue_oldest.clone()),
            Box::new(wait_seconds.clone()),
            Box::new(run_seconds.clone()),
            Box::new(workers_alive.clone()),
            Box::new(refunds_last_hour.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Self {
            registry,
            interactions,
            ack_seconds,
            discord_errors,
            queue_depth,
            delivery_seconds,
            deliveries,
            queue_oldest,
            wait_seconds,
            run_seconds,
            workers_alive,
            refunds_last_hour,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

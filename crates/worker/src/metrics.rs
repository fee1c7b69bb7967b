//! The worker's Prometheus metrics, all prefixed `huaxian_worker_`.

use prometheus::{
    exponential_buckets, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec,
    IntGauge, Opts, Registry,
};

/// Every metric the worker exports.
pub struct Metrics {
    pub registry: Registry,
    /// Jobs by outcome: succeeded, failed, retried, cancelled, lease_lost, released.
    pub jobs: IntCounterVec,
    /// Seconds from claim to result, per job.
    pub run_seconds: Histogram,
    /// Seconds per denoising step of a batch.
    pub step_seconds: Histogram,
    /// Jobs per rendered batch.
    pub batch_size: Histogram,
    /// Images stored.
    pub images: IntCounter,
    /// Images per second of the last batch.
    pub images_per_second: Gauge,
    /// Seconds each model took to load.
    pub model_load_seconds: GaugeVec,
    /// Memory in use: the GPU's on CUDA workers, process resident memory on CPU ones.
    pub memory_bytes: IntGauge,
    /// Jobs whose lease was lost while rendering (their output was discarded).
    pub lease_losses: IntCounter,
    /// Jobs in hand.
    pub busy: IntGauge,
}

impl Metrics {
    pub fn new(worker_id: &str) -> prometheus::Result<Self> {
        let registry = Registry::new_custom(
            Some("huaxian_worker".into()),
            Some([("worker".to_string(), worker_id.to_string())].into()),
        )?;
        let jobs = IntCounterVec::new(Opts::new("jobs_total", "Jobs by outcome"), &["outcome"])?;
        let run_seconds = Histogram::with_opts(
            HistogramOpts::new("job_run_seconds", "Seconds from claim to result")
                .buckets(exponential_buckets(0.25, 2.0, 12)?),
        )?;
        let step_seconds = Histogram::with_opts(
            HistogramOpts::new("step_seconds", "Seconds per denoising step")
                .buckets(exponential_buckets(0.005, 2.0, 14)?),
        )?;
        let batch_size = Histogram::with_opts(
            HistogramOpts::new("batch_size", "Jobs per rendered batch")
                .buckets(vec![1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0]),
        )?;
        let images = IntCounter::new("images_total", "Images stored")?;
        let images_per_second =
            Gauge::new("images_per_second", "Images per second of the last batch")?;
        let model_load_seconds = GaugeVec::new(
            Opts::new("model_load_seconds", "Seconds each model took to load"),
            &["model"],
        )?;
        let memory_bytes = IntGauge::new(
            "device_memory_bytes",
            "Memory in use: the GPU's (NVML) on CUDA workers, resident memory on CPU",
        )?;
        let lease_losses = IntCounter::new("lease_losses_total", "Leases lost while rendering")?;
        let busy = IntGauge::new("jobs_in_hand", "Jobs the worker holds now")?;

        registry.register(Box::new(jobs.clone()))?;
        registry.register(Box::new(run_seconds.clone()))?;
        registry.register(Box::new(step_seconds.clone()))?;
        registry.register(Box::new(batch_size.clone()))?;
        registry.register(Box::new(images.clone()))?;
        registry.register(Box::new(images_per_second.clone()))?;
        registry.register(Box::new(model_load_seconds.clone()))?;
        registry.register(Box::new(memory_bytes.clone()))?;
        registry.register(Box::new(lease_losses.clone()))?;
        registry.register(Box::new(busy.clone()))?;
        Ok(Self {
            registry,
            jobs,
            run_seconds,
            step_seconds,
            batch_size,
            images,
            images_per_second,
            model_load_seconds,
            memory_bytes,
            lease_losses,
            busy,
        })
    }

    /// Counts one job's outcome.
    pub fn outcome(&self, outcome: &str) {
        self.jobs.with_label_values(&[outcome]).inc();
    }

    /// Refreshes the memory gauge from `memory`.
    pub fn sample_memory(&self, memory: &MemorySource) {
        if let Some(bytes) = memory.used_bytes() {
            self.memory_bytes.set(bytes);
        }
    }
}

/// Where the worker's memory in use is read: the GPU's, through NVML (the driver's
/// management library, loaded at run time), or the process's resident memory on CPU
/// workers and where NVML is missing.
pub enum MemorySource {
    Gpu {
        /// NVML's table of loaded functions is large; boxed so the enum is not.
        nvml: Box<nvml_wrapper::Nvml>,
        index: u32,
    },
    Process,
}

impl MemorySource {
    /// For a worker whose models run on CUDA device `cuda`, if any.
    pub fn for_device(cuda: Option<usize>) -> Self {
        let Some(index) = cuda else {
            return Self::Process;
        };
        match nvml_wrapper::Nvml::init() {
            Ok(nvml) => Self::Gpu {
                nvml: Box::new(nvml),
                index: index as u32,
            },
            Err(error) => {
                tracing::warn!(%error, "NVML unavailable; reporting process memory instead");
                Self::Process
            }
        }
    }

    /// Bytes in use now: on the GPU, its used memory (all processes, as nvidia-smi shows).
    pub fn used_bytes(&self) -> Option<i64> {
        match self {
            Self::Gpu { nvml, index } => {
                let info = nvml.device_by_index(*index).ok()?.memory_info().ok()?;
                i64::try_from(info.used).ok()
            }
            Self::Process => resident_bytes(),
        }
    }
}

/// The process's resident memory, from `/proc/self/statm`.
pub fn resident_bytes() -> Option<i64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: i64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * if page > 0 { page } else { 4096 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_workers_report_resident_memory() {
        let source = MemorySource::for_device(None);
        assert!(matches!(source, MemorySource::Process));
        let bytes = source.used_bytes().unwrap();
        assert!(bytes > 1 << 20, "{bytes}");
    }
}

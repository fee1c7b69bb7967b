//! The render thread: one long-lived OS thread owns the models and runs every render.
//!
//! libtorch's CPU kernels parallelise over a thread team that belongs to the calling
//! thread. Rendering from tokio's blocking pool, which hands each call to whichever thread
//! is free, starts a new team per thread and leaves the old ones contending for the cores
//! (measured here: a 4-image render took four times as long as on one steady thread). One
//! thread keeps one team warm, and no lock is needed around the models.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;

use tokio::sync::oneshot;

use crate::run::Models;

type Task = Box<dyn FnOnce(&Models) + Send>;

/// Handle on the render thread; cheap to clone. The thread ends when every handle is
/// dropped.
#[derive(Clone)]
pub struct Renderer {
    tasks: mpsc::Sender<Task>,
}

/// What the render thread loaded, as the rest of the worker knows it.
#[derive(Clone, Debug, Default)]
pub struct Resident {
    /// The diffusion models, by name.
    pub models: Vec<Loaded>,
    /// Whether an expander is loaded for `--expand`.
    pub expander: bool,
}

/// A model on the render thread.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub name: String,
    /// The device, in words.
    pub device: String,
    /// The CUDA device index, for models on a GPU.
    pub cuda: Option<usize>,
    pub load_seconds: f64,
}

/// The render thread is gone, or the work panicked.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RenderCrash(pub String);

impl Renderer {
    /// Starts the thread, makes the models on it with `load`, and returns once they are
    /// loaded, with what each is. The models are loaded on the thread that renders with
    /// them: loaded on another thread and moved, the same renders ran 2–3 times slower on
    /// the CPU here.
    pub async fn start<F>(load: F) -> anyhow::Result<(Self, Resident)>
    where
        F: FnOnce() -> anyhow::Result<Models> + Send + 'static,
    {
        let (tasks, queue) = mpsc::channel::<Task>();
        let (ready, loaded) = oneshot::channel();
        std::thread::Builder::new()
            .name("render".into())
            .spawn(move || {
                let models = match catch_unwind(AssertUnwindSafe(load)) {
                    Ok(Ok(models)) => models,
                    Ok(Err(error)) => {
                        let _ = ready.send(Err(error));
                        return;
                    }
                    Err(_) => {
                        let _ = ready.send(Err(anyhow::anyhow!("loading the models panicked")));
                        return;
                    }
                };
                let mut described: Vec<Loaded> = models
                    .diffusion
                    .iter()
                    .map(|(name, model)| Loaded {
                        name: name.clone(),
                        device: format!("{:?}", model.device),
                        cuda: match model.device {
                            tch::Device::Cuda(index) => Some(index),
                            _ => None,
                        },
                        load_seconds: model.load_seconds,
                    })
                    .collect();
                described.sort_by(|a, b| a.name.cmp(&b.name));
                let _ = ready.send(Ok(Resident {
                    models: described,
                    expander: models.expander.is_some(),
                }));
                for task in queue {
                    task(&models);
                }
            })?;
        let described = loaded
            .await
            .map_err(|_| anyhow::anyhow!("the render thread stopped while loading"))??;
        Ok((Self { tasks }, described))
    }

    /// Runs `work` on the render thread and waits for its result without blocking the
    /// async runtime. A panic in `work` is caught and reported; the thread goes on.
    pub async fn run<R, F>(&self, work: F) -> Result<R, RenderCrash>
    where
        R: Send + 'static,
        F: FnOnce(&Models) -> R + Send + 'static,
    {
        let (reply, result) = oneshot::channel();
        let task: Task = Box::new(move |models| {
            let outcome = catch_unwind(AssertUnwindSafe(|| work(models)));
            let _ = reply.send(outcome.map_err(|payload| {
                payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "the render panicked".into())
            }));
        });
        self.tasks
            .send(task)
            .map_err(|_| RenderCrash("the render thread has stopped".into()))?;
        match result.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(message)) => Err(RenderCrash(format!("the render panicked: {message}"))),
            Err(_) => Err(RenderCrash("the render thread has stopped".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_on_one_thread_and_survives_a_panic() {
        let (renderer, loaded) = Renderer::start(|| Ok(Models::default())).await.unwrap();
        assert!(loaded.models.is_empty() && !loaded.expander);
        let first = renderer.run(|_| std::thread::current().id()).await.unwrap();
        let crash = renderer
            .run(|_| -> () { panic!("boom") })
            .await
            .unwrap_err();
        assert!(crash.to_string().contains("boom"), "{crash}");
        let second = renderer
            .run(|models| (std::thread::current().id(), models.diffusion.len()))
            .await;
        assert_eq!(second.unwrap(), (first, 0));
    }

    #[tokio::test]
    async fn a_failed_load_is_reported() {
        let error = Renderer::start(|| anyhow::bail!("model `x`: no such folder"))
            .await
            .err()
            .unwrap();
        assert!(error.to_string().contains("no such folder"), "{error}");
    }
}

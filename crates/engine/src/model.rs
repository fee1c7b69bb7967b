//! Loading a whole Stable Diffusion model: a diffusers folder or a single-file checkpoint.

use std::path::{Path, PathBuf};
use std::time::Instant;

use tch::{Device, Kind};

use crate::models::clip::{ClipConfig, ClipTextEncoder};
use crate::models::config::read_json;
use crate::models::unet::{UNet, UNetConfig};
use crate::models::vae::{Vae, VaeConfig};
use crate::sampler::SchedulerConfig;
use crate::single_file;
use crate::tokenizer::ClipTokenizer;
use crate::weights::{refuse_pickle, SafetensorsFile, Weights};
use crate::{Error, Result};

/// Where and how to load a model.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub device: Device,
    /// The dtype the UNet and text encoder compute in.
    pub kind: Kind,
    /// For single-file checkpoints: a diffusers folder whose configs, tokenizer and scheduler
    /// override what is inferred from the file.
    pub config_dir: Option<PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: Device::Cpu,
            kind: Kind::Float,
            config_dir: None,
        }
    }
}

/// Reads a device (`cpu`, `cuda`, `cuda:N`) and a dtype (`f32`, `f16`, `bf16`), checking
/// that the device exists and that half precision is not asked of the CPU.
pub fn parse_device_and_dtype(device: &str, dtype: &str) -> Result<(Device, Kind)> {
    let bad = |m: String| Err(Error::InvalidRequest(m));
    let parsed = match device {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Device::Cuda(n),
            _ => return bad(format!("unknown device `{other}`: use cpu, cuda or cuda:N")),
        },
    };
    if let Device::Cuda(n) = parsed {
        let available = tch::Cuda::device_count() as usize;
        if n >= available {
            return bad(format!(
                "device `{device}` is not available: this machine's libtorch sees {available} \
                 CUDA device(s); use cpu or a CUDA build of libtorch"
            ));
        }
    }
    let kind = match dtype {
        "f32" | "fp32" | "float32" => Kind::Float,
        "f16" | "fp16" | "float16" => Kind::Half,
        "bf16" | "bfloat16" => Kind::BFloat16,
        other => return bad(format!("unknown dtype `{other}`: use f32, f16 or bf16")),
    };
    if kind != Kind::Float && parsed == Device::Cpu {
        return bad(format!("dtype {dtype} needs a GPU; on the CPU use f32"));
    }
    Ok((parsed, kind))
}

/// A loaded model, ready to render.
pub struct StableDiffusion {
    pub name: String,
    pub tokenizer: ClipTokenizer,
    /// `None` once released with [`StableDiffusion::release_text_encoder`].
    pub text_encoder: Option<ClipTextEncoder>,
    pub unet: UNet,
    pub vae: Vae,
    pub scheduler: SchedulerConfig,
    pub device: Device,
    pub kind: Kind,
    /// The VAE's own dtype: f32 when its config forces the upcast.
    pub vae_kind: Kind,
    /// A short hash of the weights for PNG metadata, as A1111 shows it.
    pub hash: String,
    /// Seconds spent loading.
    pub load_seconds: f64,
}

impl StableDiffusion {
    /// Loads `path`: a diffusers folder (with `model_index.json`) or a `.safetensors` file.
    pub fn load(path: &Path, options: &LoadOptions) -> Result<Self> {
        let started = Instant::now();
        if !path.exists() {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
            ));
        }
        let mut model = if path.is_dir() {
            load_folder(path, options)?
        } else {
            load_single_file(path, options)?
        };
        model.load_seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            model = %model.name,
            seconds = format!("{:.2}", model.load_seconds),
            "model loaded"
        );
        if model.device == Device::Cpu {
            if let Some(level) = crate::cpu::mkl_dispatch_level() {
                tracing::info!(
                    mkl_by_features = crate::cpu::mkl_override_active(),
                    mkl_level = level,
                    "CPU matrix kernels: MKL chooses by CPU features when true, as it would \
                     on its own when false"
                );
            }
        }
        Ok(model)
    }

    /// Frees the text encoder. A one-shot render encodes its prompts first
    /// ([`crate::pipeline::encode`]) and releases it, so it is not resident beside the UNet.
    pub fn release_text_encoder(&mut self) {
        self.text_encoder = None;
    }

    pub(crate) fn text_encoder(&self) -> Result<&ClipTextEncoder> {
        self.text_encoder.as_ref().ok_or_else(|| {
            Error::InvalidRequest(
                "the text encoder was released; encode prompts before releasing it".into(),
            )
        })
    }

    /// Pixels per latent cell along each axis.
    pub fn downscale_factor(&self) -> i64 {
        self.vae.config().downscale_factor()
    }
}

fn vae_kind(config: &VaeConfig, kind: Kind) -> Kind {
    if config.force_upcast && kind == Kind::Half {
        Kind::Float
    } else {
        kind
    }
}

fn load_folder(dir: &Path, options: &LoadOptions) -> Result<StableDiffusion> {
    let index = dir.join("model_index.json");
    if !index.is_file() {
        return Err(Error::bad_model(
            dir,
            "not a diffusers folder: model_index.json is missing (a single-file checkpoint \
             should be passed as the .safetensors file itself)",
        ));
    }
    let component = |name: &str| {
        let path = dir.join(name);
        if path.is_dir() {
            Ok(path)
        } else {
            Err(Error::bad_model(
                dir,
                format!("component folder `{name}/` is missing"),
            ))
        }
    };

    let tokenizer = ClipTokenizer::from_dir(&component("tokenizer")?)?;
    let scheduler =
        SchedulerConfig::from_file(&component("scheduler")?.join("scheduler_config.json"))?;

    let text_dir = component("text_encoder")?;
    let clip_config: ClipConfig = read_json(&text_dir.join("config.json"))?;
    let text_encoder = {
        let weights = Weights::open(
            &weight_file(&text_dir, "model", options.kind)?,
            options.kind,
            options.device,
        )?
        .keeping_half();
        ClipTextEncoder::load(clip_config, &weights)?
    };

    let unet_dir = component("unet")?;
    let unet_config: UNetConfig = read_json(&unet_dir.join("config.json"))?;
    let unet_file = weight_file(&unet_dir, "diffusion_pytorch_model", options.kind)?;
    let hash = short_hash(&unet_file)?;
    let unet = {
        let weights = Weights::open(&unet_file, options.kind, options.device)?.keeping_half();
        UNet::load(unet_config, &weights)?
    };

    let vae_dir = component("vae")?;
    let vae_config: VaeConfig = read_json(&vae_dir.join("config.json"))?;
    let vae_kind = vae_kind(&vae_config, options.kind);
    let vae = {
        let weights = Weights::open(
            &weight_file(&vae_dir, "diffusion_pytorch_model", vae_kind)?,
            vae_kind,
            options.device,
        )?
        .keeping_half();
        Vae::load(vae_config, &weights)?
    };

    Ok(StableDiffusion {
        name: display_name(dir),
        tokenizer,
        text_encoder: Some(text_encoder),
        unet,
        vae,
        scheduler,
        device: options.device,
        kind: options.kind,
        vae_kind,
        hash,
        load_seconds: 0.0,
    })
}

/// Picks a component's weight file: the `.fp16` variant when computing in half precision and
/// it exists, else the plain file, else whichever exists. Sharded files are found by their
/// index. Pickle files are refused with the reason.
fn weight_file(dir: &Path, stem: &str, kind: Kind) -> Result<PathBuf> {
    let plain = [
        format!("{stem}.safetensors"),
        format!("{stem}.safetensors.index.json"),
    ];
    let half = [
        format!("{stem}.fp16.safetensors"),
        format!("{stem}.safetensors.index.fp16.json"),
    ];
    let order: Vec<&String> = if kind == Kind::Float {
        plain.iter().chain(half.iter()).collect()
    } else {
        half.iter().chain(plain.iter()).collect()
    };
    for name in order {
        let path = dir.join(name);
        if path.is_file() {
            return Ok(path);
        }
    }
    for pickle in [
        format!("{stem}.bin"),
        format!("{stem}.fp16.bin"),
        format!("{stem}.ckpt"),
    ] {
        let path = dir.join(pickle);
        if path.is_file() {
            refuse_pickle(&path)?;
        }
    }
    Err(Error::bad_model(
        dir,
        format!("no weights: expected {stem}.safetensors or {stem}.fp16.safetensors"),
    ))
}

fn load_single_file(path: &Path, options: &LoadOptions) -> Result<StableDiffusion> {
    refuse_pickle(path)?;
    let file = SafetensorsFile::open(path)?;
    let family = single_file::detect_family(&file)?;
    tracing::debug!(?family, "single-file checkpoint");

    let (unet_config, vae_config, clip_config, tokenizer, scheduler) = match &options.config_dir {
        Some(dir) => (
            read_json::<UNetConfig>(&dir.join("unet/config.json"))?,
            read_json::<VaeConfig>(&dir.join("vae/config.json"))?,
            read_json::<ClipConfig>(&dir.join("text_encoder/config.json"))?,
            ClipTokenizer::from_dir(&dir.join("tokenizer"))?,
            SchedulerConfig::from_file(&dir.join("scheduler/scheduler_config.json"))?,
        ),
        None => {
            let (unet, vae, clip) = single_file::infer_configs(&file, family)?;
            let (tokenizer, scheduler) = crate::bundled::tokenizer_and_scheduler(family)?;
            (unet, vae, clip, tokenizer, scheduler)
        }
    };
    let unet_aliases = single_file::unet_aliases(&file, &unet_config)?;
    let vae_aliases = single_file::vae_aliases(&file, &vae_config);
    let clip_aliases = single_file::clip_aliases(&file, family);
    let hash = short_hash(path)?;
    let files = || SafetensorsFile::open(path).map(|f| vec![f]);

    let text_encoder = ClipTextEncoder::load(
        clip_config,
        &Weights::from_files(files()?, options.kind, options.device)
            .with_aliases(clip_aliases)
            .keeping_half(),
    )?;
    let unet = UNet::load(
        unet_config,
        &Weights::from_files(files()?, options.kind, options.device)
            .with_aliases(unet_aliases)
            .keeping_half(),
    )?;
    let vae_kind = vae_kind(&vae_config, options.kind);
    let vae = Vae::load(
        vae_config,
        &Weights::from_files(files()?, vae_kind, options.device)
            .with_aliases(vae_aliases)
            .keeping_half(),
    )?;

    Ok(StableDiffusion {
        name: display_name(path),
        tokenizer,
        text_encoder: Some(text_encoder),
        unet,
        vae,
        scheduler,
        device: options.device,
        kind: options.kind,
        vae_kind,
        hash,
        load_seconds: 0.0,
    })
}

fn display_name(path: &Path) -> String {
    path.file_stem()
        .or_else(|| path.file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("model")
        .to_string()
}

/// The first 10 hex digits of a SHA-256 over the file's first and last MiB and its length:
/// cheap on multi-gigabyte files, stable for a given file.
fn short_hash(path: &Path) -> Result<String> {
    use std::io::{Read, Seek, SeekFrom};

    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut buf = vec![0u8; (len.min(1 << 20)) as usize];
    file.read_exact(&mut buf).map_err(|e| Error::io(path, e))?;
    let mut hasher = Fnv::default();
    hasher.write(&len.to_le_bytes());
    hasher.write(&buf);
    if len > 1 << 20 {
        file.seek(SeekFrom::Start(len - (1 << 20)))
            .map_err(|e| Error::io(path, e))?;
        file.read_exact(&mut buf).map_err(|e| Error::io(path, e))?;
        hasher.write(&buf);
    }
    Ok(format!("{:010x}", hasher.0 & 0xff_ffff_ffff))
}

/// FNV-1a, enough to tell model files apart in PNG metadata.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

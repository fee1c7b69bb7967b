//! Safetensors weights, memory-mapped and copied once onto the target device and dtype.
//!
//! A [`Weights`] holds one or more mmapped files (a component's single file, or the shards
//! listed in a `*.safetensors.index.json`). Model code asks for tensors by the diffusers name
//! through a [`WeightPath`] and states the shape it expects, so a broken file is reported with
//! the file, the tensor and what was expected rather than failing deep inside libtorch.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, Metadata, SafeTensorError};
use safetensors::SafeTensors;
use tch::{Device, Kind, Tensor};

use crate::{Error, Result};

/// One mmapped `.safetensors` file with its validated header.
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: Mmap,
    data_start: usize,
    metadata: Metadata,
}

impl SafetensorsFile {
    /// Maps `path` and validates its header: offsets must be contiguous and in bounds, and
    /// each tensor's byte length must match its dtype and shape.
    pub fn open(path: &Path) -> Result<Self> {
        refuse_pickle(path)?;
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len == 0 {
            return Err(Error::bad_model(path, "the file is empty"));
        }

        // SAFETY: the map is read-only; a file truncated underneath us while mapped is the one
        // hazard, the same that every mmap-based loader (diffusers included) accepts.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let (header_len, metadata) = SafeTensors::read_metadata(&mmap)
            .map_err(|e| Error::bad_model(path, describe_header_error(&e)))?;

        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            mmap,
            data_start: 8 + header_len,
            metadata,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn names(&self) -> Vec<String> {
        self.metadata.tensors().into_keys().collect()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.metadata.info(name).is_some()
    }

    /// The dtype `name` is stored in, if present and a float type.
    pub fn stored_kind(&self, name: &str) -> Option<Kind> {
        self.metadata
            .info(name)
            .and_then(|info| stored_kind(info.dtype))
    }

    /// The stored shape of `name`, if present.
    pub fn shape(&self, name: &str) -> Option<Vec<i64>> {
        self.metadata
            .info(name)
            .map(|info| info.shape.iter().map(|&d| d as i64).collect())
    }

    /// Copies tensor `name` into a new tensor of `kind` on `device`. The bytes are read
    /// straight from the map, so the weights exist once in the file cache and once on the
    /// target, never a third time.
    pub fn load(&self, name: &str, kind: Kind, device: Device) -> Result<Tensor> {
        let info = self
            .metadata
            .info(name)
            .ok_or_else(|| Error::bad_model(&self.path, format!("tensor `{name}` is missing")))?;
        let stored = stored_kind(info.dtype).ok_or_else(|| {
            Error::bad_model(
                &self.path,
                format!(
                    "tensor `{name}` has dtype {:?}; weights must be F32, F16 or BF16",
                    info.dtype
                ),
            )
        })?;
        let shape: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
        let (begin, end) = info.data_offsets;
        let bytes = &self.mmap[self.data_start + begin..self.data_start + end];

        let element = info.dtype.size();
        let tensor = if (bytes.as_ptr() as usize).is_multiple_of(element) {
            let strides = contiguous_strides(&shape);
            // SAFETY: `bytes` is in bounds (the header was validated against the file length),
            // aligned for the element type, and outlives the borrowed tensor, which is dropped
            // at the end of this block after the owning copy below is made.
            let view = unsafe {
                Tensor::f_from_blob(bytes.as_ptr(), &shape, &strides, stored, Device::Cpu)
            }?;
            convert_owned(&view, kind, device)?
        } else {
            let copy = Tensor::f_from_data_size(bytes, &shape, stored)?;
            copy.f_to_device(device)?.f_to_kind(kind)?
        };

        // The copy is made; let the kernel drop the mapped pages from our resident set, so a
        // model's weights are resident once, not once in the map and once in tensors.
        // SAFETY: the map is private and read-only, and no view into this range outlives the
        // block above; pages touched again are simply read back from the file.
        unsafe {
            let _ = self.mmap.unchecked_advise_range(
                memmap2::UncheckedAdvice::DontNeed,
                self.data_start + begin,
                end - begin,
            );
        }
        Ok(tensor)
    }
}

/// Converts a borrowed view into a tensor that owns its storage, in one copy.
fn convert_owned(view: &Tensor, kind: Kind, device: Device) -> Result<Tensor> {
    let same_kind = view.kind() == kind;
    let tensor = match (device, same_kind) {
        (Device::Cpu, true) => view.f_detach_copy()?,
        (Device::Cpu, false) => view.f_to_kind(kind)?,
        (_, true) => view.f_to_device(device)?,
        (_, false) => view.f_to_device(device)?.f_to_kind(kind)?,
    };
    Ok(tensor)
}

fn contiguous_strides(shape: &[i64]) -> Vec<i64> {
    let mut strides = vec![1i64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1].max(1);
    }
    strides
}

fn stored_kind(dtype: Dtype) -> Option<Kind> {
    match dtype {
        Dtype::F32 => Some(Kind::Float),
        Dtype::F16 => Some(Kind::Half),
        Dtype::BF16 => Some(Kind::BFloat16),
        Dtype::F64 => Some(Kind::Double),
        _ => None,
    }
}

fn describe_header_error(error: &SafeTensorError) -> String {
    match error {
        SafeTensorError::HeaderTooSmall => {
            "not a safetensors file: shorter than the 8-byte header length".to_string()
        }
        SafeTensorError::InvalidHeaderLength => {
            "truncated or not a safetensors file: the header length points past the end".into()
        }
        SafeTensorError::HeaderTooLarge => "not a safetensors file: header too large".into(),
        SafeTensorError::InvalidHeader | SafeTensorError::InvalidHeaderDeserialization => {
            "not a safetensors file: the header is not valid JSON".into()
        }
        SafeTensorError::InvalidOffset(name) => {
            format!("tensor `{name}`: its data offsets overlap, leave gaps or point past the end")
        }
        SafeTensorError::TensorInvalidInfo => {
            "a tensor's byte length does not match its dtype and shape".into()
        }
        SafeTensorError::MetadataIncompleteBuffer => {
            "truncated: the file is shorter or longer than its header describes".into()
        }
        other => format!("invalid safetensors file: {other:?}"),
    }
}

/// Refuses pickle-based checkpoints by extension: unpickling runs arbitrary code.
pub fn refuse_pickle(path: &Path) -> Result<()> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if matches!(
        ext.as_str(),
        "ckpt" | "pt" | "pth" | "bin" | "pkl" | "pickle"
    ) {
        return Err(Error::Refused {
            path: path.to_path_buf(),
            message: format!(
                "`.{ext}` files are Python pickles and loading one can run arbitrary code, so \
                 huaxian refuses them. Convert it once, in a sandbox you trust, to safetensors \
                 (for example with `safetensors.torch.save_file(torch.load(path, \
                 weights_only=True)[\"state_dict\"], \"model.safetensors\")`), or download the \
                 model's .safetensors release"
            ),
        });
    }
    Ok(())
}

/// Where a diffusers-named tensor comes from in a file laid out differently.
#[derive(Clone, Debug)]
pub enum Source {
    /// The tensor stored under another name.
    Renamed(String),
    /// A 1×1 convolution kernel `[out, in, 1, 1]` used as a linear weight `[out, in]`.
    ConvAsLinear(String),
    /// Part `index` of `parts` equal slices along the first axis (a fused qkv projection).
    Chunk {
        name: String,
        index: i64,
        parts: i64,
    },
}

/// The tensors of one model component, possibly spread over several files, possibly under
/// other names (single-file checkpoints).
pub struct Weights {
    files: Vec<SafetensorsFile>,
    owner: HashMap<String, usize>,
    aliases: HashMap<String, Source>,
    kind: Kind,
    device: Device,
    keep_half: bool,
}

impl Weights {
    pub fn from_files(files: Vec<SafetensorsFile>, kind: Kind, device: Device) -> Self {
        let mut owner = HashMap::new();
        for (i, file) in files.iter().enumerate() {
            for name in file.names() {
                owner.insert(name, i);
            }
        }
        Weights {
            files,
            owner,
            aliases: HashMap::new(),
            kind,
            device,
            keep_half: false,
        }
    }

    /// Opens one file, or every shard named in a `*.safetensors.index.json`.
    pub fn open(path: &Path, kind: Kind, device: Device) -> Result<Self> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let files = if name.ends_with(".index.json") {
            shard_paths(path)?
                .iter()
                .map(|p| SafetensorsFile::open(p))
                .collect::<Result<Vec<_>>>()?
        } else {
            vec![SafetensorsFile::open(path)?]
        };
        Ok(Weights::from_files(files, kind, device))
    }

    /// Serves diffusers names from other stored names. Used for single-file checkpoints.
    pub fn with_aliases(mut self, aliases: HashMap<String, Source>) -> Self {
        self.aliases = aliases;
        self
    }

    /// Keeps tensors stored in f16 or bf16 in that dtype even when computing in f32; the
    /// layers widen them as they use them. Widening is exact, so results do not change (a
    /// render is bit-identical either way), and the resident weights are half the size. The
    /// text encoder, the UNet and the VAE load this way: on the CPU engine benchmark,
    /// widening the UNet's weights at each step cost no measurable time (denoising 37.0–37.3 s against
    /// 36.8–37.6 s), because each layer reads its whole weight anyway, and peak memory fell
    /// from 4.8 to 3.0 GiB. Weights stored in f32 stay f32.
    pub fn keeping_half(mut self) -> Self {
        self.keep_half = true;
        self
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn device(&self) -> Device {
        self.device
    }

    fn target_kind(&self, file: &SafetensorsFile, name: &str) -> Kind {
        match file.stored_kind(name) {
            Some(stored @ (Kind::Half | Kind::BFloat16))
                if self.keep_half && self.kind == Kind::Float =>
            {
                stored
            }
            _ => self.kind,
        }
    }

    pub fn root(&self) -> WeightPath<'_> {
        WeightPath {
            weights: self,
            prefix: String::new(),
        }
    }

    /// A description of where the weights live, for error messages.
    pub fn origin(&self) -> PathBuf {
        match self.files.as_slice() {
            [one] => one.path.clone(),
            [first, ..] => first.path.parent().unwrap_or(&first.path).to_path_buf(),
            [] => PathBuf::from("<no files>"),
        }
    }

    fn stored(&self, name: &str) -> Option<&SafetensorsFile> {
        self.owner.get(name).map(|&i| &self.files[i])
    }

    /// True when `name` (a diffusers name) can be served.
    pub fn contains(&self, name: &str) -> bool {
        match self.aliases.get(name) {
            Some(Source::Renamed(n) | Source::ConvAsLinear(n) | Source::Chunk { name: n, .. }) => {
                self.stored(n).is_some()
            }
            None => self.stored(name).is_some(),
        }
    }

    /// Loads `name` and checks it has `shape`.
    pub fn get(&self, name: &str, shape: &[i64]) -> Result<Tensor> {
        let tensor = self.get_any_shape(name)?;
        if tensor.size() != shape {
            let (file, stored) = self.locate(name);
            return Err(Error::bad_model(
                file,
                format!(
                    "tensor `{stored}` has shape {:?}, expected {shape:?}; the weights do not \
                     match the model's config.json",
                    tensor.size()
                ),
            ));
        }
        Ok(tensor)
    }

    /// Loads `name` whatever its shape.
    pub fn get_any_shape(&self, name: &str) -> Result<Tensor> {
        let missing =
            |stored: &str| Error::bad_model(self.origin(), format!("tensor `{stored}` is missing"));
        match self.aliases.get(name) {
            None => {
                let file = self.stored(name).ok_or_else(|| missing(name))?;
                file.load(name, self.target_kind(file, name), self.device)
            }
            Some(Source::Renamed(stored)) => {
                let file = self.stored(stored).ok_or_else(|| missing(stored))?;
                file.load(stored, self.target_kind(file, stored), self.device)
            }
            Some(Source::ConvAsLinear(stored)) => {
                let file = self.stored(stored).ok_or_else(|| missing(stored))?;
                let t = file.load(stored, self.target_kind(file, stored), self.device)?;
                match t.size().as_slice() {
                    [o, i, 1, 1] => Ok(t.f_reshape([*o, *i])?),
                    [_, _] => Ok(t),
                    other => Err(Error::bad_model(
                        file.path(),
                        format!("tensor `{stored}` has shape {other:?}, expected a 1×1 conv"),
                    )),
                }
            }
            Some(Source::Chunk {
                name: stored,
                index,
                parts,
            }) => {
                let file = self.stored(stored).ok_or_else(|| missing(stored))?;
                let t = file.load(stored, self.target_kind(file, stored), self.device)?;
                let rows = t.size().first().copied().unwrap_or(0);
                if rows % parts != 0 {
                    return Err(Error::bad_model(
                        file.path(),
                        format!("tensor `{stored}` has {rows} rows, not divisible by {parts}"),
                    ));
                }
                let part = rows / parts;
                Ok(t.f_narrow(0, index * part, part)?.f_contiguous()?)
            }
        }
    }

    fn locate(&self, name: &str) -> (PathBuf, String) {
        let stored = match self.aliases.get(name) {
            Some(Source::Renamed(n) | Source::ConvAsLinear(n) | Source::Chunk { name: n, .. }) => {
                n.clone()
            }
            None => name.to_string(),
        };
        let file = self
            .stored(&stored)
            .map(|f| f.path.clone())
            .unwrap_or_else(|| self.origin());
        (file, stored)
    }
}

fn shard_paths(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::bad_config(index, format!("not valid JSON: {e}")))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::bad_config(index, "no `weight_map` object"))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut shards: Vec<PathBuf> = Vec::new();
    for file in map.values().filter_map(|v| v.as_str()) {
        let path = dir.join(file);
        if !shards.contains(&path) {
            shards.push(path);
        }
    }
    if shards.is_empty() {
        return Err(Error::bad_config(index, "`weight_map` names no files"));
    }
    Ok(shards)
}

/// A prefix into [`Weights`], like a module path: `down_blocks.0.resnets.1`.
#[derive(Clone)]
pub struct WeightPath<'a> {
    weights: &'a Weights,
    prefix: String,
}

impl<'a> WeightPath<'a> {
    /// The path one level down.
    pub fn at(&self, part: impl std::fmt::Display) -> WeightPath<'a> {
        let prefix = if self.prefix.is_empty() {
            part.to_string()
        } else {
            format!("{}.{part}", self.prefix)
        };
        WeightPath {
            weights: self.weights,
            prefix,
        }
    }

    fn full(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    pub fn get(&self, name: &str, shape: &[i64]) -> Result<Tensor> {
        self.weights.get(&self.full(name), shape)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.weights.contains(&self.full(name))
    }

    pub fn kind(&self) -> Kind {
        self.weights.kind
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn origin(&self) -> PathBuf {
        self.weights.origin()
    }

    pub fn device(&self) -> Device {
        self.weights.device
    }
}

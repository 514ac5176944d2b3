//! Choosing the compute device from the command line: `--device cpu|cuda|cuda:N` and
//! `--backend flex|tch|cuda`.
//!
//! burn 0.22 dispatches on the device at run time, so the same model code runs on every
//! backend compiled in; this module maps the user's words onto a [`burn::tensor::Device`] and
//! turns an impossible choice into an error that names the fix.

#![allow(deprecated)] // burn-tch devices are deprecated in burn 0.22 but supported.

use burn::tensor::Device;
use std::fmt;
use std::str::FromStr;

/// Errors from parsing or opening a device.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The device string is not `cpu`, `cuda` or `cuda:N`.
    #[error("unknown device {0:?}: expected cpu, cuda or cuda:N")]
    Unknown(String),
    /// The backend string is not one this program knows.
    #[error("unknown backend {0:?}: expected flex, tch or cuda")]
    UnknownBackend(String),
    /// The backend asked for was not compiled into this binary.
    #[error("backend {backend} is not compiled into this siam; rebuild with `cargo build --release --features {feature}`")]
    NotCompiled {
        /// The backend the user asked for.
        backend: &'static str,
        /// The cargo feature that adds it.
        feature: &'static str,
    },
    /// A CUDA device was asked for but this binary has no GPU backend.
    #[error("--device {0} needs a GPU backend, and this siam has none; rebuild with `cargo build --release --features cuda` (burn's CUDA backend) or `--features tch` (libtorch, see scripts/setup-libtorch.sh)")]
    NoGpuBackend(String),
    /// A CUDA device was asked for on a machine where the driver does not answer.
    #[error("--device {device}: no CUDA device is usable here ({why}); use --device cpu, or run on a machine with an NVIDIA driver")]
    NoCuda {
        /// The device the user asked for.
        device: String,
        /// What was missing.
        why: String,
    },
}

/// Where tensors live, as the user says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// The CPU.
    #[default]
    Cpu,
    /// The CUDA GPU with this index.
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, DeviceError> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            _ => match t.strip_prefix("cuda:") {
                Some(n) => n
                    .parse()
                    .map(Self::Cuda)
                    .map_err(|_| DeviceError::Unknown(s.to_string())),
                None => Err(DeviceError::Unknown(s.to_string())),
            },
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// Which burn backend computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// burn's pure-Rust CPU backend (the default build).
    Flex,
    /// libtorch through burn-tch (feature `tch`), CPU or CUDA.
    Tch,
    /// burn's own CUDA backend through CubeCL (feature `cuda`).
    Cuda,
}

impl FromStr for Backend {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, DeviceError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "flex" | "cpu" => Ok(Self::Flex),
            "tch" | "libtorch" | "torch" => Ok(Self::Tch),
            "cuda" | "cubecl" => Ok(Self::Cuda),
            _ => Err(DeviceError::UnknownBackend(s.to_string())),
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Flex => "flex",
            Self::Tch => "tch",
            Self::Cuda => "cuda",
        })
    }
}

impl Backend {
    /// Whether this backend was compiled into the binary.
    pub fn compiled(self) -> bool {
        match self {
            Self::Flex => true,
            Self::Tch => cfg!(feature = "tch"),
            Self::Cuda => cfg!(feature = "cuda"),
        }
    }

    fn feature(self) -> &'static str {
        match self {
            Self::Flex => "flex",
            Self::Tch => "tch",
            Self::Cuda => "cuda",
        }
    }

    /// The backend used when the user names none: `SIAM_BACKEND` if set, else flex on the
    /// CPU; on a GPU, burn's CUDA backend when compiled in, else libtorch.
    pub fn default_for(spec: DeviceSpec) -> Result<Self, DeviceError> {
        if let Ok(b) = std::env::var("SIAM_BACKEND") {
            if !b.is_empty() {
                return b.parse();
            }
        }
        Ok(match spec {
            DeviceSpec::Cpu => Self::Flex,
            DeviceSpec::Cuda(_) if cfg!(feature = "cuda") => Self::Cuda,
            DeviceSpec::Cuda(_) if cfg!(feature = "tch") => Self::Tch,
            DeviceSpec::Cuda(_) => return Err(DeviceError::NoGpuBackend(spec.to_string())),
        })
    }
}

/// `--device` and `--backend`: the device section of every command that computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Args)]
pub struct DeviceConfig {
    /// Where to compute: cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// Backend: flex (pure Rust, CPU), tch (libtorch; feature `tch`) or cuda (burn's CUDA
    /// backend; feature `cuda`). Default: flex on the CPU, the compiled-in GPU backend on cuda.
    #[arg(long)]
    pub backend: Option<Backend>,
}

impl DeviceConfig {
    /// Opens the device (see [`open`]).
    pub fn open(&self) -> Result<Device, DeviceError> {
        open(self.device, self.backend)
    }
}

/// Opens the burn device for `spec` on `backend` (or the default backend for `spec`).
///
/// Errors name the fix: a missing feature, or a machine without CUDA.
pub fn open(spec: DeviceSpec, backend: Option<Backend>) -> Result<Device, DeviceError> {
    let backend = match backend {
        Some(b) => b,
        None => Backend::default_for(spec)?,
    };
    if !backend.compiled() {
        return Err(DeviceError::NotCompiled {
            backend: match backend {
                Backend::Flex => "flex",
                Backend::Tch => "tch",
                Backend::Cuda => "cuda",
            },
            feature: backend.feature(),
        });
    }
    if let DeviceSpec::Cuda(_) = spec {
        if backend == Backend::Flex {
            return Err(DeviceError::NoGpuBackend(spec.to_string()));
        }
        check_cuda_driver(spec)?;
    }
    Ok(match (backend, spec) {
        (Backend::Flex, _) => Device::flex(),
        #[cfg(feature = "tch")]
        (Backend::Tch, DeviceSpec::Cpu) => Device::libtorch(),
        #[cfg(feature = "tch")]
        (Backend::Tch, DeviceSpec::Cuda(i)) => Device::libtorch_cuda(i),
        #[cfg(feature = "cuda")]
        (Backend::Cuda, DeviceSpec::Cuda(i)) => Device::cuda(i),
        #[cfg(feature = "cuda")]
        (Backend::Cuda, DeviceSpec::Cpu) => Device::flex(),
        #[allow(unreachable_patterns)]
        _ => unreachable!("backend {backend} checked as compiled above"),
    })
}

/// The device for tests and benches: `SIAM_TEST_DEVICE` (`flex`, `tch`, `tch-cuda`, `cuda`;
/// unset or empty: flex), as siam-losses defines it ([`siam_losses::TestDevice`]), so both
/// crates' suites accept the same values with the same errors.
///
/// # Panics
/// When the variable names an unknown device or a backend this build lacks.
pub fn from_env() -> Device {
    siam_losses::test_device()
}

/// CUDA needs the driver library; without it burn would panic deep inside the runtime, so we
/// look for `libcuda.so.1` first and give a one-line error instead.
fn check_cuda_driver(spec: DeviceSpec) -> Result<(), DeviceError> {
    const DIRS: &[&str] = &[
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
        "/usr/local/cuda/lib64",
        "/usr/local/nvidia/lib64",
        "/usr/lib/wsl/lib",
    ];
    let mut dirs: Vec<String> = DIRS.iter().map(|s| s.to_string()).collect();
    if let Ok(ld) = std::env::var("LD_LIBRARY_PATH") {
        dirs.extend(ld.split(':').filter(|s| !s.is_empty()).map(String::from));
    }
    let found = dirs
        .iter()
        .any(|d| std::path::Path::new(d).join("libcuda.so.1").exists());
    if found || std::path::Path::new("/dev/nvidia0").exists() {
        Ok(())
    } else {
        Err(DeviceError::NoCuda {
            device: spec.to_string(),
            why: "no NVIDIA driver (libcuda.so.1) found".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_strings() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("CUDA:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert!("tpu".parse::<DeviceSpec>().is_err());
    }

    #[test]
    fn cuda_without_gpu_backend_names_the_fix() {
        if cfg!(any(feature = "cuda", feature = "tch")) {
            return;
        }
        let err = open(DeviceSpec::Cuda(0), None).unwrap_err().to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }
}

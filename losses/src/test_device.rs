//! The device the workspace's tests and benches run on, chosen by the environment variable
//! `SIAM_TEST_DEVICE`: one suite, backend picked by environment, as pytorch-metric-learning's
//! `TEST_DEVICE` (`tests/__init__.py`). This is the one definition; `siam::device::from_env`
//! uses it too.
//!
//! | `SIAM_TEST_DEVICE` | device | needs the cargo feature |
//! |---|---|---|
//! | unset, empty, `flex` | burn's pure-Rust CPU backend | - |
//! | `tch` | libtorch on the CPU | `tch` |
//! | `tch-cuda` | libtorch on GPU 0 | `tch` |
//! | `cuda` | burn's CUDA backend on GPU 0 | `cuda` |

#![allow(deprecated)] // burn-tch devices are deprecated in burn 0.22 but supported.

use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;

/// The environment variable that picks the test device.
pub const TEST_DEVICE_VAR: &str = "SIAM_TEST_DEVICE";

/// A test device that cannot be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TestDeviceError {
    /// `SIAM_TEST_DEVICE` names no device.
    #[error("{TEST_DEVICE_VAR}={0:?}: unknown device; expected flex, tch, tch-cuda or cuda")]
    Unknown(String),
    /// The device's backend is not compiled into this build.
    #[error("{TEST_DEVICE_VAR}={device}: this build has no {device} backend; rebuild with `--features {feature}`")]
    NotCompiled {
        /// The device asked for.
        device: TestDevice,
        /// The cargo feature that adds its backend.
        feature: &'static str,
    },
}

/// What `SIAM_TEST_DEVICE` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TestDevice {
    /// burn's pure-Rust CPU backend (the default).
    #[default]
    Flex,
    /// libtorch on the CPU.
    Tch,
    /// libtorch on CUDA GPU 0.
    TchCuda,
    /// burn's own CUDA backend on GPU 0.
    Cuda,
}

impl TestDevice {
    /// The device `SIAM_TEST_DEVICE` names (flex when it is unset or empty).
    pub fn from_env() -> Result<Self, TestDeviceError> {
        std::env::var(TEST_DEVICE_VAR).unwrap_or_default().parse()
    }

    /// The cargo feature whose backend runs this device (`None`: always compiled).
    pub fn feature(self) -> Option<&'static str> {
        match self {
            Self::Flex => None,
            Self::Tch | Self::TchCuda => Some("tch"),
            Self::Cuda => Some("cuda"),
        }
    }

    /// Opens the device, or says which feature this build lacks.
    pub fn open(self) -> Result<Device, TestDeviceError> {
        match self {
            Self::Flex => Ok(Device::flex()),
            #[cfg(feature = "tch")]
            Self::Tch => Ok(Device::libtorch()),
            #[cfg(feature = "tch")]
            Self::TchCuda => Ok(Device::libtorch_cuda(0)),
            #[cfg(feature = "cuda")]
            Self::Cuda => Ok(Device::cuda(0)),
            #[allow(unreachable_patterns)]
            other => Err(TestDeviceError::NotCompiled {
                device: other,
                feature: other.feature().unwrap_or_default(),
            }),
        }
    }
}

impl FromStr for TestDevice {
    type Err = TestDeviceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "" | "flex" => Ok(Self::Flex),
            "tch" => Ok(Self::Tch),
            "tch-cuda" => Ok(Self::TchCuda),
            "cuda" => Ok(Self::Cuda),
            _ => Err(TestDeviceError::Unknown(s.to_string())),
        }
    }
}

impl fmt::Display for TestDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Flex => "flex",
            Self::Tch => "tch",
            Self::TchCuda => "tch-cuda",
            Self::Cuda => "cuda",
        })
    }
}

/// The device tests run on ([`TestDevice::from_env`], opened).
///
/// # Panics
/// When `SIAM_TEST_DEVICE` names an unknown device or one this build lacks: a test set-up
/// error, reported with the accepted values or the feature to add.
pub fn test_device() -> Device {
    TestDevice::from_env()
        .and_then(TestDevice::open)
        .unwrap_or_else(|e| panic!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_values_and_errors() {
        for (text, want) in [
            ("", TestDevice::Flex),
            ("flex", TestDevice::Flex),
            ("tch", TestDevice::Tch),
            ("tch-cuda", TestDevice::TchCuda),
            ("cuda", TestDevice::Cuda),
        ] {
            assert_eq!(text.parse::<TestDevice>().unwrap(), want);
            if !text.is_empty() {
                assert_eq!(want.to_string(), text);
            }
        }
        let e = "tpu".parse::<TestDevice>().unwrap_err().to_string();
        assert_eq!(
            e,
            "SIAM_TEST_DEVICE=\"tpu\": unknown device; expected flex, tch, tch-cuda or cuda"
        );
        #[cfg(not(feature = "cuda"))]
        assert_eq!(
            TestDevice::Cuda.open().unwrap_err().to_string(),
            "SIAM_TEST_DEVICE=cuda: this build has no cuda backend; rebuild with `--features cuda`"
        );
    }
}

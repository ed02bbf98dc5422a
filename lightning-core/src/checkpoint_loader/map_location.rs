//! `map_location`: where the tensors of a checkpoint go (see [`MapLocation`]).

use tch::Device;

/// What accelerators this process has, for [`MapLocation::device_for`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Devices {
    /// CUDA devices (`torch.cuda.device_count()`; 0 when CUDA is unavailable).
    pub cuda: usize,
    /// Whether Apple's MPS is available.
    pub mps: bool,
}

impl Devices {
    /// This process's accelerators, as libtorch reports them.
    pub fn current() -> Self {
        Devices {
            cuda: if tch::Cuda::is_available() {
                usize::try_from(tch::Cuda::device_count()).unwrap_or(0)
            } else {
                0
            },
            mps: tch::utils::has_mps(),
        }
    }
}

/// Why a storage cannot go where `map_location` sends it (torch's messages).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MapLocationError {
    /// The target is a CUDA device and CUDA is not available.
    #[error(
        "storage tagged {tag:?} maps to {target:?}: Attempting to deserialize object on a CUDA \
         device but torch.cuda.is_available() is False. If you are running on a CPU-only \
         machine, please use map_location=\"cpu\" (`.map_location(\"cpu\")`) to map your \
         storages to the CPU."
    )]
    NoCuda {
        /// The storage's saved location.
        tag: String,
        /// Where `map_location` sent it.
        target: String,
    },
    /// The target CUDA device index is not below the device count.
    #[error(
        "storage tagged {tag:?} maps to {target:?}: Attempting to deserialize object on CUDA \
         device {index} but torch.cuda.device_count() is {count}. Please use map_location to \
         map your storages to an existing device."
    )]
    NoSuchCuda {
        /// The storage's saved location.
        tag: String,
        /// Where `map_location` sent it.
        target: String,
        /// The requested index.
        index: usize,
        /// The devices there are.
        count: usize,
    },
    /// The target is MPS and MPS is not available.
    #[error("storage tagged {tag:?} maps to {target:?}, but MPS is not available")]
    NoMps {
        /// The storage's saved location.
        tag: String,
        /// Where `map_location` sent it.
        target: String,
    },
    /// The target names no device torch can restore to.
    #[error(
        "storage tagged {tag:?} maps to {target:?}: don't know how to restore data location \
         {target:?} (expected \"cpu\", \"cuda\", \"cuda:N\" or \"mps\")"
    )]
    Unknown {
        /// The storage's saved location.
        tag: String,
        /// Where `map_location` sent it.
        target: String,
    },
}

/// `map_location`: where the tensors of a checkpoint go, as `torch.load` (and Lightning's
/// `load_from_checkpoint`, which hands it to `torch.load`) decides.
///
/// `torch.save` tags every storage with the device it was on (`"cpu"`, `"cuda:1"`). Loading:
/// - no `map_location` (Lightning's default): each storage goes back to its tag's device, except
///   that `cuda*` and `mps*` tags go to the CPU when that accelerator is not available;
/// - one device (`"cpu"`, `"cuda:0"`, a [`tch::Device`]): every storage goes there;
/// - a mapping: a storage whose tag is a key (the exact string: `"cuda"` does not match
///   `"cuda:0"`) goes to the key's value, any other to its own tag's device.
///
/// A target CUDA device that does not exist is an error with torch's message. The module is
/// then moved to the device of the first tensor of `state_dict` (Lightning's
/// `model.to(device)`).
///
/// ```
/// use lightning_core::checkpoint_loader::{Devices, MapLocation};
/// use tch::Device;
/// let cpu_only = Devices { cuda: 0, mps: false };
/// // Lightning's default: a CUDA tag falls back to the CPU on a CPU-only machine
/// assert_eq!(MapLocation::Default.device_for("cuda:1", cpu_only), Ok(Device::Cpu));
/// // a mapping matches tags exactly, as a Python dict does
/// let m = MapLocation::map([("cuda:1", "cuda:0")]);
/// let two_gpus = Devices { cuda: 2, mps: false };
/// assert_eq!(m.device_for("cuda:1", two_gpus), Ok(Device::Cuda(0)));
/// assert_eq!(m.device_for("cuda:0", two_gpus), Ok(Device::Cuda(0)));
/// assert!(MapLocation::map([("cuda", "cpu")]).device_for("cuda:0", cpu_only).is_err());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum MapLocation {
    /// Lightning's `_default_map_location`: the saved device, or the CPU for `cuda*`/`mps*`
    /// tags when that accelerator is unavailable.
    #[default]
    Default,
    /// Every storage to this location (`map_location="cuda:0"` or a `torch.device`).
    To(String),
    /// Saved location -> location, matched exactly (`map_location={"cuda:1": "cuda:0"}`);
    /// tags not listed keep their own location.
    Map(Vec<(String, String)>),
}

impl From<Device> for MapLocation {
    fn from(d: Device) -> Self {
        MapLocation::To(location_of(d))
    }
}

impl From<&str> for MapLocation {
    fn from(s: &str) -> Self {
        MapLocation::To(s.to_owned())
    }
}

/// torch's name of a device (`str(torch.device)`): `"cpu"`, `"cuda:0"`, `"mps"`.
pub fn location_of(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".into(),
        Device::Cuda(i) => format!("cuda:{i}"),
        Device::Mps => "mps".into(),
        Device::Vulkan => "vulkan".into(),
    }
}

impl MapLocation {
    /// A mapping of saved locations to locations (a Python dict `map_location`).
    pub fn map<K: Into<String>, V: Into<String>>(pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        MapLocation::Map(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    /// The device a storage saved with location `tag` is restored to, given `devices`.
    pub fn device_for(&self, tag: &str, devices: Devices) -> Result<Device, MapLocationError> {
        let target = match self {
            MapLocation::Default => {
                let absent = (tag.starts_with("cuda") && devices.cuda == 0)
                    || (tag.starts_with("mps") && !devices.mps);
                if absent {
                    return Ok(Device::Cpu);
                }
                tag
            }
            MapLocation::To(t) => t.as_str(),
            MapLocation::Map(m) => m
                .iter()
                .find(|(k, _)| k == tag)
                .map_or(tag, |(_, v)| v.as_str()),
        };
        restore_device(tag, target, devices)
    }
}

/// torch's `default_restore_location` for `target`: `cpu` exactly, `cuda` or `cuda:N` (checked
/// against the devices there are), `mps`.
fn restore_device(tag: &str, target: &str, devices: Devices) -> Result<Device, MapLocationError> {
    let err_tags = || (tag.to_owned(), target.to_owned());
    if target == "cpu" {
        return Ok(Device::Cpu);
    }
    if let Some(rest) = target.strip_prefix("cuda") {
        let index = match rest {
            "" => Some(0),
            r => r.strip_prefix(':').and_then(|i| i.parse::<usize>().ok()),
        };
        let Some(index) = index else {
            let (tag, target) = err_tags();
            return Err(MapLocationError::Unknown { tag, target });
        };
        if devices.cuda == 0 {
            let (tag, target) = err_tags();
            return Err(MapLocationError::NoCuda { tag, target });
        }
        if index >= devices.cuda {
            let (tag, target) = err_tags();
            return Err(MapLocationError::NoSuchCuda {
                tag,
                target,
                index,
                count: devices.cuda,
            });
        }
        return Ok(Device::Cuda(index));
    }
    if target.starts_with("mps") {
        if !devices.mps {
            let (tag, target) = err_tags();
            return Err(MapLocationError::NoMps { tag, target });
        }
        return Ok(Device::Mps);
    }
    let (tag, target) = err_tags();
    Err(MapLocationError::Unknown { tag, target })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPU: Devices = Devices {
        cuda: 0,
        mps: false,
    };
    const ONE_GPU: Devices = Devices {
        cuda: 1,
        mps: false,
    };

    #[test]
    fn default_falls_back_to_cpu_only_when_the_accelerator_is_absent() {
        let d = MapLocation::Default;
        assert_eq!(d.device_for("cpu", CPU), Ok(Device::Cpu));
        assert_eq!(d.device_for("cuda:3", CPU), Ok(Device::Cpu));
        assert_eq!(d.device_for("mps", CPU), Ok(Device::Cpu));
        assert_eq!(d.device_for("cuda:0", ONE_GPU), Ok(Device::Cuda(0)));
        // a GPU machine with fewer devices than the file names: torch's error
        assert!(matches!(
            d.device_for("cuda:1", ONE_GPU),
            Err(MapLocationError::NoSuchCuda {
                index: 1,
                count: 1,
                ..
            })
        ));
    }

    #[test]
    fn one_device_takes_every_storage() {
        let to = MapLocation::from("cpu");
        assert_eq!(to.device_for("cuda:1", CPU), Ok(Device::Cpu));
        assert_eq!(
            MapLocation::from(Device::Cuda(0)).device_for("cpu", ONE_GPU),
            Ok(Device::Cuda(0))
        );
        assert_eq!(
            MapLocation::from("cuda").device_for("cpu", ONE_GPU),
            Ok(Device::Cuda(0))
        );
        assert!(matches!(
            MapLocation::from("cuda:0").device_for("cpu", CPU),
            Err(MapLocationError::NoCuda { .. })
        ));
        assert!(matches!(
            MapLocation::from("cpu:0").device_for("cpu", CPU),
            Err(MapLocationError::Unknown { .. })
        ));
        assert!(matches!(
            MapLocation::from("cuda:x").device_for("cpu", ONE_GPU),
            Err(MapLocationError::Unknown { .. })
        ));
    }

    #[test]
    fn a_mapping_matches_exact_tags_and_leaves_others_alone() {
        let m = MapLocation::map([("cuda:1", "cuda:0"), ("cuda:0", "cpu")]);
        assert_eq!(m.device_for("cuda:1", ONE_GPU), Ok(Device::Cuda(0)));
        assert_eq!(m.device_for("cuda:0", ONE_GPU), Ok(Device::Cpu));
        assert_eq!(m.device_for("cpu", CPU), Ok(Device::Cpu));
        // "cuda" is not "cuda:0": the storage keeps its tag, which needs CUDA
        let e = MapLocation::map([("cuda", "cpu")])
            .device_for("cuda:0", CPU)
            .unwrap_err();
        assert!(
            e.to_string().contains("torch.cuda.is_available() is False"),
            "{e}"
        );
    }
}

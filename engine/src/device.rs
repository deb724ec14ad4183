//! Choosing where tensors live.
//!
//! `auto` takes a hardware GPU through wgpu when one exists and falls back to the pure-Rust CPU
//! backend (burn-flex) otherwise; `wgpu` takes whatever adapter wgpu offers, software renderers
//! such as Mesa's lavapipe included; `gpu` insists on hardware; `cpu` is burn-flex.

use std::fmt;

use burn::tensor::{Device, DeviceKind};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Where to compute (`--device`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// A hardware GPU if there is one, else the CPU backend.
    #[default]
    Auto,
    /// A hardware GPU through wgpu; an error when there is none.
    Gpu,
    /// wgpu's adapter, whatever it is (a software Vulkan renderer included).
    Wgpu,
    /// The pure-Rust CPU backend (burn-flex).
    Cpu,
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        crate::settings::fmt_value_enum(self, f)
    }
}

/// One adapter wgpu can see.
#[derive(Clone, Debug)]
pub struct AdapterInfo {
    /// The adapter's name, e.g. "llvmpipe (LLVM 15.0.6, 256 bits)".
    pub name: String,
    /// discrete, integrated, virtual, cpu or other.
    pub kind: String,
    /// The graphics API: Vulkan, Metal, Dx12, Gl, BrowserWebGpu.
    pub api: String,
    /// The driver and its version, when reported.
    pub driver: String,
}

impl AdapterInfo {
    /// Whether this is real GPU hardware (not a software renderer).
    pub fn is_hardware(&self) -> bool {
        matches!(self.kind.as_str(), "discrete" | "integrated" | "virtual")
    }
}

/// The adapters wgpu finds on this machine. Empty where wgpu has none (or in the browser,
/// where adapters are requested asynchronously instead).
pub fn list_adapters() -> Vec<AdapterInfo> {
    #[cfg(not(target_family = "wasm"))]
    {
        use burn::tensor::wgpu::wgpu;
        let mut descriptor = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        // Burn computes on Vulkan, Metal, DX12 and WebGPU: OpenGL adapters are no candidates
        // (and probing them opens an EGL display for nothing).
        descriptor.backends &= wgpu::Backends::PRIMARY;
        let instance = wgpu::Instance::new(descriptor);
        let adapters = pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()));
        adapters
            .iter()
            .map(|adapter| {
                let info = adapter.get_info();
                let kind = match info.device_type {
                    wgpu::DeviceType::DiscreteGpu => "discrete",
                    wgpu::DeviceType::IntegratedGpu => "integrated",
                    wgpu::DeviceType::VirtualGpu => "virtual",
                    wgpu::DeviceType::Cpu => "cpu",
                    wgpu::DeviceType::Other => "other",
                };
                AdapterInfo {
                    name: info.name.clone(),
                    kind: kind.to_string(),
                    api: format!("{:?}", info.backend),
                    driver: format!("{} {}", info.driver, info.driver_info)
                        .trim()
                        .to_string(),
                }
            })
            .collect()
    }
    #[cfg(target_family = "wasm")]
    {
        Vec::new()
    }
}

/// The browser's WebGPU adapter, opened through Burn, with the handles a renderer needs to
/// share it; an error where the browser offers no WebGPU adapter.
#[cfg(target_family = "wasm")]
pub async fn open_browser_gpu() -> Result<(Selected, burn::tensor::wgpu::WgpuSetup)> {
    let (device, setup) = Device::wgpu_options()
        .init_with_setup_async()
        .await
        .map_err(|e| Error::Device(format!("WebGPU: {e}")))?;
    let info = setup.adapter.get_info();
    // Browsers hide the adapter's name unless asked for it; say what is known.
    let name = if info.name.is_empty() {
        "the browser's adapter".to_string()
    } else {
        info.name.clone()
    };
    Ok((
        Selected {
            device,
            description: format!("wgpu: {name} (WebGPU)"),
            is_wgpu: true,
            kind: None,
        },
        setup,
    ))
}

/// A device the engine has opened, with a name for humans.
#[derive(Clone, Debug)]
pub struct Selected {
    /// The Burn device.
    pub device: Device,
    /// What was chosen and why, in one line, e.g. "wgpu: NVIDIA RTX 4090 (discrete, Vulkan)"
    /// or "cpu (burn-flex): auto found no hardware GPU (wgpu sees: llvmpipe [cpu])".
    pub description: String,
    /// Whether the device is a wgpu device (its memory pool can be queried).
    pub is_wgpu: bool,
    /// The wgpu adapter kind, for a wgpu device.
    pub kind: Option<DeviceKind>,
}

fn wgpu_device(adapters: &[AdapterInfo], hardware_only: bool) -> Option<Selected> {
    let pick = adapters
        .iter()
        .enumerate()
        .filter(|(_, a)| a.is_hardware() || !hardware_only)
        // Prefer discrete over integrated over virtual over software.
        .min_by_key(|(i, a)| {
            let rank = match a.kind.as_str() {
                "discrete" => 0,
                "integrated" => 1,
                "virtual" => 2,
                "cpu" => 3,
                _ => 4,
            };
            (rank, *i)
        })
        .map(|(_, a)| a.clone())?;
    let index_of = |kind: &str| {
        adapters
            .iter()
            .take_while(|a| a.name != pick.name)
            .filter(|a| a.kind == kind)
            .count()
    };
    let kind = match pick.kind.as_str() {
        "discrete" => DeviceKind::DiscreteGpu(index_of("discrete")),
        "integrated" => DeviceKind::IntegratedGpu(index_of("integrated")),
        "virtual" => DeviceKind::VirtualGpu(index_of("virtual")),
        "cpu" => DeviceKind::Cpu,
        _ => DeviceKind::DefaultDevice,
    };
    Some(Selected {
        device: Device::wgpu(kind.clone()),
        description: format!("wgpu: {} ({}, {})", pick.name, pick.kind, pick.api),
        is_wgpu: true,
        kind: Some(kind),
    })
}

fn cpu() -> Selected {
    Selected {
        device: Device::flex(),
        description: "cpu (burn-flex)".into(),
        is_wgpu: false,
        kind: None,
    }
}

/// Opens the device for `choice`, given the adapters wgpu reported.
pub fn select_from(choice: DeviceChoice, adapters: &[AdapterInfo]) -> Result<Selected> {
    match choice {
        DeviceChoice::Cpu => Ok(cpu()),
        DeviceChoice::Auto => Ok(wgpu_device(adapters, true).unwrap_or_else(|| {
            let mut s = cpu();
            s.description = format!(
                "{}: auto found no hardware GPU (wgpu sees: {})",
                s.description,
                describe(adapters)
            );
            s
        })),
        DeviceChoice::Gpu => wgpu_device(adapters, true).ok_or_else(|| {
            Error::Device(format!(
                "--device gpu: no hardware GPU found (wgpu sees: {}); use --device wgpu for a \
                 software renderer or --device cpu",
                describe(adapters)
            ))
        }),
        DeviceChoice::Wgpu => wgpu_device(adapters, false).ok_or_else(|| {
            Error::Device(
                "--device wgpu: wgpu found no adapter; on Debian `apt-get install \
                 mesa-vulkan-drivers libvulkan1` provides a software Vulkan renderer"
                    .into(),
            )
        }),
    }
}

/// Opens the device for `choice` on this machine.
pub fn select(choice: DeviceChoice) -> Result<Selected> {
    if choice == DeviceChoice::Cpu {
        return Ok(cpu());
    }
    select_from(choice, &list_adapters())
}

fn describe(adapters: &[AdapterInfo]) -> String {
    if adapters.is_empty() {
        return "nothing".into();
    }
    adapters
        .iter()
        .map(|a| format!("{} [{}]", a.name, a.kind))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Bytes in use and reserved by the device's memory pool, where the backend reports them.
pub fn memory_usage(device: &Device) -> Option<(u64, u64)> {
    device
        .memory_pool_usage()
        .map(|u| (u.bytes_in_use, u.bytes_reserved))
}

/// Resident memory of this process and its peak so far, in bytes, where the operating system
/// reports them (Linux: `/proc/self/status`; in the browser the WebAssembly memory, which only
/// grows, so both are its size); `None` elsewhere.
pub fn process_memory() -> Option<(u64, u64)> {
    #[cfg(target_family = "wasm")]
    {
        use wasm_bindgen::JsCast;
        let memory: js_sys::WebAssembly::Memory = wasm_bindgen::memory().dyn_into().ok()?;
        let buffer: js_sys::ArrayBuffer = memory.buffer().dyn_into().ok()?;
        let bytes = buffer.byte_length() as u64;
        Some((bytes, bytes))
    }
    #[cfg(not(target_family = "wasm"))]
    linux_process_memory()
}

#[cfg(not(target_family = "wasm"))]
fn linux_process_memory() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kb| kb * 1024)
    };
    let rss = field("VmRSS:")?;
    Some((rss, field("VmHWM:").unwrap_or(rss)))
}

/// Runs `f` on one of the threads that the CPU backend's products and kernels split their work
/// across (rayon's pool), so each parallel operation `f` starts hands work to the other threads
/// by work stealing, rather than waking the pool from outside and sleeping until it finishes (two
/// context switches per operation: at the default run's size, a sixth of its time). Decoding and
/// the `train` command run this way. In the browser, `f()`.
pub fn on_workers<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    #[cfg(not(target_family = "wasm"))]
    return rayon::scope(|_| f());
    #[cfg(target_family = "wasm")]
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_workers_runs_on_a_thread_of_the_pool() {
        assert_eq!(rayon::current_thread_index(), None);
        assert!(on_workers(rayon::current_thread_index).is_some());
        assert_eq!(on_workers(|| 6 * 7), 42);
    }

    fn adapter(name: &str, kind: &str) -> AdapterInfo {
        AdapterInfo {
            name: name.into(),
            kind: kind.into(),
            api: "Vulkan".into(),
            driver: "".into(),
        }
    }

    #[test]
    fn parses_choices_and_rejects_unknown_ones() {
        use clap::ValueEnum;
        assert_eq!(DeviceChoice::from_str("AUTO", true), Ok(DeviceChoice::Auto));
        assert_eq!(DeviceChoice::from_str("cpu", false), Ok(DeviceChoice::Cpu));
        assert_eq!(DeviceChoice::Wgpu.to_string(), "wgpu");
        let err = DeviceChoice::from_str("tpu", false).unwrap_err();
        assert!(err.contains("tpu"), "{err}");
    }

    #[test]
    fn auto_skips_software_adapters() {
        let soft = [adapter("llvmpipe", "cpu")];
        let picked = select_from(DeviceChoice::Auto, &soft)
            .map(|s| s.is_wgpu)
            .ok();
        assert_eq!(picked, Some(false));
        let err = select_from(DeviceChoice::Gpu, &soft)
            .err()
            .map(|e| e.to_string());
        assert!(err.unwrap_or_default().contains("no hardware GPU"));
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn process_memory_is_plausible() {
        let (rss, peak) = process_memory().unwrap_or_default();
        // A test binary holds at least a megabyte and never more than its peak.
        assert!(rss > 1 << 20 && rss <= peak, "rss {rss} peak {peak}");
    }

    #[test]
    fn auto_prefers_discrete_gpus() {
        let adapters = [adapter("igpu", "integrated"), adapter("dgpu", "discrete")];
        let desc = select_from(DeviceChoice::Auto, &adapters)
            .map(|s| s.description)
            .ok();
        assert!(desc.unwrap_or_default().contains("dgpu"));
    }
}

//! What a benchmark ran on, read from the usual system files, `unknown` where a file is absent:
//! the CPU (model, cores, the instruction sets libtorch and ONNX Runtime choose kernels by, the
//! frequency governor) and, on a Jetson, the L4T and JetPack releases, the nvpmodel mode, the
//! jetson_clocks state, the TensorRT version and the GPU clocks. ros2_benchmark records the same
//! for its reports. The Jetson paths are those L4T 35/36 use; they have not been read on a
//! Jetson here (none is at hand), so the test builds the tree itself.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const UNKNOWN: &str = "unknown";

/// The instruction sets worth naming for inference speed, in the order reports list them.
const FLAGS: [&str; 9] = [
    "sse4_2",
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "asimd",
    "asimddp",
];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Platform {
    pub cpu_model: String,
    pub cores: usize,
    /// Of [`FLAGS`], those the CPU has.
    pub cpu_flags: Vec<String>,
    pub governor: String,
    pub kernel: String,
    pub onnxruntime: String,
    /// Present on a Jetson (`/etc/nv_tegra_release` exists).
    pub jetson: Option<Jetson>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Jetson {
    /// `36.3.0` from `/etc/nv_tegra_release`.
    pub l4t: String,
    /// The `nvidia-jetpack` package's version.
    pub jetpack: String,
    /// `ID NAME` of the mode in `/var/lib/nvpmodel/status`, named from `/etc/nvpmodel.conf`.
    pub nvpmodel: String,
    /// `on` when the GPU's minimum clock equals its maximum (what jetson_clocks sets), `off`
    /// otherwise.
    pub jetson_clocks: String,
    /// The `tensorrt` (or `libnvinfer*`) package's version.
    pub tensorrt: String,
    /// `cur / max MHz` of the GPU's devfreq node.
    pub gpu_clock: String,
}

/// A value read, or [`UNKNOWN`].
fn known(v: Option<String>) -> String {
    v.unwrap_or_else(|| UNKNOWN.into())
}

fn read(root: &Path, p: &str) -> Option<String> {
    std::fs::read_to_string(root.join(p.trim_start_matches('/')))
        .ok()
        .map(|s| s.trim().to_string())
}

/// `Version:` of a package in dpkg's status file.
fn dpkg_version(status: &str, packages: &[&str]) -> Option<String> {
    for para in status.split("\n\n") {
        let field = |k: &str| {
            para.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
        };
        if field("Package:").is_some_and(|p| packages.iter().any(|q| p == *q)) {
            return field("Version:");
        }
    }
    None
}

impl Platform {
    /// The machine this runs on; `onnxruntime` is the runtime's version as the caller has it.
    pub fn detect(onnxruntime: &str) -> Self {
        Self::read(Path::new("/"), onnxruntime)
    }

    /// [`Platform::detect`] with the files under `root` (tests).
    pub fn read(root: &Path, onnxruntime: &str) -> Self {
        let cpuinfo = read(root, "/proc/cpuinfo").unwrap_or_default();
        let field = |k: &str| {
            cpuinfo.lines().find_map(|l| {
                let (a, b) = l.split_once(':')?;
                (a.trim() == k).then(|| b.trim().to_string())
            })
        };
        let cpu_model = field("model name")
            .or_else(|| read(root, "/proc/device-tree/model").map(|m| m.replace('\0', "")))
            .unwrap_or_else(|| UNKNOWN.into());
        let have: Vec<String> = field("flags")
            .or_else(|| field("Features"))
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect();
        let cpu_flags = FLAGS
            .iter()
            .filter(|f| have.iter().any(|h| h == *f))
            .map(|f| f.to_string())
            .collect();
        Platform {
            cpu_model,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_flags,
            governor: known(read(
                root,
                "/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor",
            )),
            kernel: known(read(root, "/proc/sys/kernel/osrelease")),
            onnxruntime: onnxruntime.into(),
            jetson: read(root, "/etc/nv_tegra_release").map(|r| Jetson::read(root, &r)),
        }
    }

    /// One line per fact, for reports.
    pub fn lines(&self) -> Vec<(String, String)> {
        let mut v = vec![
            ("CPU".into(), self.cpu_model.clone()),
            ("cores".into(), self.cores.to_string()),
            ("CPU flags".into(), self.cpu_flags.join(" ")),
            ("governor".into(), self.governor.clone()),
            ("kernel".into(), self.kernel.clone()),
            ("ONNX Runtime".into(), self.onnxruntime.clone()),
        ];
        match &self.jetson {
            None => v.push(("Jetson".into(), "no".into())),
            Some(j) => v.extend([
                ("L4T".into(), j.l4t.clone()),
                ("JetPack".into(), j.jetpack.clone()),
                ("nvpmodel".into(), j.nvpmodel.clone()),
                ("jetson_clocks".into(), j.jetson_clocks.clone()),
                ("TensorRT".into(), j.tensorrt.clone()),
                ("GPU clock".into(), j.gpu_clock.clone()),
            ]),
        }
        v
    }
}

/// The GPU's devfreq directory: the node whose name is one of the Tegra GPUs.
fn gpu_devfreq(root: &Path) -> Option<PathBuf> {
    let dir = root.join("sys/class/devfreq");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    names.sort();
    names.into_iter().find(|p| {
        let n = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        ["gpu", "ga10b", "gv11b", "gp10b"]
            .iter()
            .any(|g| n.contains(g))
    })
}

impl Jetson {
    fn read(root: &Path, tegra_release: &str) -> Self {
        // "# R36 (release), REVISION: 3.0, GCID: …" → 36.3.0.
        let l4t = (|| {
            let major = tegra_release.split_once('R')?.1.split_whitespace().next()?;
            let rev = tegra_release
                .split_once("REVISION:")?
                .1
                .split(',')
                .next()?
                .trim();
            Some(format!("{major}.{rev}"))
        })();
        let dpkg = read(root, "/var/lib/dpkg/status").unwrap_or_default();
        let nvpmodel = read(root, "/var/lib/nvpmodel/status").and_then(|s| {
            let id: u32 = s.strip_prefix("pmode:")?.trim().parse().ok()?;
            let conf = read(root, "/etc/nvpmodel.conf").unwrap_or_default();
            let name = conf.lines().find_map(|l| {
                let l = l.trim();
                let rest = l.strip_prefix("< POWER_MODEL")?;
                let has_id = rest.split_whitespace().any(|t| t == format!("ID={id}"));
                has_id.then(|| {
                    rest.split_whitespace()
                        .find_map(|t| t.strip_prefix("NAME="))
                        .unwrap_or("")
                        .trim_end_matches('>')
                        .to_string()
                })
            });
            Some(match name {
                Some(n) if !n.is_empty() => format!("{id} {n}"),
                _ => id.to_string(),
            })
        });
        let gpu = gpu_devfreq(root);
        let freq = |f: &str| -> Option<u64> {
            let g = gpu.as_ref()?;
            std::fs::read_to_string(g.join(f)).ok()?.trim().parse().ok()
        };
        let jetson_clocks = match (freq("min_freq"), freq("max_freq")) {
            (Some(lo), Some(hi)) => if lo == hi { "on" } else { "off" }.to_string(),
            _ => UNKNOWN.into(),
        };
        let gpu_clock = match (freq("cur_freq"), freq("max_freq")) {
            (Some(c), Some(m)) => format!("{} / {} MHz", c / 1_000_000, m / 1_000_000),
            _ => UNKNOWN.into(),
        };
        Jetson {
            l4t: known(l4t),
            jetpack: known(dpkg_version(&dpkg, &["nvidia-jetpack"])),
            nvpmodel: known(nvpmodel),
            jetson_clocks,
            tensorrt: known(dpkg_version(
                &dpkg,
                &["tensorrt", "libnvinfer10", "libnvinfer8"],
            )),
            gpu_clock,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(root: &Path, p: &str, s: &str) {
        let f = root.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, s).unwrap();
    }

    #[test]
    fn a_jetson_tree_is_read_and_missing_files_are_unknown() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        put(
            r,
            "proc/cpuinfo",
            "processor\t: 0\nFeatures\t: fp asimd evtstrm asimddp\n",
        );
        put(r, "proc/device-tree/model", "NVIDIA Jetson AGX Orin\0");
        put(
            r,
            "etc/nv_tegra_release",
            "# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64\n",
        );
        put(
            r,
            "var/lib/dpkg/status",
            "Package: nvidia-jetpack\nStatus: install ok installed\nVersion: 6.0+b106\n\nPackage: tensorrt\nVersion: 8.6.2.3-1+cuda12.2\n",
        );
        put(r, "var/lib/nvpmodel/status", "pmode:0000\n");
        put(
            r,
            "etc/nvpmodel.conf",
            "< POWER_MODEL ID=0 NAME=MAXN >\nCPU_ONLINE CORE_0 1\n< POWER_MODEL ID=1 NAME=MODE_15W >\n",
        );
        let g = "sys/class/devfreq/17000000.ga10b";
        put(r, &format!("{g}/cur_freq"), "1300500000\n");
        put(r, &format!("{g}/max_freq"), "1300500000\n");
        put(r, &format!("{g}/min_freq"), "1300500000\n");
        let p = Platform::read(r, "1.22.0");
        assert_eq!(p.cpu_model, "NVIDIA Jetson AGX Orin");
        assert_eq!(p.cpu_flags, ["asimd", "asimddp"]);
        assert_eq!(p.governor, UNKNOWN);
        let j = p.jetson.unwrap();
        assert_eq!(j.l4t, "36.3.0");
        assert_eq!(j.jetpack, "6.0+b106");
        assert_eq!(j.tensorrt, "8.6.2.3-1+cuda12.2");
        assert_eq!(j.nvpmodel, "0 MAXN");
        assert_eq!(j.jetson_clocks, "on");
        assert_eq!(j.gpu_clock, "1300 / 1300 MHz");

        // Clocks left to scale, and a Jetson without dpkg or nvpmodel files.
        put(r, &format!("{g}/min_freq"), "306000000\n");
        std::fs::remove_file(r.join("var/lib/dpkg/status")).unwrap();
        std::fs::remove_file(r.join("var/lib/nvpmodel/status")).unwrap();
        let j = Platform::read(r, "x").jetson.unwrap();
        assert_eq!(j.jetson_clocks, "off");
        assert_eq!(
            (j.jetpack.as_str(), j.nvpmodel.as_str()),
            (UNKNOWN, UNKNOWN)
        );
    }

    #[test]
    fn an_x86_machine_has_its_flags_and_no_jetson() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        put(
            r,
            "proc/cpuinfo",
            "model name\t: Intel(R) Xeon(R) Platinum 8488C\nflags\t\t: fpu sse4_2 avx2 fma avx512f avx512_vnni\n",
        );
        put(
            r,
            "sys/devices/system/cpu/cpu0/cpufreq/scaling_governor",
            "performance\n",
        );
        let p = Platform::read(r, "1.22.0");
        assert_eq!(p.cpu_model, "Intel(R) Xeon(R) Platinum 8488C");
        assert_eq!(
            p.cpu_flags,
            ["sse4_2", "avx2", "fma", "avx512f", "avx512_vnni"]
        );
        assert_eq!(p.governor, "performance");
        assert!(p.jetson.is_none());
        assert!(p.lines().iter().any(|(k, v)| k == "Jetson" && v == "no"));
    }
}

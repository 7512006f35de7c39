//! Opening a zenoh session the way zenoh's own tools take their options: a JSON5 config file,
//! then `--mode`, `--listen`, `--connect` and `--no-multicast-scouting` on top.

use std::path::PathBuf;

use zenoh::Wait;

use crate::error::{Error, Result};

#[derive(Clone, Debug, Default)]
pub struct ZenohOptions {
    /// A zenoh JSON5 config file; the flags below override its fields.
    pub config: Option<PathBuf>,
    /// `peer` or `client` (router mode belongs to zenohd).
    pub mode: Option<String>,
    pub listen: Vec<String>,
    pub connect: Vec<String>,
    pub no_multicast_scouting: bool,
    /// zenoh's shared-memory transport for subscribers on the same host (cargo feature `shm`).
    pub shm: bool,
}

fn set(cfg: &mut zenoh::Config, key: &str, value: serde_json::Value) -> Result<()> {
    cfg.insert_json5(key, &value.to_string())
        .map_err(|e| Error::Zenoh(format!("config {key} = {value}: {e}")))
}

impl ZenohOptions {
    /// Peer on explicit loopback endpoints with multicast off, as the tests and the pipeline use.
    pub fn loopback(listen: Option<u16>, connect: Option<u16>) -> Self {
        ZenohOptions {
            mode: Some("peer".into()),
            listen: listen
                .map(|p| vec![format!("tcp/127.0.0.1:{p}")])
                .unwrap_or_default(),
            connect: connect
                .map(|p| vec![format!("tcp/127.0.0.1:{p}")])
                .unwrap_or_default(),
            no_multicast_scouting: true,
            ..Default::default()
        }
    }

    pub fn config(&self) -> Result<zenoh::Config> {
        let mut cfg = match &self.config {
            Some(p) => zenoh::Config::from_file(p).map_err(|e| Error::File {
                path: p.clone(),
                message: format!("not a usable zenoh config: {e}"),
            })?,
            None => zenoh::Config::default(),
        };
        if let Some(m) = &self.mode {
            if m != "peer" && m != "client" {
                return Err(Error::Zenoh(format!(
                    "--mode {m}: use peer or client (run zenohd for a router)"
                )));
            }
            set(&mut cfg, "mode", m.as_str().into())?;
        }
        if !self.listen.is_empty() {
            set(&mut cfg, "listen/endpoints", self.listen.clone().into())?;
        }
        if !self.connect.is_empty() {
            set(&mut cfg, "connect/endpoints", self.connect.clone().into())?;
        }
        if self.no_multicast_scouting {
            set(&mut cfg, "scouting/multicast/enabled", false.into())?;
        }
        // Timestamped samples, as rmw_zenoh's default session config has them: zenoh-ext's
        // AdvancedPublisher (the transient-local class names) refuses to start without.
        set(&mut cfg, "timestamping/enabled", true.into())?;
        if self.shm {
            if !cfg!(feature = "shm") {
                return Err(Error::Zenoh(
                    "--shm needs the bridge built with the `shm` cargo feature \
                     (cargo build --release --features overparam-bridge/shm)"
                        .into(),
                ));
            }
            set(&mut cfg, "transport/shared_memory/enabled", true.into())?;
        }
        Ok(cfg)
    }

    /// With `shm`: the size of zenoh's shared-memory pool for large messages
    /// (`transport/shared_memory/transport_optimization/pool_size`, 16 MiB unless the config
    /// says otherwise); `None` without `shm`.
    pub fn shm_pool_bytes(&self) -> Result<Option<usize>> {
        if !self.shm {
            return Ok(None);
        }
        let cfg = self.config()?;
        let v = cfg
            .get_json("transport/shared_memory/transport_optimization/pool_size")
            .map_err(|e| Error::Zenoh(format!("shared-memory pool size: {e}")))?;
        Ok(v.trim().parse::<usize>().ok())
    }

    pub fn open(&self) -> Result<zenoh::Session> {
        let cfg = self.config()?;
        zenoh::open(cfg).wait().map_err(Error::from)
    }
}

/// The warning for a shared-memory pool too small for the traffic: when `frame_bytes` (every
/// output of one frame) cannot fit in the pool twice, a publisher that gets ahead of its
/// subscribers finds the pool full, and zenoh then sends over the network instead, silently.
pub fn shm_warning(pool_bytes: usize, frame_bytes: usize) -> Option<String> {
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    (frame_bytes.saturating_mul(2) > pool_bytes).then(|| {
        format!(
            "shared memory: one frame's outputs are {:.1} MiB and the pool holds {:.1} MiB, fewer than two frames; when it is full zenoh falls back to the network without a word. Raise transport/shared_memory/transport_optimization/pool_size in --config to at least {} (4 frames)",
            mib(frame_bytes),
            mib(pool_bytes),
            frame_bytes.saturating_mul(4)
        )
    })
}

/// A TCP port that was free a moment ago (for loopback endpoints in tests and the pipeline).
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| Error::Zenoh(format!("no free loopback port: {e}")))?;
    Ok(l.local_addr()
        .map_err(|e| Error::Zenoh(e.to_string()))?
        .port())
}

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shm_warning_asks_for_two_frames_in_the_pool() {
        let pool = 16 * 1024 * 1024;
        // 1080p: a u8 class map, f32 depth and f32×3 normals are 8.3 + 33.2 MB... per frame.
        let hd = 1920 * 1080 * (1 + 4 + 12);
        let w = shm_warning(pool, hd).unwrap();
        assert!(
            w.contains("pool_size") && w.contains(&(hd * 4).to_string()),
            "{w}"
        );
        // 480×640 segmentation alone fits many times.
        assert_eq!(shm_warning(pool, 480 * 640), None);
        assert!(shm_warning(pool, pool / 2 + 1).is_some());
        assert!(shm_warning(pool, pool / 2).is_none());
    }
}

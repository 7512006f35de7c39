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

    pub fn open(&self) -> Result<zenoh::Session> {
        let cfg = self.config()?;
        zenoh::open(cfg).wait().map_err(Error::from)
    }
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

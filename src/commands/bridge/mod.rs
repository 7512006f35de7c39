//! `overparam bridge`: publish a model's outputs over zenoh (`run`, natively or as ROS 2
//! topics through rmw_zenoh), or subscribe to them (`listen`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use overparam_bridge::session::ZenohOptions;

mod listen;
mod run;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: BridgeCommand,
}

/// zenoh session options, as zenoh's own tools take them.
#[derive(clap::Args, Clone)]
pub struct ZenohArgs {
    /// zenoh JSON5 config file (the flags below override it).
    #[arg(long = "config")]
    zenoh_config: Option<PathBuf>,
    /// peer or client.
    #[arg(long, default_value = "peer")]
    mode: String,
    /// Endpoints to listen on, e.g. tcp/127.0.0.1:7447 (repeatable).
    #[arg(long)]
    listen: Vec<String>,
    /// Endpoints to connect to, e.g. tcp/192.168.1.10:7447 (repeatable).
    #[arg(long)]
    connect: Vec<String>,
    /// Turn multicast scouting off (use with explicit --listen/--connect).
    #[arg(long)]
    no_multicast_scouting: bool,
    /// zenoh shared memory for subscribers on this host (needs the `shm` cargo feature).
    #[arg(long)]
    shm: bool,
}

impl ZenohArgs {
    pub fn options(&self) -> ZenohOptions {
        ZenohOptions {
            config: self.zenoh_config.clone(),
            mode: Some(self.mode.clone()),
            listen: self.listen.clone(),
            connect: self.connect.clone(),
            no_multicast_scouting: self.no_multicast_scouting,
            shm: self.shm,
        }
    }
}

#[derive(clap::Args, Clone)]
pub struct Ros2Args {
    /// Publish/subscribe ROS 2 sensor_msgs/Image the way rmw_zenoh does.
    #[arg(long)]
    pub ros2: bool,
    /// ROS_DOMAIN_ID (0–232).
    #[arg(long, default_value_t = 0, value_parser = domain_id)]
    pub domain_id: u32,
    /// ROS namespace of the topics, e.g. /vehicle1/perception.
    #[arg(long, default_value = "/perception", value_parser = checked(overparam_bridge::names::ros2_namespace))]
    pub namespace: String,
    /// ROS node name shown in the graph.
    #[arg(long, default_value = "overparam", value_parser = checked(overparam_bridge::names::ros2_node))]
    pub node: String,
}

/// A string flag checked by one of `overparam_bridge::names`' rules.
fn checked(
    rule: fn(&str) -> std::result::Result<(), String>,
) -> impl Fn(&str) -> std::result::Result<String, String> + Clone {
    move |s| rule(s).map(|()| s.to_string())
}

/// A concrete zenoh key part (no wildcards): `--camera`, `--prefix`.
pub fn key(s: &str) -> std::result::Result<String, String> {
    overparam_bridge::names::concrete_key("the key", s).map(|()| s.to_string())
}

pub(crate) fn domain_id(s: &str) -> std::result::Result<u32, String> {
    let id: u32 = s.parse().map_err(|e| format!("`{s}`: {e}"))?;
    overparam_bridge::names::domain_id(id).map(|()| id)
}

#[derive(clap::Subcommand)]
enum BridgeCommand {
    /// Run a deploy model on frames from a source and publish one topic per task, with its
    /// health every second (/diagnostics in ROS 2 mode, <prefix>/<camera>/health natively).
    Run(Box<run::Args>),
    /// Subscribe to a bridge's topics: validate, count, and report rates, latency and gaps.
    Listen(Box<listen::Args>),
}

pub fn run(a: Args) -> Result<ExitCode> {
    match a.command {
        BridgeCommand::Run(r) => run::run(*r),
        BridgeCommand::Listen(l) => listen::run(*l),
    }
}

//! overparam-bridge: publish the multi-task outputs of a deploy model over zenoh.
//!
//! - [`wire`]: the versioned native format (header + raw tensor) and its validating decoder;
//! - [`ros2`]: `sensor_msgs/msg/Image` as rmw_zenoh puts it on the wire;
//! - [`msgs`]: the other ROS 2 types (`diagnostic_msgs/DiagnosticArray`), hashed from their
//!   definitions;
//! - [`health`]: the last second's processing time, latency and rates (`/diagnostics`, status);
//! - [`publisher`] / [`listener`]: a topic per task with per-topic QoS, counters on both sides;
//! - [`source`] and `run` (feature `run`): camera frames in, model outputs out;
//! - `bench` (feature `run`): fixed-rate runs and the peak rate of a bridge process, camera to
//!   outputs ([`platform`]: what it ran on).

#[cfg(feature = "run")]
pub mod bench;
pub mod counters;
pub mod error;
pub mod health;
pub mod listener;
pub mod msgs;
pub mod names;
pub mod platform;
pub mod publisher;
pub mod ros2;
#[cfg(feature = "run")]
pub mod run;
pub mod session;
pub mod source;
pub mod wire;

pub use error::{Error, Result};

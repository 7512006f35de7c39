//! `overparam bridge listen`: subscribe to a bridge's topics, validate and count messages,
//! and report rates, latency and gaps (optionally dumping PNG colour maps).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use overparam_bridge::listener::{Event, ListenConfig, Listener, format_report};
use overparam_bridge::ros2::Ros2Names;
use overparam_bridge::wire::{Task, TensorData, TensorMsg};

use crate::stop;

#[derive(clap::Args)]
pub struct Args {
    /// Native key prefix to subscribe to (<prefix>/**).
    #[arg(long, default_value = "overparam")]
    prefix: String,
    /// Stop after this many seconds (default: until Ctrl-C or SIGTERM; either prints the
    /// report).
    #[arg(long, value_parser = crate::args::seconds)]
    duration: Option<f64>,
    /// Stop after this many valid messages.
    #[arg(long, value_parser = crate::args::count::<u64>)]
    messages: Option<u64>,
    /// Write PNG colour maps of the last message per topic here (every --dump-every).
    #[arg(long)]
    dump: Option<PathBuf>,
    /// Dump every N-th message of a topic.
    #[arg(long, default_value_t = 30, value_parser = crate::args::count::<u64>)]
    dump_every: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Append one line per valid message, `<key> <stream id> <frame id>`, flushed as it
    /// arrives (survives a kill; used by the fault tests).
    #[arg(long)]
    record: Option<PathBuf>,
    #[command(flatten)]
    ros: super::Ros2Args,
    #[command(flatten)]
    zenoh: super::ZenohArgs,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let Args {
        prefix,
        duration,
        messages,
        dump,
        dump_every,
        json,
        record,
        ros,
        zenoh,
    } = a;
    stop::install()?;
    let session = zenoh
        .options()
        .open()
        .context("opening the zenoh session")?;
    let mut cfg = if ros.ros2 {
        ListenConfig::ros2(&Ros2Names::new(ros.domain_id, &ros.namespace, &ros.node))
    } else {
        ListenConfig::native(&prefix)
    };
    // Tensors are only copied out when something looks at them.
    cfg.payloads = dump.is_some();
    eprintln!("listening on {}", cfg.key);
    let mut l = Listener::new(&session, cfg)?;
    if let Some(d) = &dump {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    let mut rec = match &record {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("opening {}", p.display()))?,
        ),
        None => None,
    };
    let t0 = Instant::now();
    let mut last_print = Instant::now();
    let mut per_key: BTreeMap<String, u64> = BTreeMap::new();
    let mut valid = 0u64;
    loop {
        if duration.is_some_and(|d| t0.elapsed().as_secs_f64() >= d)
            || messages.is_some_and(|n| valid >= n)
        {
            break;
        }
        if let Some(sig) = stop::requested() {
            eprintln!("bridge listen: stopped by {sig}");
            break;
        }
        match l.recv(Duration::from_millis(100))? {
            Some(Event::Message { key, msg }) => {
                valid += 1;
                record_line(rec.as_mut(), &key, msg.stream_id, msg.frame_id)?;
                let n = per_key.entry(key.clone()).or_default();
                if let Some(d) = &dump
                    && (*n).is_multiple_of(dump_every.max(1))
                {
                    dump_png(d, &key, &msg)?;
                }
                *n += 1;
            }
            Some(Event::Header { key, header }) => {
                valid += 1;
                record_line(rec.as_mut(), &key, header.stream_id, header.frame_id)?;
            }
            Some(Event::Invalid { key, error }) => eprintln!("{key}: invalid: {error}"),
            Some(Event::Status { .. }) | None => {}
        }
        if !json && last_print.elapsed() >= Duration::from_secs(5) {
            eprintln!("{}\n", format_report(&l.report(), &l.counters()));
            last_print = Instant::now();
        }
    }
    let report = l.report();
    let c = l.counters();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"topics": report, "counters": c}))?
        );
    } else {
        println!("{}", format_report(&report, &c));
    }
    Ok(ExitCode::SUCCESS)
}

/// `--record`: one line per valid message, in one write, so a kill never leaves half a line.
fn record_line(f: Option<&mut std::fs::File>, key: &str, stream: u64, frame: u64) -> Result<()> {
    if let Some(f) = f {
        use std::io::Write;
        f.write_all(format!("{key} {stream} {frame}\n").as_bytes())?;
    }
    Ok(())
}

/// A PNG colour map of one message: class colours, grey depth (near bright), normals as RGB.
fn dump_png(dir: &Path, key: &str, m: &TensorMsg) -> Result<()> {
    use overparam_data::png::{class_colour, depth_grey, normal_colour, write_rgb};
    let (h, w) = (m.shape[0], m.shape.get(1).copied().unwrap_or(1));
    let rgb: Vec<u8> = match (&m.data, m.task) {
        (TensorData::U8(v), Task::Segmentation) => {
            v.iter().flat_map(|&c| class_colour(c as f32)).collect()
        }
        (TensorData::F32(v), Task::Depth) => {
            let dmax = v.iter().fold(1e-6f32, |a, b| a.max(*b));
            v.iter().flat_map(|&d| depth_grey(d, dmax)).collect()
        }
        (TensorData::F32(v), Task::Normals) => v.chunks_exact(3).flat_map(normal_colour).collect(),
        (TensorData::U8(v), Task::Camera) => v.clone(),
        _ => bail!("{key}: nothing to draw for {:?}", m.task),
    };
    let name = format!("{}_{:06}.png", key.replace(['/', ':'], "_"), m.frame_id);
    write_rgb(&dir.join(name), w, h, &rgb)?;
    Ok(())
}

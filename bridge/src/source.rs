//! Camera frames in: synthetic scenes, an NYUv2-layout directory, a directory of PNG/JPEG
//! images, camera frames arriving over zenoh, or a ROS 2 `sensor_msgs/Image` topic published
//! through rmw_zenoh. Every frame comes out as H×W×3 f32 in [0, 1] at the model's input size
//! (resized bilinearly when it differs).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use zenoh::Wait as _;
use zenoh::handlers::FifoChannelHandler;
use zenoh::pubsub::Subscriber;
use zenoh::sample::Sample;

use overparam_base::{Progress, Silent};

use crate::error::{Error, Result};
use crate::ros2::{self, Ros2Names};
use crate::session::now_ns;
use crate::wire::{self, Task, TensorData};

/// One camera frame, channels last, values in [0, 1].
#[derive(Clone, Debug)]
pub struct Frame {
    pub height: usize,
    pub width: usize,
    pub rgb: Vec<f32>,
    pub capture_ns: i64,
    /// The ROS 2 header of a `ros2:` camera frame (`capture_ns` is its stamp): every output of
    /// the frame carries it unchanged.
    pub header: Option<ros2::Header>,
    /// The newest `sensor_msgs/CameraInfo` of a `ros2:` camera (its `camera_info` topic,
    /// beside the image's) when the frame was taken, if the camera publishes one.
    pub camera_info: Option<crate::msgs::CameraInfo>,
}

/// Where frames come from (`--source`).
#[derive(Clone, Debug, PartialEq)]
pub enum SourceSpec {
    /// Ray-cast indoor scenes, seeded.
    Synthetic { seed: u64 },
    /// The `val` split of an NYUv2 (MTAN layout) directory.
    Nyuv2(PathBuf),
    /// PNG and JPEG files of a directory, in name order.
    Images(PathBuf),
    /// Camera frames in the native format (task `image`, u8 or f32 H×W×3) on a zenoh key.
    Zenoh(String),
    /// `sensor_msgs/msg/Image` on a ROS 2 topic, as rmw_zenoh publishes it (absolute, or
    /// relative to the namespace).
    Ros2(String),
}

impl std::str::FromStr for SourceSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let (kind, arg) = s.split_once(':').unwrap_or((s, ""));
        Ok(match kind {
            "synthetic" => SourceSpec::Synthetic {
                seed: if arg.is_empty() {
                    0
                } else {
                    arg.parse().map_err(|_| {
                        Error::Source(format!("synthetic:{arg}: seed must be an integer"))
                    })?
                },
            },
            "nyuv2" if !arg.is_empty() => SourceSpec::Nyuv2(arg.into()),
            "images" if !arg.is_empty() => SourceSpec::Images(arg.into()),
            "zenoh" if !arg.is_empty() => SourceSpec::Zenoh(arg.into()),
            "ros2" if !arg.is_empty() => SourceSpec::Ros2(arg.into()),
            _ => {
                return Err(Error::Source(format!(
                    "{s:?}: use synthetic[:SEED], nyuv2:DIR, images:DIR, zenoh:KEY or ros2:TOPIC"
                )));
            }
        })
    }
}

pub trait FrameSource {
    /// The next frame, or `None` when a finite source is exhausted.
    fn next_frame(&mut self) -> Result<Option<Frame>>;
    /// What a subscribing source has seen so far (zeros for the others).
    fn stats(&self) -> SourceStats {
        SourceStats::default()
    }
}

/// Counts of a subscribing source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SourceStats {
    /// Samples that arrived.
    pub received: u64,
    /// Samples replaced by a newer one before the model asked for a frame.
    pub skipped: u64,
    /// Samples refused (each kind of refusal is also printed once).
    pub invalid: u64,
}

/// Bilinear resize (half-pixel centres, as PyTorch's align_corners=False) of H×W×C.
pub fn resize(src: &[f32], h: usize, w: usize, c: usize, oh: usize, ow: usize) -> Vec<f32> {
    if (h, w) == (oh, ow) {
        return src.to_vec();
    }
    let mut out = vec![0f32; oh * ow * c];
    let coord = |o: usize, n_in: usize, n_out: usize| {
        let x = ((o as f32 + 0.5) * n_in as f32 / n_out as f32 - 0.5).max(0.0);
        let i0 = (x as usize).min(n_in - 1);
        let i1 = (i0 + 1).min(n_in - 1);
        (i0, i1, x - i0 as f32)
    };
    for y in 0..oh {
        let (y0, y1, fy) = coord(y, h, oh);
        for x in 0..ow {
            let (x0, x1, fx) = coord(x, w, ow);
            for k in 0..c {
                let p = |yy: usize, xx: usize| src[(yy * w + xx) * c + k];
                let top = p(y0, x0) * (1.0 - fx) + p(y0, x1) * fx;
                let bot = p(y1, x0) * (1.0 - fx) + p(y1, x1) * fx;
                out[(y * ow + x) * c + k] = top * (1.0 - fy) + bot * fy;
            }
        }
    }
    out
}

fn frame(rgb: Vec<f32>, h: usize, w: usize, size: (usize, usize)) -> Frame {
    let rgb = resize(&rgb, h, w, 3, size.0, size.1);
    Frame {
        height: size.0,
        width: size.1,
        rgb,
        capture_ns: now_ns(),
        header: None,
        camera_info: None,
    }
}

struct Synthetic {
    rng: overparam_base::Rng,
    size: (usize, usize),
}

impl FrameSource for Synthetic {
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        let s = overparam_data::scenes::render(self.size.0, self.size.1, &mut self.rng);
        Ok(Some(frame(s.image, s.height, s.width, self.size)))
    }
}

struct Nyu {
    split: overparam_data::nyuv2::NyuSplit,
    next: usize,
    size: (usize, usize),
}

impl FrameSource for Nyu {
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        if self.next >= self.split.len() {
            return Ok(None);
        }
        let s = self.split.get(self.next)?;
        self.next += 1;
        Ok(Some(frame(s.image, s.height, s.width, self.size)))
    }
}

struct Images {
    files: Vec<PathBuf>,
    next: usize,
    size: (usize, usize),
}

/// Decodes a PNG or JPEG file to H×W×3 f32 in [0, 1].
pub fn read_image(path: &Path) -> Result<(usize, usize, Vec<f32>)> {
    let bad = |m: String| Error::File {
        path: path.into(),
        message: m,
    };
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if ext == "png" {
        let mut dec = png::Decoder::new(std::io::Cursor::new(&bytes));
        dec.set_transformations(png::Transformations::normalize_to_color8());
        let mut r = dec.read_info().map_err(|e| bad(format!("PNG: {e}")))?;
        let info = r.info();
        let (w, h) = (info.width as usize, info.height as usize);
        if w == 0 || h == 0 || (w as u64) * (h as u64) > 1 << 26 {
            return Err(bad(format!("PNG of {w}×{h} pixels refused")));
        }
        let mut buf = vec![0u8; r.output_buffer_size()];
        let f = r
            .next_frame(&mut buf)
            .map_err(|e| bad(format!("PNG: {e}")))?;
        let ch = f.color_type.samples();
        let px = &buf[..f.buffer_size()];
        let rgb = (0..h * w)
            .flat_map(|i| {
                let p = &px[i * ch..(i + 1) * ch];
                let g = |k: usize| p[if ch >= 3 { k } else { 0 }] as f32 / 255.0;
                [g(0), g(1), g(2)]
            })
            .collect();
        Ok((h, w, rgb))
    } else {
        let mut dec = jpeg_decoder::Decoder::new(std::io::Cursor::new(&bytes));
        let px = dec.decode().map_err(|e| bad(format!("JPEG: {e}")))?;
        let info = dec
            .info()
            .ok_or_else(|| bad("JPEG without a frame header".into()))?;
        let (w, h) = (info.width as usize, info.height as usize);
        let rgb = match info.pixel_format {
            jpeg_decoder::PixelFormat::RGB24 => px.iter().map(|&v| v as f32 / 255.0).collect(),
            jpeg_decoder::PixelFormat::L8 => {
                px.iter().flat_map(|&v| [v as f32 / 255.0; 3]).collect()
            }
            f => return Err(bad(format!("JPEG pixel format {f:?} is not supported"))),
        };
        Ok((h, w, rgb))
    }
}

impl FrameSource for Images {
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        let Some(p) = self.files.get(self.next) else {
            return Ok(None);
        };
        self.next += 1;
        let (h, w, rgb) = read_image(p)?;
        Ok(Some(frame(rgb, h, w, self.size)))
    }
}

struct ZenohFrames {
    sub: Subscriber<FifoChannelHandler<Sample>>,
    size: (usize, usize),
    wait: Wait,
    events: Arc<dyn Progress>,
}

impl FrameSource for ZenohFrames {
    /// Waits for the next valid camera frame; `None` after the wait's timeout without one, or
    /// once its stop is requested. Invalid samples are reported as events and skipped.
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        let t0 = Instant::now();
        loop {
            let Some(slice) = self.wait.slice(t0) else {
                return Ok(None);
            };
            let Some(s) = self.sub.recv_timeout(slice)? else {
                continue;
            };
            let m = match wire::decode(&s.payload().to_bytes()) {
                Ok(m) if m.task == Task::Camera && m.shape.len() == 3 && m.shape[2] == 3 => m,
                Ok(m) => {
                    self.events.event(&format!(
                        "source {}: skipped a {} message of shape {:?} (want image H×W×3)",
                        s.key_expr(),
                        m.task.name(),
                        m.shape
                    ));
                    continue;
                }
                Err(e) => {
                    self.events.event(&format!(
                        "source {}: skipped an invalid frame: {e}",
                        s.key_expr()
                    ));
                    continue;
                }
            };
            let rgb = match m.data {
                TensorData::U8(v) => v.iter().map(|&x| x as f32 / 255.0).collect(),
                TensorData::F32(v) => v,
            };
            let mut f = frame(rgb, m.shape[0], m.shape[1], self.size);
            if m.stamps.capture_ns > 0 {
                f.capture_ns = m.stamps.capture_ns;
            }
            return Ok(Some(f));
        }
    }
}

/// The newest sample of a subscription and how many arrived and were replaced: zenoh's
/// callback overwrites it, so however slow the model, at most one frame waits.
#[derive(Default)]
struct Latest {
    slot: Mutex<(Option<Sample>, SourceStats)>,
    ready: Condvar,
}

impl Latest {
    fn put(&self, s: Sample) {
        let mut g = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        g.1.received += 1;
        if g.0.replace(s).is_some() {
            g.1.skipped += 1;
        }
        self.ready.notify_one();
    }
    /// The newest sample, waiting up to `timeout` for one.
    fn take(&self, timeout: Duration) -> Option<Sample> {
        let g = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        let (mut g, _) = self
            .ready
            .wait_timeout_while(g, timeout, |(s, _)| s.is_none())
            .unwrap_or_else(|e| e.into_inner());
        g.0.take()
    }
    fn stats(&self) -> SourceStats {
        self.slot.lock().unwrap_or_else(|e| e.into_inner()).1
    }
}

/// The entity id of the camera subscription in its liveliness token; the publisher's entities
/// are the node (0) and its outputs (1, 2, 3), and ids need only be unique in the session.
const SOURCE_ENTITY_ID: u32 = 100;

struct Ros2Frames {
    key: String,
    latest: Arc<Latest>,
    _sub: Subscriber<()>,
    _token: zenoh::liveliness::LivelinessToken,
    /// The camera's calibration, kept newest-only like the frames (undecodable ones dropped).
    info: Arc<Mutex<Option<crate::msgs::CameraInfo>>>,
    _info_sub: Subscriber<()>,
    _info_token: zenoh::liveliness::LivelinessToken,
    size: (usize, usize),
    wait: Wait,
    /// Refusals so far; the first of each kind is reported as an event.
    invalid: u64,
    reported: BTreeSet<String>,
    events: Arc<dyn Progress>,
}

impl Ros2Frames {
    /// One sample as a frame: rmw_zenoh's attachment, the Image CDR, the camera encodings.
    fn decode(&self, s: &Sample) -> Result<Frame> {
        // rmw_zenoh's subscription drops samples without the attachment
        // (rmw_subscription_data.cpp), so an rmw_zenoh publisher always sends one.
        let a = s
            .attachment()
            .ok_or_else(|| Error::Malformed("no rmw_zenoh attachment".into()))?;
        ros2::parse_attachment(&a.to_bytes())?;
        let img = ros2::parse_image_cdr(&s.payload().to_bytes())?;
        let (h, w, rgb) = ros2::camera_rgb(&img)?;
        let mut f = frame(rgb, h, w, self.size);
        f.capture_ns = img.header.stamp.to_ns();
        f.header = Some(img.header);
        f.camera_info = self.info.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Ok(f)
    }
}

impl FrameSource for Ros2Frames {
    /// Waits for the newest valid frame; `None` after the wait's timeout without one, or once
    /// its stop is requested. A refused sample is counted, and the first of each kind (per
    /// encoding, for unsupported ones) is reported on stderr.
    fn next_frame(&mut self) -> Result<Option<Frame>> {
        let t0 = Instant::now();
        loop {
            let Some(slice) = self.wait.slice(t0) else {
                return Ok(None);
            };
            let Some(s) = self.latest.take(slice) else {
                continue;
            };
            match self.decode(&s) {
                Ok(f) => return Ok(Some(f)),
                Err(e) => {
                    self.invalid += 1;
                    let kind = match &e {
                        Error::UnsupportedEncoding(enc) => format!("encoding {enc}"),
                        Error::Malformed(m) if m.contains("attachment") => "attachment".into(),
                        Error::Malformed(_) => "image".into(),
                        _ => "cdr".into(),
                    };
                    if self.reported.insert(kind) {
                        self.events.event(&format!(
                            "source {}: refused a frame: {e} (further ones like it are counted, not reported)",
                            self.key
                        ));
                    }
                }
            }
        }
    }
    fn stats(&self) -> SourceStats {
        SourceStats {
            invalid: self.invalid,
            ..self.latest.stats()
        }
    }
}

/// Opens a source producing frames of `size` (H, W); a `ros2:` topic is resolved in domain 0
/// at the root namespace, and skipped or refused samples are only counted ([`open_with`] takes
/// the names and where to report them).
pub fn open(
    spec: &SourceSpec,
    size: (usize, usize),
    session: Option<&zenoh::Session>,
) -> Result<Box<dyn FrameSource>> {
    open_with(
        spec,
        size,
        session,
        &Ros2Names::new(0, "", "overparam"),
        Arc::new(Silent),
        Wait::default(),
    )
}

/// How long a camera source (`zenoh:`, `ros2:`) waits for a frame before it ends, and what
/// else ends the wait.
#[derive(Clone, Copy, Debug)]
pub struct Wait {
    /// `None`: forever (a parked car's camera may be silent for long).
    pub timeout: Option<Duration>,
    /// Polled while waiting: `true` ends the wait as a timeout would (e.g. Ctrl-C).
    pub stop: fn() -> bool,
}

impl Default for Wait {
    /// 10 s, and nothing else stops it.
    fn default() -> Self {
        Self {
            timeout: Some(Duration::from_secs(10)),
            stop: || false,
        }
    }
}

impl Wait {
    /// How often a wait looks at `stop`.
    const SLICE: Duration = Duration::from_millis(200);

    /// The next slice to wait for a sample, started at `t0`; `None` when the wait is over.
    fn slice(&self, t0: Instant) -> Option<Duration> {
        if (self.stop)() {
            return None;
        }
        match self.timeout {
            None => Some(Self::SLICE),
            Some(t) => t
                .checked_sub(t0.elapsed())
                .filter(|r| !r.is_zero())
                .map(|r| r.min(Self::SLICE)),
        }
    }
}

/// [`open`] with the ROS 2 domain, namespace and node a `ros2:` topic is resolved in and its
/// subscription appears under; a subscribing source reports the samples it skips or refuses
/// to `events` (the first of each kind, for `ros2:`).
pub fn open_with(
    spec: &SourceSpec,
    size: (usize, usize),
    session: Option<&zenoh::Session>,
    names: &Ros2Names,
    events: Arc<dyn Progress>,
    wait: Wait,
) -> Result<Box<dyn FrameSource>> {
    Ok(match spec {
        SourceSpec::Synthetic { seed } => Box::new(Synthetic {
            rng: overparam_base::Rng::new(*seed),
            size,
        }),
        SourceSpec::Nyuv2(dir) => Box::new(Nyu {
            split: overparam_data::nyuv2::NyuSplit::open(dir, "val")?,
            next: 0,
            size,
        }),
        SourceSpec::Images(dir) => {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| Error::File {
                    path: dir.clone(),
                    message: e.to_string(),
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    matches!(
                        p.extension()
                            .and_then(|e| e.to_str())
                            .map(|e| e.to_ascii_lowercase())
                            .as_deref(),
                        Some("png" | "jpg" | "jpeg")
                    )
                })
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(Error::File {
                    path: dir.clone(),
                    message: "no .png, .jpg or .jpeg files".into(),
                });
            }
            Box::new(Images {
                files,
                next: 0,
                size,
            })
        }
        SourceSpec::Zenoh(key) => {
            let s = session.ok_or_else(|| Error::Source("zenoh:KEY needs a session".into()))?;
            Box::new(ZenohFrames {
                sub: s
                    .declare_subscriber(key.clone())
                    .with(zenoh::handlers::FifoChannel::new(8))
                    .wait()?,
                size,
                wait,
                events,
            })
        }
        SourceSpec::Ros2(topic) => {
            let s = session.ok_or_else(|| Error::Source("ros2:TOPIC needs a session".into()))?;
            let fq = names.resolve_topic(topic)?;
            // The exact key rmw_zenoh's subscription declares: the type hash in it means only
            // sensor_msgs/msg/Image of this definition matches.
            let key = names.topic_key(&fq);
            let latest = Arc::new(Latest::default());
            let l = latest.clone();
            let sub = s
                .declare_subscriber(key.clone())
                .callback(move |sample| l.put(sample))
                .wait()?;
            // Best effort, depth 1: what this subscription does (keeps the newest), and
            // compatible with reliable and best-effort camera publishers alike.
            let token = names.subscription_token(
                &s.zid().to_string(),
                0,
                SOURCE_ENTITY_ID,
                &fq,
                &ros2::qos_string(false, 1),
            );
            // The calibration on the image's sibling topic, `camera_info` (image_transport's
            // convention: /camera/image_raw → /camera/camera_info).
            let info_topic = match fq.rsplit_once('/') {
                Some((dir, _)) => format!("{dir}/camera_info"),
                None => "/camera_info".into(),
            };
            let t = crate::msgs::TypeKey::of(crate::msgs::CAMERA_INFO)?;
            let info = Arc::new(Mutex::new(None));
            let i = info.clone();
            let info_sub = s
                .declare_subscriber(names.typed_key(&info_topic, &t.dds_name, &t.hash))
                .callback(move |sample| {
                    if let Ok(c) = crate::msgs::from_cdr(&sample.payload().to_bytes()) {
                        *i.lock().unwrap_or_else(|e| e.into_inner()) = Some(c);
                    }
                })
                .wait()?;
            let qos = ros2::qos_string(false, 1);
            let zid = s.zid().to_string();
            let info_token = names.typed_subscription_token(ros2::Endpoint::typed(
                &zid,
                0,
                SOURCE_ENTITY_ID + 1,
                &info_topic,
                &t,
                &qos,
            ));
            Box::new(Ros2Frames {
                key,
                latest,
                _sub: sub,
                _token: s.liveliness().declare_token(token).wait()?,
                info,
                _info_sub: info_sub,
                _info_token: s.liveliness().declare_token(info_token).wait()?,
                size,
                wait,
                invalid: 0,
                reported: BTreeSet::new(),
                events,
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

    /// A wait ends at its timeout, waits on with none, and ends when its stop is requested.
    #[test]
    fn waits_end_at_the_timeout_or_the_stop_and_forever_waits_on() {
        let t0 = Instant::now();
        let timed = Wait {
            timeout: Some(Duration::from_millis(50)),
            stop: || false,
        };
        assert!(
            timed
                .slice(t0)
                .is_some_and(|s| s <= Duration::from_millis(50))
        );
        assert_eq!(timed.slice(t0 - Duration::from_secs(1)), None);
        let forever = Wait {
            timeout: None,
            stop: || STOP.load(std::sync::atomic::Ordering::SeqCst),
        };
        assert_eq!(
            forever.slice(t0 - Duration::from_secs(3600)),
            Some(Wait::SLICE)
        );
        STOP.store(true, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(forever.slice(t0), None);
    }

    #[test]
    fn parses_source_specs() {
        assert_eq!(
            "synthetic".parse::<SourceSpec>().unwrap(),
            SourceSpec::Synthetic { seed: 0 }
        );
        assert_eq!(
            "synthetic:7".parse::<SourceSpec>().unwrap(),
            SourceSpec::Synthetic { seed: 7 }
        );
        assert_eq!(
            "images:/x".parse::<SourceSpec>().unwrap(),
            SourceSpec::Images("/x".into())
        );
        assert_eq!(
            "ros2:/camera/image_raw".parse::<SourceSpec>().unwrap(),
            SourceSpec::Ros2("/camera/image_raw".into())
        );
        assert!("ros2:".parse::<SourceSpec>().is_err());
        assert!("nyuv2:".parse::<SourceSpec>().is_err());
        assert!("webcam".parse::<SourceSpec>().is_err());
    }

    #[test]
    fn resize_keeps_constants_and_matches_a_hand_example() {
        let c = vec![0.25f32; 4 * 6 * 3];
        assert!(
            resize(&c, 4, 6, 3, 7, 5)
                .iter()
                .all(|&v| (v - 0.25).abs() < 1e-6)
        );
        // 1×2 → 1×4, half-pixel: [a, .75a+.25b, .25a+.75b, b].
        let r = resize(&[0.0, 1.0], 1, 2, 1, 1, 4);
        assert_eq!(r, vec![0.0, 0.25, 0.75, 1.0]);
    }

    #[test]
    fn png_images_decode_as_written() {
        let d = tempfile::tempdir().unwrap();
        let rgb: Vec<u8> = (0..2 * 3 * 3).map(|i| (i * 10) as u8).collect();
        overparam_data::png::write_rgb(&d.path().join("a.png"), 3, 2, &rgb).unwrap();
        let (h, w, px) = read_image(&d.path().join("a.png")).unwrap();
        assert_eq!((h, w), (2, 3));
        for (a, b) in px.iter().zip(&rgb) {
            assert!((a - *b as f32 / 255.0).abs() < 1e-6);
        }
        std::fs::write(d.path().join("b.png"), b"\x89PNG garbage").unwrap();
        let e = read_image(&d.path().join("b.png")).unwrap_err().to_string();
        assert!(e.contains("b.png"), "{e}");
    }
}

//! Frames in, model outputs out, published: the loop behind `overparam bridge run`.

use std::path::Path;
use std::time::{Duration, Instant};

use overparam_base::Role;
use overparam_engine::export::{ExportOptions, Precision, export, to_bytes};
use overparam_engine::runtime::{OrtRuntime, Output, Provider};
use overparam_fuse::AnySpec;

use crate::error::{Error, Result};
use crate::publisher::{FrameOutputs, PerceptionPublisher, TopicQos};
use crate::session::now_ns;
use crate::source::{Frame, FrameSource};
use crate::wire::{self, Stamps, Task, TensorData};

/// A deploy model on the CPU runtime (ONNX Runtime).
pub struct Model {
    rt: OrtRuntime,
    /// Input (H, W).
    pub size: (usize, usize),
    /// Every output by name with the role it is published by.
    pub roles: Vec<(String, Role)>,
    /// The topics its outputs fill.
    pub tasks: Vec<Task>,
    /// `int8` (Q/DQ nodes), `fp16` or `fp32`, read from the graph.
    pub precision: &'static str,
    /// The runtime and its execution provider, as health reports name it.
    pub runtime: String,
    /// Bytes one frame's outputs are published as (tensor data, headers left out).
    pub frame_bytes: usize,
    /// The class count of each output that carries classes (`class_logits`,
    /// `segmentation_logits`), by name.
    pub classes: Vec<(String, usize)>,
}

/// Classes a classifier's topic carries, best first.
pub const TOP_K: usize = 5;

impl Model {
    /// Loads an ONNX file, or a deploy checkpoint (exported to FP32 ONNX in memory), each
    /// output published by the role its name implies ([`Role::implied_by`]).
    pub fn load(path: &Path, threads: Option<usize>, provider: &Provider) -> Result<Self> {
        Self::load_with_roles(path, threads, provider, &[])
    }

    /// [`Model::load`] with roles given by output name (`--output NAME=ROLE`) over the implied
    /// ones.
    pub fn load_with_roles(
        path: &Path,
        threads: Option<usize>,
        provider: &Provider,
        roles: &[(String, Role)],
    ) -> Result<Self> {
        let bytes = if path.extension().and_then(|e| e.to_str()) == Some("onnx") {
            // External data is read from beside the model, whatever the working directory.
            overparam_engine::onnx_file::model_bytes(path)?
        } else {
            let ck = overparam_fuse::checkpoint::load(path)?;
            let AnySpec::Deploy(spec) = ck.spec else {
                return Err(Error::File {
                    path: path.into(),
                    message: "a train-time checkpoint; fold it first (overparam fuse)".into(),
                });
            };
            to_bytes(&export(
                &spec,
                &ck.weights,
                &ExportOptions::new(Precision::Fp32),
            )?)
        };
        Self::from_onnx_with_roles(&bytes, threads, provider, roles)
    }

    pub fn from_onnx(bytes: &[u8], threads: Option<usize>, provider: &Provider) -> Result<Self> {
        Self::from_onnx_with_roles(bytes, threads, provider, &[])
    }

    /// Refuses a role for an output the model does not have, and an output whose shape its
    /// role cannot publish (probed once on a zero image).
    pub fn from_onnx_with_roles(
        bytes: &[u8],
        threads: Option<usize>,
        provider: &Provider,
        given: &[(String, Role)],
    ) -> Result<Self> {
        let precision = match overparam_engine::runtime::graph_precisions(bytes)? {
            (_, true) => "int8",
            (true, false) => "fp16",
            (false, false) => "fp32",
        };
        let mut rt = OrtRuntime::with_provider(bytes, threads, provider)?;
        let s = rt.input_shape().to_vec();
        if s.len() != 4 || s[0] != 1 || s[1] != 3 {
            return Err(Error::Source(format!(
                "the bridge runs image models with input 1×3×H×W, this one takes {s:?}"
            )));
        }
        let size = (s[2], s[3]);
        let probe = rt.probe()?;
        let names: Vec<&str> = probe.iter().map(|(n, ..)| n.as_str()).collect();
        for (n, _) in given {
            if !names.contains(&n.as_str()) {
                return Err(Error::InvalidOption(format!(
                    "--output {n}: the model has no output {n:?} (its outputs: {})",
                    names.join(", ")
                )));
            }
        }
        let roles: Vec<(String, Role)> = names
            .iter()
            .map(|&n| (n.to_string(), role_of(n, given)))
            .collect();
        let classes = probe
            .iter()
            .zip(&roles)
            .filter(|((_, s, _), (_, r))| {
                matches!(r, Role::ClassLogits | Role::SegmentationLogits) && s.len() >= 2
            })
            .map(|((n, s, _), _)| (n.clone(), s[1]))
            .collect();
        let probed = outputs_to_tensors(probe, &roles)?;
        let frame_bytes = probed
            .iter()
            .map(|(_, _, d)| d.len() * d.dtype().size())
            .sum();
        let tasks = probed.into_iter().map(|(t, ..)| t).collect();
        Ok(Model {
            rt,
            size,
            roles,
            tasks,
            precision,
            runtime: format!("onnxruntime {}", provider.name()),
            frame_bytes,
            classes,
        })
    }

    /// The class names to publish ([`class_names`] of this model's class outputs).
    pub fn class_names(&self, file: Option<&Path>) -> Result<Option<Vec<String>>> {
        class_names(&self.classes, file)
    }

    /// Points `cfg` at this model's outputs: a topic per task with QoS `qos`, and the raw
    /// outputs' names for their topics.
    pub fn configure(&self, cfg: &mut crate::publisher::PublishConfig, qos: TopicQos) {
        cfg.qos = self.tasks.iter().map(|&t| (t, qos)).collect();
        cfg.raw = self.raw_outputs().iter().map(|s| s.to_string()).collect();
    }

    /// Outputs whose role is `raw`, in model order: the i-th is published as
    /// [`Task::Raw`]`(i)` on `raw/<name>` ([`crate::publisher::PublishConfig::raw`]).
    pub fn raw_outputs(&self) -> Vec<&str> {
        self.roles
            .iter()
            .filter(|(_, r)| *r == Role::Raw)
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// Runs one frame (already at the model's size).
    pub fn infer(&mut self, f: &Frame) -> Result<Vec<(Task, Vec<usize>, TensorData)>> {
        let (h, w) = self.size;
        if (f.height, f.width) != (h, w) {
            return Err(Error::Source(format!(
                "frame {}×{}, the model takes {h}×{w}",
                f.height, f.width
            )));
        }
        // HWC → CHW.
        let mut x = vec![0f32; 3 * h * w];
        for i in 0..h * w {
            for c in 0..3 {
                x[c * h * w + i] = f.rgb[i * 3 + c];
            }
        }
        outputs_to_tensors(self.rt.run(&x)?, &self.roles)
    }
}

/// The class names to publish: one per line of `file` (`--labels`, class id = line
/// number from 0; trailing blank lines ignored), which must name exactly as many classes
/// as every class output (`classes`: name, class count) has, else `class_<id>`. `None` when no output carries classes
/// (and then a file is refused).
pub fn class_names(
    classes: &[(String, usize)],
    file: Option<&Path>,
) -> Result<Option<Vec<String>>> {
    let Some(&(_, n)) = classes.iter().max_by_key(|(_, c)| *c) else {
        return match file {
            Some(f) => Err(Error::File {
                path: f.into(),
                message: "--labels: the model has no class_logits or segmentation_logits output to name the classes of".into(),
            }),
            None => Ok(None),
        };
    };
    let Some(f) = file else {
        return Ok(Some((0..n).map(|i| format!("class_{i}")).collect()));
    };
    let text = std::fs::read_to_string(f).map_err(|e| Error::File {
        path: f.into(),
        message: format!("reading the class names: {e}"),
    })?;
    let names: Vec<String> = text
        .trim_end()
        .lines()
        .map(|l| l.trim().to_string())
        .collect();
    if let Some(i) = names.iter().position(String::is_empty) {
        return Err(Error::File {
            path: f.into(),
            message: format!("line {} is empty: one class name per line", i + 1),
        });
    }
    for (out, c) in classes {
        if names.len() != *c {
            return Err(Error::File {
                path: f.into(),
                message: format!(
                    "{} class names, but output {out} has {c} classes",
                    names.len()
                ),
            });
        }
    }
    Ok(Some(names))
}

/// The role `name` is given in `roles`, else the one its name implies.
fn role_of(name: &str, roles: &[(String, Role)]) -> Role {
    roles
        .iter()
        .find(|(n, _)| n == name)
        .map_or_else(|| Role::implied_by(name), |(_, r)| *r)
}

/// Named NCHW outputs (batch 1) → published tensors, by each output's role:
/// - `segmentation_logits` 1×C×H×W (C ≤ 256): the argmax class map H×W u8, and the same drawn
///   in the class palette, H×W×3 u8 ([`Task::SegmentationColor`]);
/// - `depth` 1×1×H×W: metres, H×W f32, NaN where a value is not a positive finite number
///   (REP 118: invalid depth is NaN);
/// - `normals` 1×3×H×W: H×W×3 f32;
/// - `class_logits` 1×C or 1×C×1×1: the [`TOP_K`] best classes with softmax scores, k×2 f32
///   (class id, score), best first;
/// - `raw`: the tensor as it is (1 to 4 dimensions), the i-th raw output as [`Task::Raw`]`(i)`.
///
/// Outputs named in neither `roles` nor by role are raw. An output whose shape its role cannot
/// carry is an error, as are more than [`wire::MAX_RAW`] raw outputs.
pub fn outputs_to_tensors(
    outs: Vec<Output>,
    roles: &[(String, Role)],
) -> Result<Vec<(Task, Vec<usize>, TensorData)>> {
    let mut r = vec![];
    let mut raw = 0usize;
    for (name, shape, data) in outs {
        let role = role_of(&name, roles);
        let bad = |want: &str| {
            Error::Source(format!(
                "output {name} as {}: shape {shape:?}, want {want}",
                role.name()
            ))
        };
        match role {
            Role::Raw => {
                if shape.is_empty() || shape.len() > 4 {
                    return Err(bad("1 to 4 dimensions (the native tensor format's limit)"));
                }
                if raw == wire::MAX_RAW {
                    return Err(Error::Source(format!(
                        "more than {} raw outputs; give the extra ones a role with --output NAME=ROLE",
                        wire::MAX_RAW
                    )));
                }
                r.push((Task::Raw(raw as u8), shape, TensorData::F32(data)));
                raw += 1;
            }
            Role::ClassLogits => {
                let c = match shape[..] {
                    [1, c] | [1, c, 1, 1] => c,
                    _ => return Err(bad("1×C or 1×C×1×1")),
                };
                if c == 0 {
                    return Err(bad("at least one class"));
                }
                r.push((Task::Classes, vec![c.min(TOP_K), 2], top_k(&data, TOP_K)));
            }
            Role::SegmentationLogits => {
                let [1, c, h, w] = shape[..] else {
                    return Err(bad("1×C×H×W"));
                };
                if c == 0 || c > 256 {
                    return Err(bad("1 to 256 classes (a u8 class map)"));
                }
                let hw = h * w;
                let map: Vec<u8> = (0..hw)
                    .map(|i| {
                        let mut best = 0;
                        for k in 1..c {
                            if data[k * hw + i] > data[best * hw + i] {
                                best = k;
                            }
                        }
                        best as u8
                    })
                    .collect();
                let colour = map
                    .iter()
                    .flat_map(|&k| overparam_data::png::class_colour(k as f32))
                    .collect();
                r.push((Task::Segmentation, vec![h, w], TensorData::U8(map)));
                r.push((
                    Task::SegmentationColor,
                    vec![h, w, 3],
                    TensorData::U8(colour),
                ));
            }
            Role::Depth => {
                let [1, 1, h, w] = shape[..] else {
                    return Err(bad("1×1×H×W"));
                };
                let d = data
                    .into_iter()
                    .map(|v| {
                        if v.is_finite() && v > 0.0 {
                            v
                        } else {
                            f32::NAN
                        }
                    })
                    .collect();
                r.push((Task::Depth, vec![h, w], TensorData::F32(d)));
            }
            Role::Normals => {
                let [1, 3, h, w] = shape[..] else {
                    return Err(bad("1×3×H×W"));
                };
                let hw = h * w;
                let hwc = (0..hw * 3).map(|j| data[(j % 3) * hw + j / 3]).collect();
                r.push((Task::Normals, vec![h, w, 3], TensorData::F32(hwc)));
            }
        }
    }
    if r.is_empty() {
        return Err(Error::Source(
            "the model has no output to publish: name one's role with --output NAME=ROLE (class_logits, segmentation_logits, depth, normals)".into(),
        ));
    }
    Ok(r)
}

/// The `k` best of `logits` with softmax probabilities, as (id, score) pairs, best first
/// (ties to the lower id).
fn top_k(logits: &[f32], k: usize) -> TensorData {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let z: f64 = logits.iter().map(|&v| ((v - m) as f64).exp()).sum();
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    TensorData::F32(
        idx.iter()
            .take(k)
            .flat_map(|&i| [i as f32, (((logits[i] - m) as f64).exp() / z) as f32])
            .collect(),
    )
}

#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Stop after this many frames (a finite source also stops at its end); at least 1.
    pub frames: Option<u64>,
    /// Pace the loop to this rate, at least [`MIN_FPS`]; `None` runs as fast as inference
    /// allows.
    pub fps: Option<f64>,
}

/// The slowest pace `fps` may ask for: one frame per 100 s. Slower is a mistake, not a rate
/// (a loop waiting hours between frames looks hung).
pub const MIN_FPS: f64 = 0.01;

impl RunOptions {
    /// Refuses a frame count of 0 and a rate that is not a finite number ≥ [`MIN_FPS`].
    pub fn check(&self) -> Result<()> {
        if self.frames == Some(0) {
            return Err(Error::InvalidOption(
                "frames: 0 frames is nothing to run (leave it out to run until the source ends)"
                    .into(),
            ));
        }
        if let Some(f) = self.fps
            && !(f.is_finite() && f >= MIN_FPS)
        {
            return Err(Error::InvalidOption(format!(
                "fps {f}: the rate must be a finite number of frames per second, at least {MIN_FPS} (leave it out to run as fast as inference allows)"
            )));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct RunSummary {
    pub frames: u64,
    pub seconds: f64,
    pub fps: f64,
    /// NaN when no frame ran.
    pub inference_ms_p50: f64,
    pub inference_ms_p99: f64,
    /// Output counters and the source's (`input_*`: frames received, skipped for a newer
    /// one, refused).
    pub counters: crate::counters::CounterSnapshot,
    /// The loop ended because `should_stop` said so ([`run_until`]).
    pub stopped: bool,
}

/// The loop: next frame → inference → publish, paced to `fps`. `on_frame` sees each frame id
/// (progress bars).
pub fn run(
    model: &mut Model,
    source: &mut dyn FrameSource,
    publisher: &PerceptionPublisher,
    opts: &RunOptions,
    on_frame: impl FnMut(u64),
) -> Result<RunSummary> {
    run_until(model, source, publisher, opts, || false, on_frame)
}

/// [`run`] that also ends, with its summary, once `should_stop` returns true (checked before
/// each frame and while pacing; a signal handler's flag).
pub fn run_until(
    model: &mut Model,
    source: &mut dyn FrameSource,
    publisher: &PerceptionPublisher,
    opts: &RunOptions,
    should_stop: impl Fn() -> bool,
    mut on_frame: impl FnMut(u64),
) -> Result<RunSummary> {
    opts.check()?;
    let t0 = Instant::now();
    let mut infer_ms = vec![];
    let mut id = 0u64;
    let mut stopped = false;
    while opts.frames.is_none_or(|n| id < n) {
        if should_stop() {
            stopped = true;
            break;
        }
        let Some(frame) = source.next_frame()? else {
            break;
        };
        let infer_start_ns = now_ns();
        let tensors = model.infer(&frame)?;
        let infer_end_ns = now_ns();
        infer_ms.push((infer_end_ns - infer_start_ns) as f64 / 1e6);
        // Before publishing, so the status message carries the input counts too.
        publisher.counters().set_input(&source.stats());
        publisher.publish_owned(FrameOutputs {
            frame_id: id,
            header: frame.header,
            camera_info: frame.camera_info,
            stamps: Stamps {
                capture_ns: frame.capture_ns,
                infer_start_ns,
                infer_end_ns,
                publish_ns: 0,
            },
            tensors,
        })?;
        on_frame(id);
        id += 1;
        if let Some(fps) = opts.fps {
            let due = Duration::from_secs_f64(id as f64 / fps);
            // Wait in short slices, so a stop request is not held up by the pace.
            while let Some(wait) = due.checked_sub(t0.elapsed()) {
                if should_stop() {
                    break;
                }
                std::thread::sleep(wait.min(Duration::from_millis(50)));
            }
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    publisher.counters().set_input(&source.stats());
    Ok(RunSummary {
        frames: id,
        seconds,
        fps: id as f64 / seconds.max(1e-9),
        inference_ms_p50: crate::listener::percentile(&infer_ms, 50.0),
        inference_ms_p99: crate::listener::percentile(&infer_ms, 99.0),
        counters: publisher.counters().snapshot(),
        stopped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_become_channel_last_tensors() {
        // 2 classes over 1×2 pixels; depth; normals with distinct channel values.
        let outs = vec![
            (
                "segmentation".to_string(),
                vec![1, 2, 1, 2],
                vec![0.0, 5.0, 1.0, 2.0],
            ),
            ("depth".to_string(), vec![1, 1, 1, 2], vec![3.0, 4.0]),
            (
                "normals".to_string(),
                vec![1, 3, 1, 2],
                vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            ),
        ];
        let t = outputs_to_tensors(outs, &[]).unwrap();
        assert_eq!(
            t[0],
            (Task::Segmentation, vec![1, 2], TensorData::U8(vec![1, 0]))
        );
        let p = overparam_data::png::PALETTE;
        assert_eq!(
            t[1],
            (
                Task::SegmentationColor,
                vec![1, 2, 3],
                TensorData::U8([p[1], p[0]].concat())
            )
        );
        assert_eq!(
            t[2],
            (Task::Depth, vec![1, 2], TensorData::F32(vec![3.0, 4.0]))
        );
        assert_eq!(
            t[3],
            (
                Task::Normals,
                vec![1, 2, 3],
                TensorData::F32(vec![1.0, 3.0, 5.0, 2.0, 4.0, 6.0])
            )
        );
        // Outputs of no role go out as they are, numbered in model order.
        let t = outputs_to_tensors(
            vec![
                ("feat".into(), vec![1, 10], vec![0.5; 10]),
                ("depth".into(), vec![1, 1, 1, 1], vec![1.0]),
                ("aux".into(), vec![1, 2, 1, 1], vec![1.0, 2.0]),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(
            t[0],
            (Task::Raw(0), vec![1, 10], TensorData::F32(vec![0.5; 10]))
        );
        assert_eq!(t[1].0, Task::Depth);
        assert_eq!(
            t[2],
            (
                Task::Raw(1),
                vec![1, 2, 1, 1],
                TensorData::F32(vec![1.0, 2.0])
            )
        );
        let e = outputs_to_tensors(vec![("x".into(), vec![1, 1, 1, 1, 2], vec![0.0; 2])], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("raw") && e.contains("4 dimensions"), "{e}");
    }

    #[test]
    fn roles_decide_how_an_output_is_published() {
        // A classifier's logits (implied by the name): the top 5 with softmax scores.
        let logits: Vec<f32> = vec![0.0, 3.0, 1.0, 3.0, -1.0, 2.0, 0.5];
        let t =
            outputs_to_tensors(vec![("logits".into(), vec![1, 7], logits.clone())], &[]).unwrap();
        let (task, shape, TensorData::F32(v)) = &t[0] else {
            panic!("{t:?}")
        };
        assert_eq!((*task, shape.as_slice()), (Task::Classes, &[5, 2][..]));
        let ids: Vec<f32> = v.chunks(2).map(|c| c[0]).collect();
        assert_eq!(ids, [1.0, 3.0, 5.0, 2.0, 6.0]);
        let z: f64 = logits.iter().map(|&l| ((l - 3.0) as f64).exp()).sum();
        assert!((v[1] as f64 - 1.0 / z).abs() < 1e-6, "{v:?}");
        assert_eq!(v[1], v[3]);

        // The same tensor named otherwise, given its role; depth with invalid values as NaN.
        let roles = vec![
            ("head0".to_string(), Role::ClassLogits),
            ("d".to_string(), Role::Depth),
        ];
        let t = outputs_to_tensors(
            vec![
                ("head0".into(), vec![1, 2, 1, 1], vec![1.0, 0.0]),
                (
                    "d".into(),
                    vec![1, 1, 1, 4],
                    vec![2.0, 0.0, -1.0, f32::INFINITY],
                ),
            ],
            &roles,
        )
        .unwrap();
        assert_eq!(t[0].1, vec![2, 2]);
        let TensorData::F32(d) = &t[1].2 else {
            panic!()
        };
        assert_eq!(d[0], 2.0);
        assert!(d[1..].iter().all(|v| v.is_nan()), "{d:?}");

        // A role the shape cannot carry is named with both.
        for (role, shape) in [
            (Role::ClassLogits, vec![1, 3, 2, 2]),
            (Role::Depth, vec![1, 3, 2, 2]),
            (Role::Normals, vec![1, 1, 2, 2]),
            (Role::SegmentationLogits, vec![1, 12]),
        ] {
            let n: usize = shape.iter().product();
            let e = outputs_to_tensors(
                vec![("x".into(), shape.clone(), vec![0.0; n])],
                &[("x".into(), role)],
            )
            .unwrap_err()
            .to_string();
            assert!(
                e.contains(role.name()) && e.contains(&format!("{shape:?}")),
                "{e}"
            );
        }
    }

    #[test]
    fn class_names_come_from_a_file_that_fits_every_class_output() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("labels.txt");
        let outs = vec![("logits".to_string(), 3), ("segmentation".to_string(), 3)];
        assert_eq!(
            class_names(&outs, None).unwrap().unwrap(),
            ["class_0", "class_1", "class_2"]
        );
        assert_eq!(class_names(&[], None).unwrap(), None);
        std::fs::write(&f, "wall\n floor \nchair\n\n").unwrap();
        assert_eq!(
            class_names(&outs, Some(&f)).unwrap().unwrap(),
            ["wall", "floor", "chair"]
        );
        let e = class_names(&[("logits".into(), 4)], Some(&f))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("labels.txt") && e.contains("3 class names") && e.contains("4"),
            "{e}"
        );
        let e = class_names(&[], Some(&f)).unwrap_err().to_string();
        assert!(e.contains("no class_logits"), "{e}");
        std::fs::write(&f, "wall\n\nchair\n").unwrap();
        let e = class_names(&outs, Some(&f)).unwrap_err().to_string();
        assert!(e.contains("line 2 is empty"), "{e}");
        let e = class_names(&outs, Some(&d.path().join("none.txt")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("none.txt"), "{e}");
    }

    #[test]
    fn run_options_refuse_zero_frames_and_rates_that_are_not_rates() {
        let ok = |frames, fps| RunOptions { frames, fps }.check();
        assert!(ok(None, None).is_ok());
        assert!(ok(Some(1), Some(30.0)).is_ok());
        assert!(ok(None, Some(MIN_FPS)).is_ok());
        let e = ok(Some(0), None).unwrap_err().to_string();
        assert!(e.contains("0 frames"), "{e}");
        for fps in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e-9] {
            let e = ok(None, Some(fps)).unwrap_err().to_string();
            assert!(e.contains("fps") && e.contains("at least"), "{fps}: {e}");
        }
    }
}

//! The pipeline's report.md, one section per stage, rendered from the stages' data.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use overparam_config::files::METRICS_FILE;
use overparam_config::{Routine, TrainConfig};

use super::{
    Accuracy, AccuracyTable, Bridged, Fold, Latency, Options, Trained, Variant, WARMUP_RUNS,
};
use crate::Result;
use crate::metrics_csv::MetricsCsv;

pub(super) const BRIDGE_SKIPPED: &str = "## Bridge\n\nSkipped: a classifier has no dense outputs to publish (the bridge carries segmentation, depth and normals).\n\n";

pub fn routine_name(r: &Routine) -> &'static str {
    match r {
        Routine::R1 => "r1",
        Routine::R2 { .. } => "r2",
        Routine::R3 { .. } => "r3",
    }
}

/// Title, model, method, data and machine.
pub fn header(cfg: &TrainConfig, mtl: bool) -> String {
    let d = &cfg.data;
    format!(
        "# Pipeline report: {}\n\nModel `{}` (width {}) with method `{}`, routine `{}`, on {}. Machine: {} ({} threads for training).\n\n",
        cfg.run.name,
        cfg.model.describe(),
        cfg.model.width,
        cfg.model.method.kind.as_str(),
        routine_name(&cfg.routine),
        match (&d.dir, d.dataset, mtl) {
            (Some(dir), _, _) => format!("`{}`", dir.display()),
            // A named dataset without a directory is read from its system path.
            (None, Some(ds), false) => format!("`{}`", ds.system_dir().0.display()),
            (None, _, true) => format!(
                "synthetic NYUv2-layout scenes ({} train / {} val at {}×{})",
                d.synthetic_train, d.synthetic_test, d.synthetic_height, d.synthetic_width
            ),
            (None, None, false) => format!(
                "synthetic CIFAR-100 ({} train / {} test)",
                d.synthetic_train, d.synthetic_test
            ),
        },
        overparam_engine::latency::cpu_name(),
        cfg.run
            .threads
            .map(|t| t.to_string())
            .unwrap_or("default".into()),
    )
}

/// The imported network (`pipeline --from`) and its check against the original.
pub fn import(r: &crate::import::Report) -> String {
    let mut md = format!(
        "## Import\n\n`{}` ({}, opset {}): {} nodes, {} parameters, {} MACs per image; outputs {}.\n\n",
        r.model.display(),
        r.producer,
        r.opset,
        r.nodes,
        crate::si(r.params),
        crate::si(r.macs),
        r.outputs
            .iter()
            .map(|(n, role)| format!("`{n}` ({role})"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    match &r.unchecked {
        Some(why) => md += &format!("Not checked against the original: {why}.\n\n"),
        None => {
            md += "Against the original in ONNX Runtime on seeded inputs (measurements: about 1e-6 is fp32 rounding):\n\n| output | compared | rel | max abs |\n|---|---|---|---|\n";
            for c in &r.checks {
                md += &format!(
                    "| `{}` | {} | {:.2e} | {:.2e} |\n",
                    c.deviation.name, c.against, c.deviation.rel, c.deviation.max_abs
                );
            }
            md += "\n";
        }
    }
    md
}

/// Epochs and time, the training curves (written as PNGs next to the report), train vs deploy
/// metrics, and the multi-task validation panels.
pub fn training(cfg: &TrainConfig, t: &Trained, dir: &Path, mtl: bool) -> Result<String> {
    let mut md = format!(
        "## Training\n\n{} epochs{}.\n\n![training loss](training_curves.png)\n\n![validation metrics](training_metrics.png)\n\n",
        cfg.optim.epochs,
        if t.reused {
            " (reused from an earlier run of this pipeline)".to_string()
        } else {
            format!(", {:.0} s", t.seconds)
        }
    );
    let csv = MetricsCsv::read(&dir.join(METRICS_FILE))?;
    training_curves(&csv, mtl, &dir.join("training_curves.png"))?;
    md += &train_vs_deploy(&csv, mtl);
    if mtl {
        let mut panels: Vec<PathBuf> = std::fs::read_dir(dir.join("panels"))
            .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        panels.sort();
        if !panels.is_empty() {
            md += "Validation predictions (input | segmentation truth, prediction | depth truth, prediction | normals truth, prediction):\n\n";
            for p in panels {
                let rel = p.strip_prefix(dir).unwrap_or(&p);
                let _ = writeln!(md, "![panel]({})\n", rel.display());
            }
        }
    }
    Ok(md)
}

/// The columns of metrics.csv the curves and the train-vs-deploy table show.
struct Columns {
    losses: &'static [&'static str],
    metrics: &'static [&'static str],
    metrics_title: &'static str,
    compared: &'static [&'static str],
}

fn columns(mtl: bool) -> Columns {
    use overparam_base::Task;
    use overparam_base::task::NYU_METRIC_COLUMNS as C;
    if mtl {
        const LOSSES: [&str; 3] = [
            Task::Segmentation.loss_column(),
            Task::Depth.loss_column(),
            Task::Normals.loss_column(),
        ];
        // The fractions and depth errors share a scale; the angles in degrees do not.
        const PLOTTED: [&str; 6] = [C[0], C[1], C[2], C[3], C[6], C[8]];
        Columns {
            losses: &LOSSES,
            metrics: &PLOTTED,
            metrics_title: "validation metrics (fractions; depth errors in metres)",
            compared: &C,
        }
    } else {
        Columns {
            losses: &["train_loss", "test_loss"],
            metrics: &["train_top1_err", "test_top1_err"],
            metrics_title: "top-1 error %",
            compared: &["test_loss", "test_top1_err", "test_top5_err"],
        }
    }
}

/// Loss and validation metrics per epoch: `out` and `training_metrics.png` beside it.
fn training_curves(csv: &MetricsCsv, mtl: bool, out: &Path) -> Result<()> {
    use overparam_data::plot::{Series, line_chart};
    let c = columns(mtl);
    let pick = |names: &[&str]| {
        names
            .iter()
            .filter_map(|n| {
                Some(Series {
                    label: n.to_string(),
                    points: csv.series(n)?,
                })
            })
            .collect::<Vec<_>>()
    };
    line_chart("training loss per epoch", "epoch", "loss", &pick(c.losses)).save(out)?;
    line_chart(c.metrics_title, "epoch", "value", &pick(c.metrics))
        .save(&out.with_file_name("training_metrics.png"))?;
    Ok(())
}

/// The last epoch's test metrics of the train model next to the deploy model's (the trainers
/// add a `deploy` row after the fold).
fn train_vs_deploy(csv: &MetricsCsv, mtl: bool) -> String {
    let (Some(deploy), Some(train)) = (csv.deploy(), csv.epochs().last()) else {
        return String::new();
    };
    let mut md = String::from(
        "Test metrics of the train model (last epoch) and of the deploy model after the fold, both in libtorch on the training device:\n\n| metric | train model | deploy model |\n|---|---|---|\n",
    );
    for c in columns(mtl).compared {
        if let Some(k) = csv.column_index(c) {
            let cell = |r: &Vec<String>| r.get(k).map_or("–", String::as_str).to_string();
            let _ = writeln!(md, "| {c} | {} | {} |", cell(train), cell(deploy));
        }
    }
    md.push('\n');
    md
}

/// The verdict, sizes before and after, and the per-precision deviations.
pub fn fold(cfg: &TrainConfig, f: &Fold) -> String {
    let r = &f.folded.report;
    let v = &r.exact;
    let worst_block = v.worst_block().map_or(0.0, |d| d.rel);
    let worst_out = v.worst_output().map_or(0.0, |d| d.rel);
    let si = crate::si;
    let mut md = format!(
        "## Fold\n\n**Fold verified: {}** — exact in f64 on the CPU (the verdict, the same on every machine): {} conv blocks, worst block relative error {worst_block:.2e}, worst output {worst_out:.2e} (tolerance {:.0e}), random inputs, eval-mode BatchNorm with the trained statistics; the check took {:.2} s.\n\n| | parameters | MACs per image |\n|---|---|---|\n| train-time ({}) | {} | {} |\n| deployed (plain) | {} | {} |\n\n",
        if r.passed() { "yes" } else { "NO" },
        v.blocks.len(),
        v.output_tolerance,
        r.exact_seconds,
        cfg.model.method.kind.as_str(),
        si(f.train.total_params),
        si(f.train.total_macs),
        si(f.deploy.total_params),
        si(f.deploy.total_macs),
    );
    md += &fold_precision_table(r);
    md
}

/// The deploy model's deviation from the f64 reference per precision (measurements, not the
/// gate), with each precision's first-order bound; `fold.json` of the training run adds the
/// training device.
fn fold_precision_table(r: &overparam_fuse::verify::FoldReport) -> String {
    let mut md = format!(
        "Precision of the deploy model against the f64 train model (measurements, never the gate; bound = first-order estimate from the unit roundoff and the depth, {} nodes / {} layers, widest dot product {}):\n\n| precision | output | rel. error | abs. error | bound |\n|---|---|---|---|---|\n",
        r.depth.nodes, r.depth.layers, r.depth.max_fan_in
    );
    for m in &r.measured {
        for d in &m.outputs {
            if d.rel.is_nan() {
                let _ = writeln!(
                    md,
                    "| {} | {} | non-finite (overflow) | – | {:.1e} |",
                    m.precision, d.name, m.bound
                );
                continue;
            }
            let _ = writeln!(
                md,
                "| {} | {} | {:.2e} | {:.2e} | {:.1e} |",
                m.precision, d.name, d.rel, d.max_abs, m.bound
            );
        }
    }
    md.push('\n');
    md
}

/// The accuracy table per precision and the files written.
pub fn accuracy(a: &Accuracy) -> String {
    let mut md = String::new();
    let c = a.record.summary();
    match &a.table {
        AccuracyTable::Dense {
            scenes,
            calib_scenes,
            metrics,
        } => {
            let _ = writeln!(
                md,
                "## Accuracy per precision\n\n{scenes} validation scenes through ONNX Runtime (CPU); {c} on {calib_scenes} training scenes. Both INT8 models use the same thresholds: `int8 trt` is TensorRT's encoding (symmetric Q/DQ, int8 activations with zero point 0, kept layers FP16), `int8 cpu` the CPU encoding (uint8 activations, conv outputs quantised too, so ONNX Runtime fuses QLinearConv).\n"
            );
            md += "| metric | fp32 | fp16 | int8 trt | int8 cpu | int8 trt − fp32 | int8 cpu − fp32 |\n|---|---|---|---|---|---|---|\n";
            for (k, n) in overparam_engine::dense::METRICS.iter().enumerate() {
                let m = |i: usize| metrics[i][k];
                let _ = writeln!(
                    md,
                    "| {n} | {:.4} | {:.4} | {:.4} | {:.4} | {:+.4} | {:+.4} |",
                    m(0),
                    m(1),
                    m(2),
                    m(3),
                    m(2) - m(0),
                    m(3) - m(0)
                );
            }
        }
        AccuracyTable::Classification {
            images,
            calib_images,
            errors,
        } => {
            let _ = writeln!(
                md,
                "## Accuracy per precision\n\n{images} test images through ONNX Runtime (CPU); {c} on {calib_images} training images; `int8 trt` is TensorRT's encoding (symmetric Q/DQ), `int8 cpu` the CPU encoding (uint8, QLinearConv), with the same thresholds.\n\n| precision | top-1 err % | top-5 err % | top-1 drop vs fp32 |\n|---|---|---|---|",
            );
            let fp32 = errors[0].0;
            for (v, (top1, top5)) in a.models.iter().zip(errors) {
                let _ = writeln!(
                    md,
                    "| {} | {top1:.2} | {top5:.2} | {:+.2} |",
                    v.label,
                    top1 - fp32
                );
            }
        }
    }
    if a.record.auto.is_some() {
        md += "\nAuto calibration chose each tensor's rule for TensorRT's encoding (`int8 trt`); `int8 cpu` reuses those thresholds without a choice of its own, and the accuracy floor below judges both.\n";
    }
    md += "\nFiles: `model.onnx`, `model.fp16.onnx`, `model.int8.onnx` (for TensorRT), `model.int8.cpu.onnx` (for ONNX Runtime's CPU provider), `calib.json` (the INT8 thresholds both share).\n\n";
    md
}

/// The latency table, the published model and why, and the histogram.
pub fn latency(models: &[Variant], l: &Latency, threads: Option<usize>, o: &Options) -> String {
    let reports = &l.reports;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## Latency\n\nBatch 1, {} on {} ({} threads), {} timed runs after {WARMUP_RUNS} warm-up runs; budget **{} ms at p99**.\n\n| model | file | p50 ms | p90 ms | p99 ms | max ms | mean ms | images/s | within budget |\n|---|---|---|---|---|---|---|---|---|",
        reports[0].runtime,
        reports[0].device,
        threads.map(|t| t.to_string()).unwrap_or("default".into()),
        o.iters,
        o.budget_ms
    );
    for (v, r) in models.iter().zip(reports) {
        let _ = writeln!(
            md,
            "| {} | `{}` | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {} |",
            v.label,
            v.file,
            r.p50_ms,
            r.p90_ms,
            r.p99_ms,
            r.max_ms,
            r.mean_ms,
            r.throughput,
            if r.within_budget == Some(true) {
                "yes"
            } else {
                "**no**"
            }
        );
    }
    let (chosen, cr) = (&models[l.chosen], &reports[l.chosen]);
    // p50 of a model against fp32's (models[0]).
    let ratio = |label: &str| {
        models
            .iter()
            .zip(reports)
            .find(|(v, _)| v.label == label)
            .map_or(f64::NAN, |(_, r)| r.p50_ms / reports[0].p50_ms)
    };
    let _ = writeln!(
        md,
        "\n**Published model: `{}` ({})**, the fastest measured here: p50 {:.2} ms against {:.2} ms for fp32 ({:.2}×), p99 {:.2} ms ({} the {} ms budget). The pipeline measures every export on this machine's runtime and publishes with the lowest p50, because which one wins depends on the runtime: ONNX Runtime's CPU provider runs TensorRT's Q/DQ encoding by dequantising around FP32 kernels ({:.2}× fp32's p50 here), while the CPU encoding runs as fused int8 QLinearConv ({:.2}×); on a GPU, TensorRT fuses the Q/DQ model into int8 kernels, so `model.int8.onnx` is the one to build a plan from there.\n",
        chosen.file,
        chosen.label,
        cr.p50_ms,
        reports[0].p50_ms,
        cr.p50_ms / reports[0].p50_ms,
        cr.p99_ms,
        if cr.within_budget == Some(true) {
            "within"
        } else {
            "**over**"
        },
        o.budget_ms,
        ratio("int8 trt"),
        ratio("int8 cpu"),
    );
    md += &floor(models, l, o);
    md += "\n![latency histogram of the published model](latency_hist.png)\n\n";
    md
}

/// The accuracy floor: each model's loss against fp32, and why the published one was chosen.
fn floor(models: &[Variant], l: &Latency, o: &Options) -> String {
    let mut md = String::new();
    let (unit, limit) = if l.dense {
        (
            "worst relative loss over the dense metrics",
            format!(
                "{}% on each dense metric",
                o.max_drop.dense_relative * 100.0
            ),
        )
    } else {
        (
            "top-1 points",
            format!("{} points of top-1", o.max_drop.top1_points),
        )
    };
    let _ = writeln!(
        md,
        "\n**Accuracy floor** (`--max-drop`): a model is published only if it loses at most {limit} against fp32 on the evaluation split.\n\n| model | loss vs fp32 ({unit}) | within the floor | p50 ms |\n|---|---|---|---|"
    );
    for (i, v) in models.iter().enumerate() {
        let d = if l.dense {
            format!("{:.2}%", l.drops[i] * 100.0)
        } else {
            format!("{:+.2}", l.drops[i])
        };
        let _ = writeln!(
            md,
            "| {} | {d} | {} | {:.2} |",
            v.label,
            if l.within[i] { "yes" } else { "**no**" },
            l.reports[i].p50_ms
        );
    }
    let chosen = &models[l.chosen];
    let why = if l.chosen == l.fastest {
        format!(
            "`{}` is the fastest model, and it is within the floor.",
            chosen.label
        )
    } else {
        format!(
            "`{}` would be faster, but loses more than the floor allows; `{}` is the fastest of the models within it.",
            models[l.fastest].label, chosen.label
        )
    };
    let _ = writeln!(md, "\n{why}");
    md
}

/// What the listener received per topic.
pub fn bridge(model: &Variant, b: &Bridged) -> String {
    let s = &b.run;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "## Bridge\n\nThe published model (`{}`, {}) on {} synthetic frames ({}×{}), outputs published over zenoh (peer, tcp/127.0.0.1, multicast off, reliable + Block) as the native format on `overparam/cam0/{{segmentation,segmentation/color,depth,normals}}`, received by an in-process listener.\n\n**Received {} of {} messages** ({} frames × {} topics); sequence gaps {}, decode errors {}. Publishing ran at {:.1} frames/s (inference p50 {:.2} ms, p99 {:.2} ms).\n\n| topic | received | rate Hz | capture → received p50 ms | p99 ms |\n|---|---|---|---|---|",
        model.file,
        model.label,
        s.frames,
        b.size.0,
        b.size.1,
        b.received,
        b.expected,
        s.frames,
        b.topics,
        b.dropped,
        b.decode_errors,
        s.fps,
        s.inference_ms_p50,
        s.inference_ms_p99
    );
    for t in &b.per_topic {
        let _ = writeln!(
            md,
            "| `{}` | {} | {:.1} | {:.2} | {:.2} |",
            t.key, t.received, t.rate_hz, t.end_to_end_ms_p50, t.end_to_end_ms_p99
        );
    }
    md.push('\n');
    md
}

/// Whole time and how to reproduce.
pub fn footer(seconds: f64, o: &super::Options) -> String {
    let mut args = String::new();
    if let Some(f) = &o.from {
        args += &format!(" --from {}", f.display());
    }
    if let Some(m) = o.method {
        args += &format!(" --method {}", m.as_str());
    }
    if let Some(c) = &o.config {
        args += &format!(" --config {}", c.display());
    }
    format!("---\nWhole pipeline: {seconds:.0} s. Reproduce: `overparam pipeline{args}`.\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn train_vs_deploy_compares_the_last_epoch_with_the_deploy_row() {
        let csv = MetricsCsv::parse(
            "epoch,phase,lr,train_loss,train_top1_err,test_loss,test_top1_err,test_top5_err\n\
             1,r1,0.1,2,50,2,60,20\n2,r1,0.1,1,40,1.5,45,10\ndeploy,,,,,1.5,45.01,10\n",
        )
        .unwrap();
        let md = train_vs_deploy(&csv, false);
        assert!(md.contains("| test_top1_err | 45 | 45.01 |"), "{md}");
        assert!(!md.contains("| 60 |"), "{md}");
        // Without a deploy row (a run stopped before its fold) there is no table.
        assert_eq!(
            train_vs_deploy(&MetricsCsv::parse("epoch,test_loss\n1,2\n").unwrap(), false),
            ""
        );
    }
}

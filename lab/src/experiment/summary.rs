//! The summary of a grid directory: every finished `*/cell.json` merged into results.csv (one
//! row per cell), results.md (mean ± std per method), paired.csv (paired by seed against
//! plain) and three bar charts. Whatever has finished, from any machine.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use overparam_base::stats::{Paired, paired};
use overparam_data::plot::{Bar, bar_chart};
use overparam_engine::dense::METRICS;

use super::cell::{TASK_NYUV2, TOP1};
use super::{CELL_FILE, CellResult, Experiment, GRID_FILE};
use crate::{Error, Result};

/// The paired statistics against plain, one row per method.
pub const PAIRED_FILE: &str = "paired.csv";
pub const PAIRED_CSV_HEADER: &str =
    "paired_vs_plain,metric,pairs,mean_diff,se,t,p_t,below_plain,above_plain,p_sign";
pub const RESULTS_CSV: &str = "results.csv";
pub const RESULTS_MD: &str = "results.md";
const PLOT_METRIC: &str = "plot_metric.png";
const PLOT_TIME: &str = "plot_train_time.png";
const PLOT_INT8: &str = "plot_int8.png";

/// What [`summarize`] wrote: results.md's text and the files.
#[derive(Clone, Debug)]
pub struct Summary {
    pub markdown: String,
    pub files: Vec<PathBuf>,
}

/// The finished cells of a grid and what every table needs from them.
struct Rows {
    rows: Vec<CellResult>,
    /// Row order: the grid's cell order, then any other labels found.
    labels: Vec<String>,
    mtl: bool,
    /// Metric names of the first row.
    metric_names: Vec<String>,
    /// Δm's single-task baseline (means over seeds), once all three baselines exist.
    baseline: Option<[f64; 9]>,
    /// Metrics some cell recorded before fine-tuning (`before`), in `metric_names` order.
    before_names: Vec<String>,
}

impl Rows {
    fn read(dir: &Path) -> Result<Self> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(Error::io(dir))?
            .filter_map(|e| e.ok().map(|e| e.path().join(CELL_FILE)))
            .filter(|p| p.exists())
            .collect();
        entries.sort();
        let mut rows: Vec<CellResult> = vec![];
        for p in entries {
            let text = crate::read_to_string(&p)?;
            rows.push(
                serde_json::from_str(&text)
                    .map_err(|e| Error::file(&p, format!("not a cell result: {e}")))?,
            );
        }
        if rows.is_empty() {
            return Err(Error::file(
                dir,
                format!("no finished cells (no */{CELL_FILE})"),
            ));
        }
        let mut labels: Vec<String> = std::fs::read_to_string(dir.join(GRID_FILE))
            .ok()
            .and_then(|t| serde_json::from_str::<Experiment>(&t).ok())
            .map(|e| {
                e.cells
                    .into_iter()
                    .map(|c| c.label)
                    .filter(|l| rows.iter().any(|r| &r.label == l))
                    .collect()
            })
            .unwrap_or_default();
        for r in &rows {
            if !labels.contains(&r.label) {
                labels.push(r.label.clone());
            }
        }
        let mtl = rows[0].task == TASK_NYUV2;
        let metric_names: Vec<String> = rows[0].metrics.keys().cloned().collect();
        let baseline = if mtl { baseline(&rows) } else { None };
        let before_names = metric_names
            .iter()
            .filter(|m: &&String| rows.iter().any(|r| r.before.contains_key(*m)))
            .cloned()
            .collect();
        Ok(Self {
            rows,
            labels,
            mtl,
            metric_names,
            baseline,
            before_names,
        })
    }

    /// Δm of a multi-task cell against the single-task baselines; none for a baseline cell or
    /// before all baselines have finished.
    fn dm(&self, r: &CellResult) -> Option<f64> {
        let b = self.baseline.as_ref()?;
        if r.baseline_for.is_some() {
            return None;
        }
        let m: [f64; 9] = std::array::from_fn(|k| r.metrics[METRICS[k]]);
        Some(overparam_data::metrics::delta_m_nash(&m, b))
    }

    /// The primary metric: Δm for multi-task, top-1 error for classification.
    fn primary(&self, r: &CellResult) -> Option<f64> {
        if self.mtl {
            self.dm(r)
        } else {
            r.metrics.get(TOP1).copied()
        }
    }

    fn primary_name(&self) -> &'static str {
        if self.mtl { "Δm %" } else { TOP1 }
    }

    fn group(&self, l: &str) -> Vec<&CellResult> {
        self.rows.iter().filter(|r| r.label == l).collect()
    }
}

/// Reads every `*/cell.json` under `dir`; writes results.csv, results.md, paired.csv (with
/// plain among the rows) and the plots.
pub fn summarize(dir: &Path) -> Result<Summary> {
    let rows = Rows::read(dir)?;
    let paired = paired_vs_plain(&rows.rows, &rows.labels, |r| rows.primary(r));
    let mut files = vec![dir.join(RESULTS_CSV)];
    crate::write(&files[0], results_csv(&rows)?.as_bytes())?;
    let paired_path = dir.join(PAIRED_FILE);
    if !paired.is_empty() {
        let metric = if rows.mtl { "delta_m_pct" } else { TOP1 };
        crate::write(&paired_path, paired_csv(&paired, metric)?.as_bytes())?;
        files.push(paired_path);
    } else if paired_path.exists() {
        // A stale table from an earlier summary with plain would contradict this one.
        std::fs::remove_file(&paired_path).map_err(Error::io(&paired_path))?;
    }
    let (md, charts) = results_md(dir, &rows, &paired);
    files.push(dir.join(RESULTS_MD));
    crate::write(&dir.join(RESULTS_MD), md.as_bytes())?;
    files.extend(charts.save(dir, &rows)?);
    Ok(Summary {
        markdown: md,
        files,
    })
}

/// results.csv: one row per cell.
fn results_csv(t: &Rows) -> Result<String> {
    let mut head = vec!["label".to_string(), "seed".to_string()];
    head.extend(t.metric_names.iter().cloned());
    head.extend(t.before_names.iter().map(|m| format!("before {m}")));
    if t.mtl {
        head.push("delta_m_pct".into());
    }
    head.extend(t.metric_names.iter().map(|m| format!("int8_drop {m}")));
    head.extend(
        [
            "train_seconds",
            "resumed",
            "images_per_s",
            "train_params",
            "deploy_params",
            "deploy_macs",
        ]
        .map(String::from),
    );
    let f6 = |v: Option<f64>| format!("{:.6}", v.unwrap_or(f64::NAN));
    let rows = t.rows.iter().map(|r| {
        let mut row = vec![r.label.clone(), r.seed.to_string()];
        row.extend(t.metric_names.iter().map(|m| f6(r.metrics.get(m).copied())));
        // Empty for a cell trained from scratch in a grid that also fine-tunes.
        row.extend(t.before_names.iter().map(|m| {
            r.before
                .get(m)
                .map(|v| format!("{v:.6}"))
                .unwrap_or_default()
        }));
        if t.mtl {
            // Empty where Δm is undefined (a baseline cell) or not yet known (baselines missing).
            row.push(t.dm(r).map(|v| format!("{v:.6}")).unwrap_or_default());
        }
        row.extend(
            t.metric_names
                .iter()
                .map(|m| f6(r.int8_drop.get(m).copied())),
        );
        row.extend([
            format!("{:.1}", r.train_seconds),
            r.resumed.to_string(),
            r.images_per_s
                .map(|v| format!("{v:.1}"))
                .unwrap_or_default(),
            r.train_params.to_string(),
            r.deploy_params.to_string(),
            r.deploy_macs.to_string(),
        ]);
        row
    });
    crate::csv_text(std::iter::once(head).chain(rows))
}

/// paired.csv: its own table, so results.csv stays one rectangular table of cells.
fn paired_csv(paired: &[(String, Paired)], metric: &str) -> Result<String> {
    let head = PAIRED_CSV_HEADER.split(',').map(String::from).collect();
    let rows = paired.iter().map(|(l, p)| {
        vec![
            l.clone(),
            metric.to_string(),
            p.n.to_string(),
            format!("{:.6}", p.mean_diff),
            format!("{:.6}", p.se),
            format!("{:.6}", p.t),
            format!("{:.6}", p.p_t),
            p.below.to_string(),
            p.above.to_string(),
            format!("{:.6}", p.p_sign),
        ]
    });
    crate::csv_text(std::iter::once(head).chain(rows))
}

/// The three bar charts' data: the primary metric, training time and INT8 drop per method.
#[derive(Default)]
struct Charts {
    metric: Vec<Bar>,
    cost: Vec<Bar>,
    int8: Vec<Bar>,
}

impl Charts {
    fn save(&self, dir: &Path, t: &Rows) -> Result<Vec<PathBuf>> {
        let mut files = vec![];
        let mut save = |bars: &[Bar], title: &str, y: &str, file: &str| -> Result<()> {
            if !bars.is_empty() {
                let p = dir.join(file);
                bar_chart(title, y, bars).save(&p)?;
                files.push(p);
            }
            Ok(())
        };
        save(
            &self.metric,
            &format!("{} (mean ± std over seeds)", t.primary_name()),
            if t.mtl {
                "delta m %, lower is better"
            } else {
                "top-1 error %, lower is better"
            },
            PLOT_METRIC,
        )?;
        save(&self.cost, "training time per run", "seconds", PLOT_TIME)?;
        save(
            &self.int8,
            &format!("INT8 minus FP32: {}", drop_key(t)),
            "change (onnx runtime; the grid's calibrator, experiment.json)",
            PLOT_INT8,
        )?;
        Ok(files)
    }
}

/// The metric whose INT8 drop the table and chart show.
fn drop_key(t: &Rows) -> &'static str {
    if t.mtl { "mIoU" } else { TOP1 }
}

fn bar(label: &str, v: &[f64]) -> Bar {
    let (value, err) = mean_std(v);
    Bar {
        label: label.to_string(),
        value,
        err,
    }
}

/// results.md: mean ± std over seeds per label, notes, links and the paired section; and the
/// charts' data.
fn results_md(dir: &Path, t: &Rows, paired: &[(String, Paired)]) -> (String, Charts) {
    let mtl = t.mtl;
    // Multi-task tables show the six headline metrics (the first six; all nine are in the CSV).
    let show: Vec<&String> = if mtl {
        METRICS[..6]
            .iter()
            .filter_map(|m| t.metric_names.iter().find(|n| n == m))
            .collect()
    } else {
        t.metric_names.iter().collect()
    };
    let drop_key = drop_key(t);
    // Fine-tuning cells: where they started (the imported network) and how far they moved.
    let start = t.before_names.iter().any(|m| m == drop_key);
    let mut md = format!(
        "# {}\n\nMean ± standard deviation over seeds (n = seeds finished). {}{}\n\n| method | n |",
        dir.file_name()
            .and_then(|s| s.to_str())
            .unwrap_or("experiment"),
        if mtl {
            "Metrics are fractions as MTAN reports them; Δm% (Nash-MTL convention: mean relative change over the nine metrics against the single-task baselines, **lower is better**)."
        } else {
            "Errors in % on the test split."
        },
        if start {
            format!(
                " *start* is the imported network before fine-tuning (the cell's start.json) and *Δ start* the fine-tuned {drop_key} minus it."
            )
        } else {
            String::new()
        }
    );
    if start {
        md += &format!(" start {drop_key} |");
    }
    for m in &show {
        md += &format!(" {m} |");
    }
    if mtl {
        md += " Δm % |";
    }
    if start {
        md += " Δ start |";
    }
    md += &format!(" INT8 Δ {drop_key} | train s | train params | deploy params |\n|---|---|");
    for _ in 0..show.len() + usize::from(mtl) + 2 * usize::from(start) {
        md += "---|";
    }
    md += "---|---|---|---|\n";
    let digits = if mtl { 4 } else { 2 };
    let mut charts = Charts::default();
    let mut any_resumed = false;
    for l in &t.labels {
        let g = t.group(l);
        md += &format!("| {l} | {} |", g.len());
        if start {
            let before: Vec<f64> = g
                .iter()
                .filter_map(|r| r.before.get(drop_key).copied())
                .collect();
            md += &format!(" {} |", pm(&before, digits));
        }
        for m in &show {
            let v: Vec<f64> = g
                .iter()
                .filter_map(|r| r.metrics.get(*m).copied())
                .collect();
            md += &format!(" {} |", pm(&v, digits));
        }
        let d: Vec<f64> = g.iter().filter_map(|r| t.dm(r)).collect();
        if mtl {
            if g.iter().all(|r| r.baseline_for.is_some()) {
                md += " (baseline) |";
            } else {
                md += &format!(" {} |", pm(&d, 2));
            }
        }
        if start {
            let moved: Vec<f64> = g
                .iter()
                .filter_map(|r| Some(r.metrics.get(drop_key)? - r.before.get(drop_key)?))
                .collect();
            md += &format!(" {} |", pm(&moved, digits));
        }
        let i8: Vec<f64> = g
            .iter()
            .filter_map(|r| r.int8_drop.get(drop_key).copied())
            .collect();
        md += &format!(" {} |", pm(&i8, digits));
        // A resumed cell's seconds cover its last invocation only: left out of the cost.
        let secs: Vec<f64> = g
            .iter()
            .filter(|r| !r.resumed)
            .map(|r| r.train_seconds)
            .collect();
        let resumed = g.len() - secs.len();
        any_resumed |= resumed > 0;
        md += &format!(
            " {}{} | {} | {} |\n",
            pm(&secs, 0),
            if resumed > 0 { " ¹" } else { "" },
            crate::si(g[0].train_params),
            crate::si(g[0].deploy_params)
        );
        let pv: Vec<f64> = if mtl {
            d
        } else {
            g.iter()
                .filter_map(|r| r.metrics.get(TOP1).copied())
                .collect()
        };
        for (v, bars) in [
            (&pv, &mut charts.metric),
            (&secs, &mut charts.cost),
            (&i8, &mut charts.int8),
        ] {
            if !v.is_empty() {
                bars.push(bar(l, v));
            }
        }
    }
    if any_resumed {
        md += "\n¹ Without the cells that resumed after an interruption: their seconds cover only the last run.\n";
    }
    if mtl && t.baseline.is_none() {
        md += "\nΔm needs all three single-task baselines (the `baseline_for` cells); not all have finished.\n";
    }
    if let Some(b) = &t.baseline {
        md += &format!(
            "\nSingle-task baseline used for Δm (mean over seeds): {}\n",
            METRICS
                .iter()
                .zip(b)
                .map(|(k, v)| format!("{k} {v:.4}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    md += &format!(
        "\nPlots: [{} per method]({PLOT_METRIC}), [training time per method]({PLOT_TIME}), [INT8 drop per method]({PLOT_INT8}). Per-cell numbers: [{RESULTS_CSV}]({RESULTS_CSV}).\n",
        t.primary_name()
    );
    if !paired.is_empty() {
        md += &paired_md(paired, t.primary_name());
    }
    (md, charts)
}

/// Every label but `plain` against `plain`, paired by seed over the seeds both finished
/// (cells without the metric, e.g. single-task baselines for Δm, are left out).
fn paired_vs_plain(
    rows: &[CellResult],
    labels: &[String],
    value: impl Fn(&CellResult) -> Option<f64>,
) -> Vec<(String, Paired)> {
    let by_seed = |l: &str| -> BTreeMap<u64, f64> {
        rows.iter()
            .filter(|r| r.label == l)
            .filter_map(|r| Some((r.seed, value(r)?)))
            .collect()
    };
    let plain = by_seed("plain");
    if plain.is_empty() {
        return vec![];
    }
    labels
        .iter()
        .filter(|l| *l != "plain")
        .filter_map(|l| {
            let (a, b): (Vec<f64>, Vec<f64>) = by_seed(l)
                .into_iter()
                .filter_map(|(seed, v)| Some((v, *plain.get(&seed)?)))
                .unzip();
            (!a.is_empty()).then(|| (l.clone(), paired(&a, &b)))
        })
        .collect()
}

/// The paired section of results.md.
fn paired_md(paired: &[(String, Paired)], metric: &str) -> String {
    let f = |v: f64, d: usize| {
        if v.is_nan() {
            "–".to_string()
        } else {
            format!("{v:.d$}")
        }
    };
    let mut md = format!(
        "\n## Paired by seed against plain\n\n{metric}, method − plain on the same seed (negative: lower than plain), over the seeds both finished. SE: standard error of the mean difference; p (t): two-sided paired t-test, n − 1 degrees of freedom; p (sign): two-sided exact sign test on below/above counts (ties dropped). With n pairs the sign test cannot go below 2/2ⁿ (0.25 for 3 seeds). Numbers: [{PAIRED_FILE}]({PAIRED_FILE}).\n\n| method | pairs | mean diff | SE | t | p (t) | below / above plain | p (sign) |\n|---|---|---|---|---|---|---|---|\n"
    );
    for (l, p) in paired {
        // Equal differences on every seed: the t-test has no spread to measure (t infinite);
        // its p of 0 would read as certainty from three pairs, so only the sign test speaks.
        let (t, p_t) = if p.t.is_infinite() {
            ("no spread".to_string(), "–".to_string())
        } else {
            (f(p.t, 2), f(p.p_t, 4))
        };
        md += &format!(
            "| {l} | {} | {} | {} | {t} | {p_t} | {} / {} | {} |\n",
            p.n,
            f(p.mean_diff, 2),
            f(p.se, 2),
            p.below,
            p.above,
            f(p.p_sign, 4)
        );
    }
    md
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n.max(1.0);
    let s = if v.len() > 1 {
        (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)).sqrt()
    } else {
        0.0
    };
    (m, s)
}

/// Mean ± sample standard deviation; the mean alone for one seed, which has no spread; "–"
/// for none.
fn pm(v: &[f64], d: usize) -> String {
    let (a, s) = mean_std(v);
    match v.len() {
        0 => "–".into(),
        1 => format!("{a:.d$}"),
        _ => format!("{a:.d$} ± {s:.d$}"),
    }
}

/// The nine-metric single-task baseline: segmentation metrics from the `segmentation`
/// baseline cells, depth from `depth`, normals from `normals` (means over seeds).
fn baseline(rows: &[CellResult]) -> Option<[f64; 9]> {
    let mut b = [f64::NAN; 9];
    for task in overparam_base::Task::ALL {
        let g: Vec<&CellResult> = rows
            .iter()
            .filter(|r| r.baseline_for == Some(task))
            .collect();
        if g.is_empty() {
            return None;
        }
        for k in task.metrics() {
            let v: Vec<f64> = g
                .iter()
                .filter_map(|r| r.metrics.get(METRICS[k]).copied())
                .collect();
            b[k] = mean_std(&v).0;
        }
    }
    Some(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(dir: &Path, label: &str, seed: u64, baseline_for: Option<&str>, v: f64) {
        cell_timed(dir, label, seed, baseline_for, v, (10.0, false));
    }

    fn cell_timed(
        dir: &Path,
        label: &str,
        seed: u64,
        baseline_for: Option<&str>,
        v: f64,
        (train_seconds, resumed): (f64, bool),
    ) {
        let metrics: BTreeMap<String, f64> = METRICS.iter().map(|m| (m.to_string(), v)).collect();
        let r = CellResult {
            label: label.into(),
            seed,
            task: TASK_NYUV2.into(),
            metrics: metrics.clone(),
            baseline_for: baseline_for
                .map(|t| overparam_base::Task::from_name(t).expect("a task name")),
            train_seconds,
            resumed,
            images_per_s: None,
            train_params: 10,
            deploy_params: 10,
            deploy_macs: 10,
            int8_drop: metrics.keys().map(|k| (k.clone(), 0.0)).collect(),
            before: BTreeMap::new(),
        };
        write_cell(dir, &r);
    }

    /// A finished cell's `cell.json` in its directory under the grid `dir`.
    fn write_cell(dir: &Path, r: &CellResult) {
        let d = dir.join(format!("{}-s{}", r.label, r.seed));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(CELL_FILE), serde_json::to_string(r).unwrap()).unwrap();
    }

    fn read(dir: &Path) -> (String, String) {
        summarize(dir).unwrap();
        (
            std::fs::read_to_string(dir.join("results.md")).unwrap(),
            std::fs::read_to_string(dir.join("results.csv")).unwrap(),
        )
    }

    fn class_cell(dir: &Path, label: &str, seed: u64, top1: f64) {
        let metrics = BTreeMap::from([
            ("top-1 err %".to_string(), top1),
            ("top-5 err %".to_string(), 1.0),
        ]);
        let r = CellResult {
            label: label.into(),
            seed,
            task: super::super::cell::TASK_CLASSIFICATION.into(),
            metrics: metrics.clone(),
            baseline_for: None,
            train_seconds: 10.0,
            resumed: false,
            images_per_s: Some(100.0),
            train_params: 10,
            deploy_params: 10,
            deploy_macs: 10,
            int8_drop: metrics.keys().map(|k| (k.clone(), 0.0)).collect(),
            before: BTreeMap::new(),
        };
        write_cell(dir, &r);
    }

    /// A cell fine-tuned from an imported network that started at `start` % top-1 error.
    fn fine_tuned_cell(dir: &Path, label: &str, seed: u64, top1: f64, start: f64) {
        let p = dir.join(format!("{label}-s{seed}")).join(CELL_FILE);
        class_cell(dir, label, seed, top1);
        let mut r: CellResult =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        r.before = BTreeMap::from([("top-1 err %".to_string(), start)]);
        write_cell(dir, &r);
    }

    /// Fine-tuning cells show where they started and how far they moved, in the table and the
    /// CSV; a cell from scratch beside them has an empty start; cells without `before` (older
    /// cell.json files) have no such columns at all.
    #[test]
    fn fine_tuning_cells_report_their_start() {
        let dir = tempfile::tempdir().unwrap();
        fine_tuned_cell(dir.path(), "plain", 0, 9.5, 10.0);
        fine_tuned_cell(dir.path(), "plain", 1, 9.0, 10.0);
        class_cell(dir.path(), "scratch", 0, 12.0);
        let (md, csv) = read(dir.path());
        let head: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
        let col = head
            .iter()
            .position(|h| *h == "before top-1 err %")
            .unwrap();
        let cells: Vec<Vec<&str>> = csv
            .lines()
            .skip(1)
            .map(|l| l.split(',').collect())
            .collect();
        assert_eq!(cells[0][col], "10.000000", "{csv}");
        assert_eq!(cells[2][col], "", "{csv}");
        assert!(md.contains("| start top-1 err % |"), "{md}");
        // plain: start 10.00 ± 0.00, fine-tuned 9.25 ± 0.35, moved −0.75 ± 0.35.
        assert!(
            md.contains("| plain | 2 | 10.00 ± 0.00 | 9.25 ± 0.35 |"),
            "{md}"
        );
        assert!(md.contains("| -0.75 ± 0.35 |"), "{md}");
        // A method exactly 1 point above plain on both seeds: no spread for the t-test.
        fine_tuned_cell(dir.path(), "fnl", 0, 10.5, 10.0);
        fine_tuned_cell(dir.path(), "fnl", 1, 10.0, 10.0);
        let (md, _) = read(dir.path());
        assert!(
            md.contains("| fnl | 2 | 1.00 | 0.00 | no spread | – | 0 / 2 |"),
            "{md}"
        );
        let other = tempfile::tempdir().unwrap();
        class_cell(other.path(), "plain", 0, 9.5);
        let (md, csv) = read(other.path());
        assert!(
            !csv.contains("before") && !md.contains("start top-1"),
            "{md}\n{csv}"
        );
    }

    /// Paired by seed against plain, by hand: differences −2, −4, −3 → mean −3, sd 1,
    /// SE 1/√3 = 0.5774, t = −3√3 = −5.196 on 2 df, two-sided p = 1 − |t|/√(t² + 2) = 0.0351
    /// (the df-2 closed form); sign test 3 below of 3: 2/8 = 0.25. A seed plain lacks is not
    /// paired; without plain there is no section, and the rest of the summary is unchanged.
    #[test]
    fn summarize_adds_paired_statistics_against_plain() {
        let dir = tempfile::tempdir().unwrap();
        for (seed, v) in [(0, 12.0), (1, 15.0), (2, 15.0)] {
            class_cell(dir.path(), "plain", seed, v);
        }
        for (seed, v) in [(0, 10.0), (1, 11.0), (2, 12.0), (3, 99.0)] {
            class_cell(dir.path(), "sfo-r1", seed, v);
        }
        class_cell(dir.path(), "fnl", 1, 14.0);
        let (md, csv) = read(dir.path());
        let paired = std::fs::read_to_string(dir.path().join(PAIRED_FILE)).unwrap();
        assert_eq!(
            paired,
            format!(
                "{PAIRED_CSV_HEADER}\nfnl,top-1 err %,1,-1.000000,NaN,NaN,NaN,1,0,1.000000\nsfo-r1,top-1 err %,3,-3.000000,0.577350,-5.196152,0.035099,3,0,0.250000\n"
            )
        );
        // results.csv is one table of cells, as before.
        assert_eq!(csv.lines().count(), 9, "{csv}");
        assert!(md.contains("## Paired by seed against plain"), "{md}");
        assert!(
            md.contains("| sfo-r1 | 3 | -3.00 | 0.58 | -5.20 | 0.0351 | 3 / 0 | 0.2500 |"),
            "{md}"
        );
        assert!(
            md.contains("| fnl | 1 | -1.00 | – | – | – | 1 / 0 | 1.0000 |"),
            "{md}"
        );
        // Without plain: no paired section, and everything before it is what it was.
        let (md_before, csv_before) = (
            md.split("\n## Paired").next().unwrap().to_string(),
            csv.clone(),
        );
        for seed in 0..3 {
            std::fs::remove_dir_all(dir.path().join(format!("plain-s{seed}"))).unwrap();
        }
        let (md, csv) = read(dir.path());
        assert!(!md.contains("Paired"), "{md}");
        assert!(!dir.path().join(PAIRED_FILE).exists());
        // The per-cell rows are the same, less plain's.
        let kept: String = csv_before
            .lines()
            .filter(|l| !l.starts_with("plain,"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(csv, kept);
        assert_eq!(
            md,
            md_before.replace(
                "| plain | 3 | 14.00 ± 1.73 | 1.00 ± 0.00 | 0.00 ± 0.00 | 10 ± 0 | 10 | 10 |\n",
                ""
            )
        );
    }

    #[test]
    fn delta_m_waits_for_every_baseline_and_one_seed_has_no_spread() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path();
        cell(dir, "plain", 0, None, 0.5);
        cell(dir, "plain", 1, None, 0.7);
        cell(dir, "stl-segmentation", 0, Some("segmentation"), 0.5);
        let (md, csv) = read(dir);
        // A multi-task row is not a baseline, and its Δm is unknown rather than NaN.
        let plain = md.lines().find(|l| l.starts_with("| plain |")).unwrap();
        assert!(
            plain.contains(" – |") && !plain.contains("(baseline)"),
            "{plain}"
        );
        assert!(
            md.contains("Δm needs all three single-task baselines"),
            "{md}"
        );
        assert!(!csv.contains("NaN"), "{csv}");
        assert!(plain.contains("0.6000 ± 0.1414"), "{plain}");
        let stl = md
            .lines()
            .find(|l| l.starts_with("| stl-segmentation |"))
            .unwrap();
        assert!(stl.contains("(baseline)") && !stl.contains('±'), "{stl}");

        cell(dir, "stl-depth", 0, Some("depth"), 0.5);
        cell(dir, "stl-normals", 0, Some("normals"), 0.5);
        // A resumed cell's partial seconds stay out of the training cost.
        cell_timed(dir, "stl-normals", 1, Some("normals"), 0.5, (1.0, true));
        let (md, csv) = read(dir);
        let stl = md
            .lines()
            .find(|l| l.starts_with("| stl-normals |"))
            .unwrap();
        assert!(stl.contains("| 10 ¹ |"), "{stl}");
        assert!(md.contains("¹ Without the cells that resumed"), "{md}");
        assert!(!md.contains("Δm needs"), "{md}");
        let plain = md.lines().find(|l| l.starts_with("| plain |")).unwrap();
        assert!(!plain.contains(" – |"), "{plain}");
        // Seed 0 equals the baseline on every metric: Δm 0.
        let row = csv.lines().find(|l| l.starts_with("plain,0,")).unwrap();
        assert!(row.contains(",0.000000,"), "{row}");
    }
}

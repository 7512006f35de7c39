use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use overparam_fuse::checkpoint;
use overparam_fuse::inspect::summarize;

#[derive(clap::Args)]
pub struct Args {
    /// A train or deploy checkpoint (.safetensors with an embedded spec).
    file: PathBuf,
    /// Print the summary as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let ck = checkpoint::load(&a.file)?;
    let s = summarize(&ck.spec)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("{}: {} ({} checkpoint)", a.file.display(), s.model, s.stage);
    let shape = |v: &[usize]| {
        v.iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("×")
    };
    let wname = s
        .layers
        .iter()
        .map(|l| l.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let wdetail = s
        .layers
        .iter()
        .map(|l| l.detail.chars().count())
        .max()
        .unwrap_or(6)
        .max(6);
    println!(
        "{:<wname$}  {:<15}  {:<wdetail$}  {:<8}  {:>12}  {:>12}  {:>10}  {:>10}",
        "name", "op", "detail", "method", "input", "output", "params", "MACs"
    );
    for l in &s.layers {
        println!(
            "{:<wname$}  {:<15}  {:<wdetail$}  {:<8}  {:>12}  {:>12}  {:>10}  {:>10}",
            l.name,
            l.op,
            l.detail,
            l.method,
            shape(&l.input),
            shape(&l.output),
            l.params,
            l.macs
        );
    }
    for l in s.layers.iter().filter(|l| !l.note.is_empty()) {
        println!("  {} stays plain: {}", l.name, l.note);
    }
    for o in &s.outputs {
        println!(
            "output `{}` ({}): {}, {}",
            o.name,
            o.node,
            o.role,
            shape(&o.shape)
        );
    }
    println!(
        "total: {} parameters ({}), {} MACs ({}) per image",
        s.total_params,
        super::si(s.total_params),
        s.total_macs,
        super::si(s.total_macs)
    );
    Ok(ExitCode::SUCCESS)
}

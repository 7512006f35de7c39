pub mod bench;
pub mod bridge;
pub mod data;
pub mod doctor;
pub mod engine;
pub mod eval;
pub mod experiment;
pub mod export;
pub mod fuse;
pub mod init;
pub mod inspect;
pub mod pipeline;
pub mod stop;
pub mod train;

/// Human-readable counts: 23.71M, 1.30G.
pub fn si(n: usize) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2}G", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.2}M", n / 1e6)
    } else if n >= 1e3 {
        format!("{:.1}k", n / 1e3)
    } else {
        format!("{n}")
    }
}

pub mod bench;
pub mod bridge;
pub mod compare;
pub mod data;
pub mod doctor;
pub mod engine;
pub mod eval;
pub mod experiment;
pub mod export;
pub mod fuse;
pub mod import;
pub mod init;
pub mod inspect;
pub mod pipeline;
pub mod qat;
pub mod train;

pub use overparam_lab::si;

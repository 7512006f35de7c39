//! The memory check before training ([`overparam_fuse::memory::check`]) with a config's
//! optimiser.

use overparam_config::{OptimizerKind, TrainConfig};

/// Optimiser tensors per trainable parameter.
pub fn optimizer_slots(cfg: &TrainConfig) -> usize {
    match cfg.optim.optimizer {
        OptimizerKind::Adam => 2,
        OptimizerKind::Sgd if cfg.optim.momentum > 0.0 => 1,
        OptimizerKind::Sgd => 0,
    }
}

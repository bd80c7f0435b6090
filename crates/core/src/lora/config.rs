//! LoRA configuration: rank, alpha, variants and initialization.

use crate::{Error, Result};

/// How A and B start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LoraInit {
    /// PEFT's default (`init_lora_weights=True`): for Linear and Conv2d,
    /// A Kaiming-uniform with a = √5 (uniform in ±1/√fan_in) and B = 0; for
    /// Embedding the reverse, A = 0 and B standard normal. The adapter
    /// starts as the identity update.
    #[default]
    Default,
    /// PEFT's `"gaussian"`: A normal with standard deviation 1/r, B = 0
    /// (Embedding as [`LoraInit::Default`]).
    Gaussian,
    /// PEFT's `init_lora_weights=False`: both A and B random (as the
    /// default init of `nn.Linear` / `nn.Embedding`), so the update is
    /// non-zero from the start. For tests and benchmarks.
    Random,
}

/// The settings of one LoRA adapter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoraConfig {
    /// The rank r (≥ 1, ≤ min(fan_in, out)).
    pub rank: usize,
    /// α; `None` means α = r (scaling 1), the seed's default.
    pub alpha: Option<f64>,
    /// rsLoRA: scaling α/√r instead of α/r.
    pub use_rslora: bool,
    /// DoRA: weight-decomposed LoRA (a trainable magnitude per output feature).
    pub use_dora: bool,
    /// A trainable bias on B (PEFT's `lora_bias`).
    pub lora_bias: bool,
    /// Initialization of A and B.
    pub init: LoraInit,
    /// Freeze the base layer's weights (the usual case; the seed's default).
    pub freeze_base: bool,
    /// Seed of the random initialization.
    pub seed: u64,
}

impl LoraConfig {
    /// Rank `rank`, α = r, plain LoRA, PEFT's default init, frozen base.
    pub fn new(rank: usize) -> Self {
        Self {
            rank,
            alpha: None,
            use_rslora: false,
            use_dora: false,
            lora_bias: false,
            init: LoraInit::Default,
            freeze_base: true,
            seed: 0,
        }
    }

    /// Sets α.
    pub fn with_alpha(mut self, alpha: f64) -> Self {
        self.alpha = Some(alpha);
        self
    }

    /// Switches rsLoRA scaling on or off.
    pub fn with_rslora(mut self, on: bool) -> Self {
        self.use_rslora = on;
        self
    }

    /// Switches DoRA on or off.
    pub fn with_dora(mut self, on: bool) -> Self {
        self.use_dora = on;
        self
    }

    /// Adds (or removes) the trainable bias on B.
    pub fn with_lora_bias(mut self, on: bool) -> Self {
        self.lora_bias = on;
        self
    }

    /// Sets the initialization.
    pub fn with_init(mut self, init: LoraInit) -> Self {
        self.init = init;
        self
    }

    /// Sets whether the base layer is frozen.
    pub fn with_freeze_base(mut self, freeze: bool) -> Self {
        self.freeze_base = freeze;
        self
    }

    /// Sets the initialization seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// α, defaulting to r.
    pub fn alpha(&self) -> f64 {
        self.alpha.unwrap_or(self.rank as f64)
    }

    /// The scaling s: α/r, or α/√r with rsLoRA.
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.alpha() / (self.rank as f64).sqrt()
        } else {
            self.alpha() / self.rank as f64
        }
    }

    /// Checks the rank against a target's sizes and the variant combination.
    ///
    /// # Errors
    /// [`Error::Config`] saying which bound the rank breaks, a non-finite α,
    /// or DoRA combined with a LoRA bias (PEFT refuses it too).
    pub fn validate(&self, fan_in: usize, fan_out: usize) -> Result<()> {
        let max = fan_in.min(fan_out);
        if self.rank == 0 || self.rank > max {
            return Err(Error::config(
                "LoraAdapter",
                format!(
                    "rank {} must be ≥ 1 and ≤ min(fan_in {fan_in}, out {fan_out}) = {max}",
                    self.rank
                ),
            ));
        }
        if !self.alpha().is_finite() {
            return Err(Error::config(
                "LoraAdapter",
                format!("alpha {} is not finite", self.alpha()),
            ));
        }
        if self.use_dora && self.lora_bias {
            return Err(Error::config(
                "LoraAdapter",
                "DoRA does not support a LoRA bias (as in PEFT)",
            ));
        }
        Ok(())
    }
}

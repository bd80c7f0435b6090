//! The pass manager: runs a list of passes to a fixed point, verifying,
//! timing and optionally dumping the graph after each.

use super::{
    plan_fusion, Changed, ConstFold, Cse, DeadCodeElim, FusionPlan, LoraFold, Pass, Simplify,
};
use crate::{dump, Error, Graph, Result, Violation};
use std::fmt;
use std::time::{Duration, Instant};

/// Which passes the default pipeline runs, and how.
#[derive(Clone, Copy, Debug)]
pub struct PassOptions {
    /// Algebraic simplification ([`Simplify`]).
    pub simplify: bool,
    /// Constant folding ([`ConstFold`]).
    pub const_fold: bool,
    /// LoRA folding ([`LoraFold`]): on for "jit-folded", off for "jit"
    /// (adapters kept as separate products).
    pub lora_fold: bool,
    /// Common-subexpression elimination ([`Cse`]).
    pub cse: bool,
    /// Dead-code elimination ([`DeadCodeElim`]).
    pub dce: bool,
    /// Fusion grouping ([`plan_fusion`]) after the loop.
    pub fuse: bool,
    /// DCE keeps unused Parameters (see [`DeadCodeElim`]).
    pub keep_parameters: bool,
    /// The largest constant folding may create, in elements.
    pub fold_max_elements: usize,
    /// The most rounds of the pipeline before giving up on a fixed point.
    pub max_iterations: usize,
    /// Verify after every pass; always on in debug builds (and so in tests).
    pub verify: bool,
    /// Keep a [`dump`] of the graph after every pass in the report.
    pub dump: bool,
}

impl Default for PassOptions {
    /// Every pass on, LoRA folding included; 8 rounds at most.
    fn default() -> Self {
        Self {
            simplify: true,
            const_fold: true,
            lora_fold: true,
            cse: true,
            dce: true,
            fuse: true,
            keep_parameters: true,
            fold_max_elements: ConstFold::default().max_elements,
            max_iterations: 8,
            verify: false,
            dump: false,
        }
    }
}

/// One run of one pass.
#[derive(Clone, Debug)]
pub struct PassRun {
    /// The pass's name.
    pub name: &'static str,
    /// The round it ran in, from 1 (fusion runs after the last round).
    pub iteration: usize,
    /// What it changed (fusion: `rewritten` is the number of groups).
    pub changed: Changed,
    /// Nodes before the pass.
    pub nodes_before: usize,
    /// Nodes after the pass.
    pub nodes_after: usize,
    /// Wall time of the pass (verification and dump excluded).
    pub time: Duration,
    /// The graph after the pass, with [`PassOptions::dump`].
    pub dump: Option<String>,
}

/// Everything a [`PassManager::run`] did.
#[derive(Clone, Debug, Default)]
pub struct PassReport {
    /// Every pass run, in order.
    pub runs: Vec<PassRun>,
    /// The rounds of the pipeline run.
    pub iterations: usize,
    /// Whether the last round changed nothing (false if the bound stopped it).
    pub fixed_point: bool,
    /// The fusion groups, when fusion ran.
    pub fusion: Option<FusionPlan>,
}

impl PassReport {
    /// The sum of all passes' changes.
    pub fn total(&self) -> Changed {
        let mut total = Changed::default();
        for run in &self.runs {
            if run.name != "fuse" {
                total += run.changed;
            }
        }
        total
    }
}

/// One line per pass run: `round name -removed +added ~rewritten nodes before→after time`.
impl fmt::Display for PassReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.runs {
            writeln!(
                f,
                "{:>2} {:<10} {:<14} {:>6} → {:<6} {:?}",
                r.iteration,
                r.name,
                r.changed.to_string(),
                r.nodes_before,
                r.nodes_after,
                r.time
            )?;
        }
        let fixed = if self.fixed_point {
            ""
        } else {
            " (bound reached)"
        };
        writeln!(f, "{} round(s){fixed}", self.iterations)
    }
}

/// Runs passes in order, round after round until none changes anything.
pub struct PassManager {
    passes: Vec<Box<dyn Pass>>,
    options: PassOptions,
}

impl PassManager {
    /// The default pipeline — simplify → const fold → LoRA fold → CSE → DCE,
    /// each if switched on — then fusion grouping if switched on.
    pub fn new(options: PassOptions) -> Self {
        let mut passes: Vec<Box<dyn Pass>> = Vec::new();
        if options.simplify {
            passes.push(Box::new(Simplify));
        }
        if options.const_fold {
            passes.push(Box::new(ConstFold {
                max_elements: options.fold_max_elements,
            }));
        }
        if options.lora_fold {
            passes.push(Box::new(LoraFold));
        }
        if options.cse {
            passes.push(Box::new(Cse));
        }
        if options.dce {
            passes.push(Box::new(DeadCodeElim {
                keep_parameters: options.keep_parameters,
            }));
        }
        Self { passes, options }
    }

    /// A pipeline of these passes (the options' per-pass switches are
    /// ignored; `fuse`, `verify`, `dump` and `max_iterations` apply).
    pub fn with_passes(passes: Vec<Box<dyn Pass>>, options: PassOptions) -> Self {
        Self { passes, options }
    }

    /// The passes' names, in order.
    pub fn pass_names(&self) -> Vec<&'static str> {
        self.passes.iter().map(|p| p.name()).collect()
    }

    /// Runs the pipeline on `g` to a fixed point (at most
    /// `max_iterations` rounds), then plans fusion.
    ///
    /// # Errors
    /// A pass's error, or [`Error::Verify`] if the graph fails verification
    /// after a pass (the last violation names the pass).
    pub fn run(&self, g: &mut Graph) -> Result<PassReport> {
        let mut report = PassReport::default();
        while report.iterations < self.options.max_iterations.max(1) {
            report.iterations += 1;
            let mut any = false;
            for pass in &self.passes {
                let run = self.run_one(g, report.iterations, pass.name(), |g| pass.run(g))?;
                any |= run.changed.any();
                report.runs.push(run);
            }
            if !any {
                report.fixed_point = true;
                break;
            }
        }
        if self.options.fuse {
            let mut plan = None;
            let run = self.run_one(g, report.iterations, "fuse", |g| {
                let p = plan_fusion(g)?;
                let groups = p.groups.len();
                plan = Some(p);
                Ok(Changed {
                    rewritten: groups,
                    ..Changed::default()
                })
            })?;
            report.runs.push(run);
            report.fusion = plan;
        }
        Ok(report)
    }

    /// Runs one pass with timing, verification and the optional dump.
    fn run_one(
        &self,
        g: &mut Graph,
        iteration: usize,
        name: &'static str,
        pass: impl FnOnce(&mut Graph) -> Result<Changed>,
    ) -> Result<PassRun> {
        let nodes_before = g.len();
        let start = Instant::now();
        let changed = pass(g)?;
        let time = start.elapsed();
        if self.options.verify || cfg!(debug_assertions) {
            if let Err(Error::Verify(mut violations)) = crate::verify(g) {
                violations.push(Violation {
                    node: None,
                    op: String::new(),
                    message: format!("the graph above was left by pass `{name}`"),
                });
                return Err(Error::Verify(violations));
            }
        }
        Ok(PassRun {
            name,
            iteration,
            changed,
            nodes_before,
            nodes_after: g.len(),
            time,
            dump: self.options.dump.then(|| dump(g)),
        })
    }
}

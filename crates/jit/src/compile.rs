//! `compile`: passes → planning → lowering → code generation.

use crate::compiled::{CompiledGraph, Parts, Spec};
use crate::jit::Jit;
use crate::lower::fused::{loop_groups, schedule, LoopGroup, Step};
use crate::lower::heads::HeadLayouts;
use crate::lower::linalg::is_inline_product;
use crate::lower::{entry_signature, epilogue, Lowerer, Plans};
use crate::lower::{softmax, sum_norm};
use crate::memory::{self, MemoryPlan};
use crate::serve::{AdapterStrategy, LayerChoice};
use crate::{Error, Result};
use cranelift_frontend::FunctionBuilder;
use cranelift_module::{Linkage, Module};
use cranelora_graph::passes::{FusionPlan, PassManager, PassOptions, PassReport};
use cranelora_graph::{Graph, NodeDesc, NodeId, Op, TensorData};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How [`compile`] runs.
#[derive(Clone, Copy, Debug)]
pub struct JitOptions {
    /// The graph passes run first (each can be switched off). `lora_fold`
    /// on is "jit-folded", off is "jit" (adapters kept as their own products).
    pub passes: PassOptions,
    /// Run Cranelift's IR verifier (always on in debug builds and tests).
    pub verify: bool,
    /// Keep the CLIF text in the report and print it to stderr (also with
    /// the environment variable `CRANELORA_DUMP_CLIF=1`).
    pub dump_clif: bool,
    /// Merged or unmerged, per runtime-bound adapted layer (A and B
    /// Parameters): `serve/plan.rs` rewrites the merged ones before the
    /// passes; the choices and their reasons are
    /// [`CompileReport::adapters`].
    pub adapter_strategy: AdapterStrategy,
    /// MatMuls of at most this many multiply-adds (`batch·m·k·n`) are
    /// emitted inline as register-blocked vector code instead of calling the
    /// runtime GEMM (`lower/small_matmul.rs`); 0 calls the GEMM for every
    /// product.
    pub inline_matmul_macs: usize,
    /// Attention paths: head transposes read and written in place by the
    /// products (`lower/heads.rs`) and softmax fused with its scale and
    /// selects (`lower/softmax.rs`). On by default; the environment
    /// variable `CRANELORA_JIT_ATTENTION=0` makes the default off (for
    /// before/after measurements in one binary).
    pub attention: bool,
}

impl Default for JitOptions {
    /// Every pass (LoRA folding included), verifier in debug builds, no dump.
    fn default() -> Self {
        Self {
            passes: PassOptions::default(),
            verify: cfg!(debug_assertions),
            dump_clif: false,
            adapter_strategy: AdapterStrategy::Unmerged,
            inline_matmul_macs: crate::lower::small_matmul::DEFAULT_INLINE_MACS,
            attention: std::env::var("CRANELORA_JIT_ATTENTION").map_or(true, |v| v != "0"),
        }
    }
}

impl JitOptions {
    /// These options with fusion (planning and fused loop nests) on or off.
    pub fn with_fusion(mut self, on: bool) -> Self {
        self.passes.fuse = on;
        self
    }

    /// These options with `strategy` for runtime-bound adapters.
    pub fn with_adapter_strategy(mut self, strategy: AdapterStrategy) -> Self {
        self.adapter_strategy = strategy;
        self
    }

    /// These options with products of at most `macs` multiply-adds emitted
    /// inline (0: every product calls the runtime GEMM).
    pub fn with_inline_matmul_macs(mut self, macs: usize) -> Self {
        self.inline_matmul_macs = macs;
        self
    }

    /// These options with the attention paths (see [`JitOptions::attention`]) on or off.
    pub fn with_attention(mut self, on: bool) -> Self {
        self.attention = on;
        self
    }

    /// These options with LoRA folding switched on or off.
    pub fn with_lora_fold(mut self, on: bool) -> Self {
        self.passes.lora_fold = on;
        self
    }
}

/// What [`compile`] did and how long each phase took.
#[derive(Clone, Debug, Default)]
pub struct CompileReport {
    /// Graph passes (including fusion planning).
    pub passes: Duration,
    /// Checks and memory planning.
    pub planning: Duration,
    /// Building the CLIF function.
    pub lowering: Duration,
    /// Cranelift code generation and linking.
    pub codegen: Duration,
    /// Per-pass details.
    pub pass_report: PassReport,
    /// The memory plan.
    pub memory: MemoryPlan,
    /// The CLIF of the function, when dumping was asked for.
    pub clif: Option<String>,
    /// Nodes in the optimized graph.
    pub nodes: usize,
    /// Fused loop groups (two or more nodes in one loop nest).
    pub fused_groups: usize,
    /// Loop groups lowered as a MatMul's epilogue instead (`lower/epilogue.rs`).
    pub matmul_epilogues: usize,
    /// The runtime-bound adapted layers, merged or not and why
    /// ([`JitOptions::adapter_strategy`]).
    pub adapters: Vec<LayerChoice>,
    /// MatMuls emitted inline as vector code (`lower/small_matmul.rs`).
    pub inline_matmuls: usize,
    /// MatMuls lowered to a runtime GEMM call (`cranelora_matmul_{f32,f64}`).
    pub matmul_calls: usize,
    /// Transposes the products read or write in place instead of copying
    /// them (`lower/heads.rs`).
    pub head_transposes: usize,
    /// Softmaxes run with their scale and selects in one row pass
    /// (`lower/softmax.rs`).
    pub fused_softmaxes: usize,
    /// Fused softmaxes that overwrite their scores' buffer instead of
    /// writing a buffer of their own (`lower/softmax.rs`).
    pub softmaxes_in_place: usize,
    /// LayerNorms run with the embedding lookups and adds before them in
    /// one row pass (`lower/sum_norm.rs`).
    pub fused_sum_norms: usize,
}

impl CompileReport {
    /// The sum of all phases.
    pub fn total(&self) -> Duration {
        self.passes + self.planning + self.lowering + self.codegen
    }
}

/// Compiles `graph` to one native function, shapes fixed.
///
/// # Errors
/// [`Error::Graph`] if the graph fails verification or a pass fails;
/// [`Error::Unsupported`] naming the first node the JIT cannot lower;
/// [`Error::UnsupportedHost`]; Cranelift errors (verifier included).
pub fn compile(graph: &Graph, options: &JitOptions) -> Result<CompiledGraph> {
    compile_updating(graph, options, &[])
}

/// [`compile`] with in-place updates: output `k` of each `(k, name)`
/// replaces the buffer bound to Parameter `name` when the graph runs through
/// [`crate::Trainer`] (placement in `inplace.rs`).
///
/// # Errors
/// As [`compile`], and [`Error::Update`] for an update that cannot be placed.
pub(crate) fn compile_updating(
    graph: &Graph,
    options: &JitOptions,
    updates: &[(usize, String)],
) -> Result<CompiledGraph> {
    let mut report = CompileReport::default();
    let t = Instant::now();
    cranelora_graph::verify(graph)?;
    let mut g = graph.clone();
    report.adapters = crate::serve::plan::apply(&mut g, &options.adapter_strategy)?;
    let mut pass_options = options.passes;
    pass_options.verify |= options.verify;
    report.pass_report = PassManager::new(pass_options).run(&mut g)?;
    report.passes = t.elapsed();

    let t = Instant::now();
    let order = g.topo_order()?;
    if let Some(&id) = order
        .iter()
        .find(|&&id| !crate::lowerable(&node(&g, id).op))
    {
        return Err(Error::Unsupported {
            op: node(&g, id).op.to_string(),
            node: g.desc(id),
        });
    }
    let specs = Specs::of(&g, &order);
    let mut consts = Vec::new();
    let mut const_index = HashMap::new();
    for &id in &order {
        if let Op::Constant(data) = &node(&g, id).op {
            const_index.insert(id, consts.len());
            consts.push(contiguous(data));
        }
    }
    let param_names: Vec<String> = specs.params.iter().map(|s| s.name.clone()).collect();
    // Softmaxes fused with their scale and selects (`lower/softmax.rs`):
    // one step, at the last node's, no buffers for the others.
    let softmaxes = if options.attention {
        softmax::plan(&g, &order)
    } else {
        HashMap::new()
    };
    let in_softmax = softmax::members(&softmaxes);
    // LayerNorms over a sum of embedding lookups (`lower/sum_norm.rs`): the
    // same, at the norm's step.
    let norms = if options.passes.fuse {
        sum_norm::plan(&g, &order)
    } else {
        HashMap::new()
    };
    let in_norm = sum_norm::members(&norms);
    let taken: HashSet<NodeId> = in_softmax.union(&in_norm).copied().collect();
    let fusion = report.pass_report.fusion.as_ref();
    let (groups, mut steps) = fusion_steps(&g, &order, fusion, &taken);
    let dest = |id: &NodeId| softmaxes.contains_key(id) || norms.contains_key(id);
    steps.retain(|s| !matches!(s, Step::Node(id) if taken.contains(id) && !dest(id)));
    // Groups that become GEMM epilogues: their MatMul runs at the group's
    // step, into the group's output. The nodes and groups the call absorbs
    // (the product, a LoRA branch's XA·B and its scaling) lose their steps
    // and buffers; a step's nodes stay in topological order. An inline
    // product is not an epilogue's: its group stays a loop.
    let inline = |id: NodeId| is_inline_product(&g, id, options.inline_matmul_macs);
    let epilogues = epilogue::plan(&g, &groups, |mm| !inline(mm));
    let absorbed: HashSet<NodeId> = epilogues
        .values()
        .flat_map(|e| e.absorbed.iter().copied())
        .collect();
    let absorbed_groups: HashSet<usize> = epilogues
        .values()
        .flat_map(|e| e.absorbed_groups.iter().copied())
        .collect();
    steps.retain(|s| match s {
        Step::Node(id) => !absorbed.contains(id),
        Step::Group(gi) => !absorbed_groups.contains(gi),
    });
    let bases: HashSet<NodeId> = epilogues.values().map(|e| e.matmul).collect();
    for &id in &order {
        if !matches!(node(&g, id).op, Op::MatMul)
            || (absorbed.contains(&id) && !bases.contains(&id))
        {
            continue; // not a product, or one computed inside an epilogue
        }
        if inline(id) {
            report.inline_matmuls += 1;
        } else {
            report.matmul_calls += 1;
        }
    }
    // Head transposes read in place are views; a head merge is written by
    // its MatMul at the MatMul's step, which then has no buffer of its own.
    // Only products that call the GEMM (not inline, not an epilogue's)
    // read or write through strides.
    let heads = if options.attention {
        HeadLayouts::plan(&g, &order, |id| !inline(id) && !absorbed.contains(&id))
    } else {
        HeadLayouts::default()
    };
    let merged = heads.merged_transposes();
    steps.retain(|s| !matches!(s, Step::Node(id) if merged.contains(id)));
    let mut internal = absorbed.clone();
    internal.extend(heads.merged.keys().copied());
    internal.extend(taken.iter().filter(|n| !dest(n)));
    for grp in &groups {
        internal.extend(grp.nodes.iter().filter(|n| !grp.outputs.contains(n)));
    }
    let position: HashMap<NodeId, usize> = order.iter().enumerate().map(|(i, &n)| (n, i)).collect();
    let step_nodes: Vec<Vec<NodeId>> = steps
        .iter()
        .map(|s| match *s {
            Step::Node(id) => match (heads.merged.get(&id), softmaxes.get(&id), norms.get(&id)) {
                (Some(&t), _, _) => vec![id, t],
                (_, Some(f), _) => f.nodes.clone(),
                (_, _, Some(f)) => f.nodes.clone(),
                _ => vec![id],
            },
            Step::Group(gi) => {
                let extra = epilogues.get(&gi).map(|e| e.absorbed.clone());
                let mut nodes: Vec<NodeId> = extra.into_iter().flatten().collect();
                nodes.extend(groups[gi].nodes.iter().copied());
                nodes.sort_by_key(|n| position[n]);
                nodes
            }
        })
        .collect();
    report.matmul_epilogues = epilogues.len();
    report.head_transposes = heads.views.len() + heads.merged.len();
    report.fused_softmaxes = softmaxes.len();
    report.fused_sum_norms = norms.len();
    // A fused softmax may run in place over scores nothing else reads.
    let reuse: HashMap<NodeId, NodeId> = softmaxes
        .values()
        .filter(|f| softmax::may_run_in_place(&g, f))
        .map(|f| (f.dest(), f.x))
        .collect();
    report.memory = memory::plan(
        &g,
        &step_nodes,
        &internal,
        &param_names,
        &const_index,
        (&heads.views, &reuse),
    );
    report.softmaxes_in_place = reuse
        .iter()
        .filter(|(d, x)| report.memory.locs.get(d) == report.memory.locs.get(x))
        .count();
    report.fused_groups = groups.iter().filter(|grp| grp.nodes.len() >= 2).count();
    let updates =
        crate::inplace::place_updates(&g, &step_nodes, &mut report.memory, &specs.params, updates)?;
    report.nodes = g.len();
    report.planning = t.elapsed();

    let t = Instant::now();
    let mut jit = Jit::new(options.verify || cfg!(debug_assertions))?;
    let sig = entry_signature(&jit.module);
    jit.ctx.func.signature = sig.clone();
    let func = jit
        .module
        .declare_function("graph", Linkage::Export, &sig)?;
    let addrs: Vec<usize> = consts
        .iter()
        .map(|c| crate::compiled::data_ptr(c).expect("internal: made contiguous") as usize)
        .collect();
    let mut plans = Plans::default();
    let builder = FunctionBuilder::new(&mut jit.ctx.func, &mut jit.builder_ctx);
    let mut lowerer = Lowerer::new(
        builder,
        &mut jit.module,
        &g,
        &report.memory.locs,
        &addrs,
        &mut plans,
        &heads,
    );
    lowerer.inline_macs = options.inline_matmul_macs;
    lowerer.lower_all(&steps, &groups, &epilogues, &softmaxes, &norms)?;
    let dump = options.dump_clif || std::env::var("CRANELORA_DUMP_CLIF").is_ok_and(|v| v == "1");
    if dump {
        let text = jit.ctx.func.display().to_string();
        eprintln!("{text}");
        report.clif = Some(text);
    }
    report.lowering = t.elapsed();

    let t = Instant::now();
    jit.module.define_function(func, &mut jit.ctx)?;
    jit.module.clear_context(&mut jit.ctx);
    jit.module.finalize_definitions()?;
    let entry = jit.module.get_finalized_function(func);
    report.codegen = t.elapsed();

    let descs: HashMap<usize, NodeDesc> =
        order.iter().map(|&id| (id.index(), g.desc(id))).collect();
    Ok(CompiledGraph::new(Parts {
        module: jit.module,
        entry,
        inputs: specs.inputs,
        params: specs.params,
        outputs: specs.outputs,
        consts,
        plans,
        descs,
        report,
        updates,
    }))
}

/// The loop groups of the fusion plan (none without one) and the step
/// order; without groups if contracting them would form a cycle.
fn fusion_steps(
    g: &Graph,
    order: &[NodeId],
    plan: Option<&FusionPlan>,
    taken: &HashSet<NodeId>,
) -> (Vec<LoopGroup>, Vec<Step>) {
    let groups = plan.map(|p| loop_groups(g, p, taken)).unwrap_or_default();
    match schedule(g, order, &groups) {
        Some(steps) => (groups, steps),
        None => (Vec::new(), order.iter().map(|&id| Step::Node(id)).collect()),
    }
}

fn node(g: &Graph, id: NodeId) -> &cranelora_graph::Node {
    g.node(id).expect("internal: topo_order lists live nodes")
}

/// The constant's data in standard (contiguous row-major) layout.
fn contiguous(data: &Arc<TensorData>) -> Arc<TensorData> {
    if crate::compiled::data_ptr(data).is_some() {
        return Arc::clone(data);
    }
    let (shape, v) = (data.shape(), data.to_f64_vec());
    let copy = match &**data {
        TensorData::F32(a) => TensorData::f32(shape, a.iter().copied().collect()),
        TensorData::F64(_) => TensorData::f64(shape, v),
        TensorData::I64(a) => TensorData::i64(shape, a.iter().copied().collect()),
    };
    Arc::new(copy.expect("internal: same element count"))
}

/// The declared inputs, Parameters (sorted, unique) and outputs.
struct Specs {
    inputs: Vec<Spec>,
    params: Vec<Spec>,
    outputs: Vec<Spec>,
}

impl Specs {
    fn of(g: &Graph, order: &[NodeId]) -> Self {
        let spec = |id: NodeId, name: String| {
            let n = node(g, id);
            Spec {
                name,
                shape: n.shape.clone(),
                dtype: n.dtype,
            }
        };
        let inputs = g
            .inputs()
            .iter()
            .map(|&id| match &node(g, id).op {
                Op::Input { name } => spec(id, name.clone()),
                _ => spec(id, String::new()),
            })
            .collect();
        let mut params: Vec<Spec> = order
            .iter()
            .filter_map(|&id| match &node(g, id).op {
                Op::Parameter { name } => Some(spec(id, name.clone())),
                _ => None,
            })
            .collect();
        params.sort_by(|a, b| a.name.cmp(&b.name));
        params.dedup_by(|a, b| a.name == b.name);
        let outputs = g
            .outputs()
            .iter()
            .enumerate()
            .map(|(i, &id)| spec(id, i.to_string()))
            .collect();
        Self {
            inputs,
            params,
            outputs,
        }
    }
}

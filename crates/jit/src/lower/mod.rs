//! Lowering a planned graph to one Cranelift function.
//!
//! The [`Lowerer`] holds the `FunctionBuilder`, the function's arguments and
//! the memory plan's node → buffer map ([`Loc`]), and emits each node in
//! execution order by one arm of [`Lowerer::node`]. The op families live in
//! one file each:
//!
//! | file | ops |
//! | --- | --- |
//! | `loops.rs` | the strided loop nest every other file builds on, and its f32x4/f64x2 variant |
//! | `fused.rs` | fusion groups as one loop nest (members in registers), the step schedule |
//! | `elementwise.rs` | binary (broadcasting), comparison, Where, unary, Cast |
//! | `math.rs` | exp, log, tanh, erf, sigmoid, SiLU, GELUs emitted from the kernels' coefficient table |
//! | `movement.rs` | Broadcast, Transpose, Slice, Pad, Concat, output copies |
//! | `reduce.rs` | Reduce (sum, mean, max over any axes) |
//! | `index.rs` | Gather, ScatterAdd, with bounds checks |
//! | `linalg.rs` | MatMul, Conv2d and its gradients (runtime GEMM) |
//! | `small_matmul.rs` | small MatMuls as inline register-blocked vector code |
//! | `heads.rs` | attention heads split/merged in place: Transposes read or written through strides by the products |
//! | `rows.rs` | Softmax, LayerNorm (runtime row kernels) |
//! | `softmax.rs` | attention's scale → mask select → softmax → row select as one row pass |
//! | `sum_norm.rs` | a LayerNorm over a sum of embedding lookups (BERT's embedding block) as one row pass |
//! | `gather_matmul.rs` | GatherMatMul (grouped runtime GEMM, checked ids) |
//!
//! The function's signature is the ABI of [`crate::compiled`]:
//! `fn(inputs, params, outputs: *const ptr, arena: *mut u8, status: *mut i64) -> i32`.

pub(crate) mod elementwise;
pub(crate) mod epilogue;
pub(crate) mod fused;
pub(crate) mod gather_matmul;
pub(crate) mod heads;
pub(crate) mod index;
pub(crate) mod linalg;
pub(crate) mod loops;
pub(crate) mod math;
pub(crate) mod movement;
pub(crate) mod reduce;
pub(crate) mod rows;
pub(crate) mod small_matmul;
pub(crate) mod softmax;
pub(crate) mod sum_norm;

use crate::memory::{is_view, Loc};
use crate::runtime::{ConvPlan, MatMulPlan, RowPlan, SoftmaxPlan};
use crate::{Error, Result};
use cranelift_codegen::ir::{
    types, AbiParam, FuncRef, InstBuilder, MemFlagsData, Signature, Type, Value,
};
use cranelift_frontend::FunctionBuilder;
use cranelift_jit::JITModule;
use cranelift_module::{Linkage, Module};
use cranelora_graph::{DType, Graph, NodeId, Op};
use fused::{LoopGroup, Step};
use std::collections::HashMap;

/// Plans the runtime helpers read, kept alive by the compiled graph (the
/// generated code holds their addresses).
// Boxed on purpose: the code embeds each plan's address, which must not
// move when the vector grows.
#[allow(clippy::vec_box)]
#[derive(Debug, Default)]
pub struct Plans {
    pub(crate) matmul_f32: Vec<Box<MatMulPlan<f32>>>,
    pub(crate) matmul_f64: Vec<Box<MatMulPlan<f64>>>,
    pub(crate) conv: Vec<Box<ConvPlan>>,
    pub(crate) rows: Vec<Box<RowPlan>>,
    pub(crate) softmax: Vec<Box<SoftmaxPlan>>,
    pub(crate) sum_norm: Vec<Box<crate::runtime::SumNormPlan>>,
    pub(crate) gather_matmul: Vec<Box<gather_matmul::GatherMatMulPlan>>,
    /// Parameters (indices into the sorted Parameters) that products read
    /// as a 2-D right operand, in slot order: the caller passes each one's
    /// packed copy, or null, after the output pointers (`compiled.rs`).
    pub(crate) packed_params: Vec<usize>,
}

/// The function's arguments.
#[derive(Clone, Copy)]
pub(crate) struct Args {
    pub inputs: Value,
    pub params: Value,
    pub outputs: Value,
    pub arena: Value,
    pub status: Value,
}

/// Emits the CLIF of one graph.
pub(crate) struct Lowerer<'a> {
    pub b: FunctionBuilder<'a>,
    pub module: &'a mut JITModule,
    pub graph: &'a Graph,
    pub locs: &'a HashMap<NodeId, Loc>,
    /// Address of each constant's first element.
    pub consts: &'a [usize],
    pub plans: &'a mut Plans,
    /// Transposes the products read or write in place (`heads.rs`).
    pub heads: &'a heads::HeadLayouts,
    pub args: Args,
    pub ptr: Type,
    /// Products of at most this many multiply-adds are emitted inline
    /// ([`crate::JitOptions::inline_matmul_macs`]).
    pub inline_macs: usize,
    funcs: HashMap<&'static str, FuncRef>,
}

/// The dims of operand `i` of node `id` (for the plans built at compile time).
pub(crate) fn operand_dims(g: &Graph, id: NodeId, i: usize) -> Vec<usize> {
    let op = g.operands(id)[i];
    let node = g.node(op).expect("internal: live operand");
    node.shape.dims().to_vec()
}

/// Flags of every load and store: in bounds (checked before the call or by
/// the generated code) and naturally aligned.
pub(crate) fn flags() -> MemFlagsData {
    MemFlagsData::trusted()
}

/// The CLIF type of a dtype.
pub(crate) fn clif_type(d: DType) -> Type {
    match d {
        DType::F32 => types::F32,
        DType::F64 => types::F64,
        DType::I64 => types::I64,
    }
}

/// The signature of the generated function (see the module docs).
pub(crate) fn entry_signature(module: &dyn Module) -> Signature {
    let ptr = module.target_config().pointer_type();
    let mut sig = module.make_signature();
    for _ in 0..5 {
        sig.params.push(AbiParam::new(ptr));
    }
    sig.returns.push(AbiParam::new(types::I32));
    sig
}

impl<'a> Lowerer<'a> {
    /// Starts the function: entry block with the five arguments.
    pub fn new(
        mut b: FunctionBuilder<'a>,
        module: &'a mut JITModule,
        graph: &'a Graph,
        locs: &'a HashMap<NodeId, Loc>,
        consts: &'a [usize],
        plans: &'a mut Plans,
        heads: &'a heads::HeadLayouts,
    ) -> Self {
        let ptr = module.target_config().pointer_type();
        let entry = b.create_block();
        b.append_block_params_for_function_params(entry);
        b.switch_to_block(entry);
        b.seal_block(entry);
        let p = b.block_params(entry).to_vec();
        let args = Args {
            inputs: p[0],
            params: p[1],
            outputs: p[2],
            arena: p[3],
            status: p[4],
        };
        Self {
            b,
            module,
            graph,
            locs,
            consts,
            plans,
            heads,
            args,
            ptr,
            inline_macs: small_matmul::DEFAULT_INLINE_MACS,
            funcs: HashMap::new(),
        }
    }

    /// Emits every step (a node, or a fused loop group of `groups`), the
    /// output copies and `return 0`.
    ///
    /// # Errors
    /// [`Error::Unsupported`] for an op without a lowering; Cranelift errors.
    pub fn lower_all(
        mut self,
        steps: &[Step],
        groups: &[LoopGroup],
        epilogues: &HashMap<usize, epilogue::EpilogueGroup>,
        softmaxes: &HashMap<NodeId, softmax::FusedSoftmax>,
        norms: &HashMap<NodeId, sum_norm::FusedSumNorm>,
    ) -> Result<()> {
        for step in steps {
            match *step {
                Step::Node(id) => match (softmaxes.get(&id), norms.get(&id)) {
                    (Some(f), _) => softmax::lower(&mut self, f)?,
                    (_, Some(f)) => sum_norm::lower(&mut self, f)?,
                    _ => self.node(id)?,
                },
                Step::Group(gi) => match epilogues.get(&gi) {
                    Some(e) => linalg::matmul_with_epilogue(&mut self, e.matmul, &e.operands)?,
                    None => fused::lower_group(&mut self, &groups[gi])?,
                },
            }
        }
        let outputs = self.graph.outputs().to_vec();
        // In-place updates need the copies from Parameter buffers first.
        for i in crate::inplace::end_copies(&outputs, self.locs) {
            movement::copy_to_output(&mut self, outputs[i], i)?;
        }
        let zero = self.b.ins().iconst(types::I32, 0);
        self.b.ins().return_(&[zero]);
        let config = self.module.target_config();
        self.b.finalize(config);
        Ok(())
    }

    /// The node's record in the graph.
    pub fn node_of(&self, id: NodeId) -> &'a cranelora_graph::Node {
        self.graph
            .node(id)
            .expect("internal: lowered nodes are live")
    }

    /// Emits one node: the per-op table.
    fn node(&mut self, id: NodeId) -> Result<()> {
        let node = self.node_of(id);
        if node.shape.numel() == 0
            && !matches!(
                node.op,
                Op::Reduce { .. } | Op::Gather | Op::ScatterAdd { .. } | Op::GatherMatMul
            )
        {
            return Ok(()); // nothing to compute
        }
        match &node.op {
            // Read in place (memory.rs); views share their operand's buffer.
            Op::Input { .. } | Op::Constant(_) | Op::Parameter { .. } => Ok(()),
            op if is_view(op) => Ok(()),
            Op::Transpose { .. } if self.heads.views.contains(&id) => Ok(()),
            op if !crate::lowerable(op) => Err(self.unsupported(id)),
            Op::MatMul => linalg::matmul(self, id),
            Op::Conv2d(_) | Op::Conv2dInputGrad { .. } | Op::Conv2dWeightGrad { .. } => {
                linalg::conv(self, id)
            }
            Op::Reduce { .. } => reduce::reduce(self, id),
            Op::Softmax { axis } => rows::softmax(self, id, *axis),
            Op::LayerNorm { axis, eps, affine } => rows::layer_norm(self, id, *axis, *eps, *affine),
            Op::Broadcast { .. } => movement::broadcast(self, id),
            Op::Transpose { perm } => movement::transpose(self, id, perm),
            Op::Slice { ranges } => movement::slice(self, id, ranges),
            Op::Pad { pads, value } => movement::pad(self, id, pads, *value),
            Op::Concat { axis } => movement::concat(self, id, *axis),
            Op::Gather => index::gather(self, id),
            Op::ScatterAdd { rows } => index::scatter_add(self, id, *rows),
            Op::GatherMatMul => gather_matmul::lower(self, id),
            op if op.is_elementwise() => elementwise::lower(self, id),
            _ => Err(self.unsupported(id)),
        }
    }

    /// The error for a node the JIT does not lower.
    pub fn unsupported(&self, id: NodeId) -> Error {
        Error::Unsupported {
            op: self.node_of(id).op.to_string(),
            node: self.graph.desc(id),
        }
    }

    /// The address of the node's buffer, computed at the current position.
    pub fn addr(&mut self, id: NodeId) -> Value {
        let load = |this: &mut Self, base: Value, i: usize| {
            let off = (i * this.ptr.bytes() as usize) as i32;
            this.b.ins().load(this.ptr, flags(), base, off)
        };
        match self.locs[&id] {
            Loc::Input(i) => load(self, self.args.inputs, i),
            Loc::Param(i) => load(self, self.args.params, i),
            Loc::Output(i) => load(self, self.args.outputs, i),
            Loc::Const(i) => self.b.ins().iconst(self.ptr, self.consts[i] as i64),
            Loc::Arena(off) => self.b.ins().iadd_imm_s(self.args.arena, off as i64),
        }
    }

    /// The start of the arena's scratch area.
    pub fn scratch(&mut self) -> Value {
        self.args.arena
    }

    /// A pointer-sized constant.
    pub fn iconst_ptr(&mut self, v: usize) -> Value {
        self.b.ins().iconst(self.ptr, v as i64)
    }

    /// Calls the runtime helper `name` (declared on first use) and returns its results.
    pub fn call(
        &mut self,
        name: &'static str,
        params: &[Type],
        returns: &[Type],
        args: &[Value],
    ) -> Result<Vec<Value>> {
        let fref = match self.funcs.get(name) {
            Some(&f) => f,
            None => {
                let mut sig = self.module.make_signature();
                sig.params.extend(params.iter().map(|&t| AbiParam::new(t)));
                sig.returns
                    .extend(returns.iter().map(|&t| AbiParam::new(t)));
                let id = self.module.declare_function(name, Linkage::Import, &sig)?;
                let f = self.module.declare_func_in_func(id, self.b.func);
                self.funcs.insert(name, f);
                f
            }
        };
        let inst = self.b.ins().call(fref, args);
        Ok(self.b.inst_results(inst).to_vec())
    }

    /// Returns `status` from the function if it is nonzero, after storing
    /// the node's index in status word 0.
    pub fn check_status(&mut self, id: NodeId, status: Value) {
        let fail = self.b.create_block();
        let cont = self.b.create_block();
        self.b.ins().brif(status, fail, &[], cont, &[]);
        self.b.switch_to_block(fail);
        self.b.seal_block(fail);
        let node = self.b.ins().iconst(types::I64, id.index() as i64);
        self.b.ins().store(flags(), node, self.args.status, 0);
        self.b.ins().return_(&[status]);
        self.b.switch_to_block(cont);
        self.b.seal_block(cont);
    }
}

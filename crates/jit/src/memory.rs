//! The memory plan: where every node's value lives during one call.
//!
//! - Inputs, Parameters and Constants are read where they are (the caller's
//!   buffers, the bound buffers, the constants the [`CompiledGraph`] holds).
//! - Reshape and StopGradient are views: they share their operand's buffer
//!   (row-major data is the same), so they cost nothing; so are the
//!   Transposes the products read through strides (`lower/heads.rs`).
//! - A computed node that is a graph output is written straight into the
//!   caller's output buffer (its first output slot; repeated slots and
//!   outputs that are not computed are copied at the end).
//! - Every other node gets an offset in one arena, by liveness: a buffer is
//!   allocated (first fit) when its node runs and freed after its last user
//!   (a view extends its operand's life) has run, so buffers of different
//!   layers reuse the same bytes. A node's output never overlaps its
//!   operands: it is allocated before they are freed.
//! - A fused loop group is one step: its members that are not group
//!   outputs live in registers and get no buffer (no `Loc`); its outputs
//!   are allocated together before its inputs can be freed.
//! - The arena starts with a scratch area that runtime helpers use in turn
//!   (GEMM packing workspace, im2col columns), sized for the neediest node.
//!
//! [`CompiledGraph`]: crate::CompiledGraph

use cranelora_graph::{DType, Graph, NodeId, Op};
use cranelora_kernels::gemm::workspace_len;
use std::collections::{HashMap, HashSet};
use std::fmt;

/// Alignment of every arena buffer, in bytes (a cache line).
pub const ALIGN: usize = 64;

/// Where a node's value lives during a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loc {
    /// The caller's input buffer number `i`.
    Input(usize),
    /// The bound buffer of Parameter number `i` (sorted names).
    Param(usize),
    /// The compiled graph's constant number `i`.
    Const(usize),
    /// The caller's output buffer number `i`.
    Output(usize),
    /// This byte offset in the arena.
    Arena(usize),
}

/// One arena buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    /// The node whose value it holds.
    pub node: NodeId,
    /// Byte offset in the arena.
    pub offset: usize,
    /// Size in bytes.
    pub bytes: usize,
    /// The steps (positions in the execution order) from its definition to its last use.
    pub live: (usize, usize),
}

/// The memory plan of a compiled graph, exposed for docs and the CLI.
#[derive(Clone, Debug, Default)]
pub struct MemoryPlan {
    /// Total arena size in bytes (scratch included).
    pub arena_bytes: usize,
    /// The scratch area at the start of the arena, in bytes.
    pub scratch_bytes: usize,
    /// Sum of all arena buffers' sizes: what the arena would be without reuse.
    pub unshared_bytes: usize,
    /// Every arena buffer.
    pub slots: Vec<Slot>,
    /// Where each node lives.
    pub locs: HashMap<NodeId, Loc>,
}

impl fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "arena {} B (scratch {} B; {} B without reuse), {} buffers",
            self.arena_bytes,
            self.scratch_bytes,
            self.unshared_bytes,
            self.slots.len()
        )?;
        for s in &self.slots {
            writeln!(
                f,
                "  {:>6} @ {:>10} {:>10} B  steps {}..={}",
                s.node.to_string(),
                s.offset,
                s.bytes,
                s.live.0,
                s.live.1
            )?;
        }
        Ok(())
    }
}

/// Whether the node is a view of its first operand (shares its buffer).
pub fn is_view(op: &Op) -> bool {
    matches!(op, Op::Reshape { .. } | Op::StopGradient)
}

/// Plans the memory of `g`, executed in `steps` (a topological order of
/// nodes, a fused group's members sharing one step); `internal` are the
/// group members kept in registers; `params` are the Parameter names in
/// binding order, `consts` maps each Constant node to its index;
/// `views` are further nodes that share their first operand's buffer
/// (Transposes read in place); `reuse` maps a node to an operand whose
/// arena buffer it takes over when that buffer dies at the node's step and
/// has its size (a softmax run in place over its scores, `lower/softmax.rs`:
/// the node's helper must accept its output aliasing that operand).
pub fn plan(
    g: &Graph,
    steps: &[Vec<NodeId>],
    internal: &HashSet<NodeId>,
    params: &[String],
    consts: &HashMap<NodeId, usize>,
    (views, reuse): (&HashSet<NodeId>, &HashMap<NodeId, NodeId>),
) -> MemoryPlan {
    let order: Vec<NodeId> = steps.iter().flatten().copied().collect();
    let mut locs: HashMap<NodeId, Loc> = HashMap::new();
    let step: HashMap<NodeId, usize> = steps
        .iter()
        .enumerate()
        .flat_map(|(i, s)| s.iter().map(move |&n| (n, i)))
        .collect();
    // The node whose buffer each node uses (itself unless it is a view).
    let mut root: HashMap<NodeId, NodeId> = HashMap::new();
    for &id in &order {
        let node = g.node(id).expect("internal: order lists live nodes");
        let r = if is_view(&node.op) || views.contains(&id) {
            root[&g.operands(id)[0]]
        } else {
            id
        };
        root.insert(id, r);
    }
    // Last step at which each root's buffer is read; outputs live to the end.
    let end = steps.len();
    let mut last: HashMap<NodeId, usize> = HashMap::new();
    for &id in &order {
        for o in g.operands(id) {
            let e = last.entry(root[&o]).or_insert(0);
            *e = (*e).max(step[&id]);
        }
    }
    for o in g.outputs() {
        last.insert(root[o], end);
    }
    let scratch = order
        .iter()
        .map(|&id| scratch_bytes(g, id))
        .max()
        .unwrap_or(0);
    let scratch = scratch.next_multiple_of(ALIGN);
    let mut arena = Arena::new(scratch);
    let mut plan = MemoryPlan {
        scratch_bytes: scratch,
        ..MemoryPlan::default()
    };
    let mut frees: Vec<(usize, usize, usize)> = Vec::new(); // (last step, offset, bytes)
    for (s, nodes) in steps.iter().enumerate() {
        for &id in nodes.iter().filter(|id| !internal.contains(id)) {
            let view = views.contains(&id).then(|| locs[&root[&id]]);
            let loc = view.or_else(|| locate(g, id, &locs, &root, params, consts));
            let node = g.node(id).expect("internal: order lists live nodes");
            let bytes = (node.shape.numel() * node.dtype.size_bytes()).max(1);
            let live = (s, last.get(&id).copied().unwrap_or(s));
            // An operand's own arena buffer (not a view's) it may take over.
            let src = reuse
                .get(&id)
                .filter(|&src| root[src] == *src)
                .and_then(|src| locs.get(src));
            let loc = loc.or_else(|| {
                let offset = take_dying(&mut frees, src, (s, bytes), live.1)?;
                plan.slots.push(Slot {
                    node: id,
                    offset,
                    bytes,
                    live,
                });
                Some(Loc::Arena(offset))
            });
            let loc = loc.unwrap_or_else(|| {
                let offset = arena.alloc(bytes);
                frees.push((live.1, offset, bytes));
                plan.unshared_bytes += bytes.next_multiple_of(ALIGN);
                plan.slots.push(Slot {
                    node: id,
                    offset,
                    bytes,
                    live,
                });
                Loc::Arena(offset)
            });
            locs.insert(id, loc);
        }
        // Free what dies at this step, after the step's own buffers are taken.
        frees.retain(|&(l, offset, bytes)| {
            let dead = l <= s;
            if dead {
                arena.free(offset, bytes);
            }
            !dead
        });
    }
    plan.arena_bytes = arena.high_water;
    plan.locs = locs;
    plan
}

/// The offset of `src`'s arena buffer when it is `bytes` long and dies at
/// `step` (`frees`: (last step, offset, bytes)); its entry then lives to
/// `until`, for the node that takes it over.
fn take_dying(
    frees: &mut [(usize, usize, usize)],
    src: Option<&Loc>,
    (step, bytes): (usize, usize),
    until: usize,
) -> Option<usize> {
    let Some(&Loc::Arena(offset)) = src else {
        return None;
    };
    let f = frees
        .iter_mut()
        .find(|f| f.1 == offset && f.2 == bytes && f.0 == step)?;
    f.0 = until;
    Some(offset)
}

/// Where a node lives if not in the arena: read in place, a view, or a
/// graph output written straight into the caller's buffer.
fn locate(
    g: &Graph,
    id: NodeId,
    locs: &HashMap<NodeId, Loc>,
    root: &HashMap<NodeId, NodeId>,
    params: &[String],
    consts: &HashMap<NodeId, usize>,
) -> Option<Loc> {
    let node = g.node(id).expect("internal: order lists live nodes");
    Some(match &node.op {
        Op::Input { .. } => Loc::Input(index_of(g.inputs(), id)),
        Op::Parameter { name } => Loc::Param(
            params
                .iter()
                .position(|p| p == name)
                .expect("internal: every parameter is listed"),
        ),
        Op::Constant(_) => Loc::Const(consts[&id]),
        op if is_view(op) => locs[&root[&id]],
        _ => Loc::Output(g.outputs().iter().position(|&o| o == id)?),
    })
}

fn index_of(list: &[NodeId], id: NodeId) -> usize {
    list.iter()
        .position(|&n| n == id)
        .expect("internal: the node is listed")
}

/// Scratch bytes the runtime helper of node `id` needs (0 for inline code).
pub fn scratch_bytes(g: &Graph, id: NodeId) -> usize {
    let node = g.node(id).expect("internal: live node");
    let size = node.dtype.size_bytes();
    let ws = |m, n, k, packed| match node.dtype {
        DType::F64 => workspace_len::<f64>(m, n, k, packed),
        _ => workspace_len::<f32>(m, n, k, packed),
    };
    match &node.op {
        Op::MatMul => crate::lower::linalg::matmul_scratch_bytes(g, id),
        Op::Conv2d(_) | Op::Conv2dInputGrad { .. } | Op::Conv2dWeightGrad { .. } => {
            let plan = crate::lower::linalg::conv_dims(g, id);
            let (rows, cols, o) = (plan.rows, plan.cols, plan.out_channels);
            // im2col columns, then the largest of the three products' workspace.
            let col = (rows * cols).next_multiple_of(ALIGN / size);
            let w = ws(o, cols, rows, false)
                .max(ws(rows, cols, o, false))
                .max(ws(o, rows, cols, false));
            (col + w) * size
        }
        Op::GatherMatMul => crate::lower::gather_matmul::scratch_bytes(g, id),
        _ => 0,
    }
}

/// First-fit allocator over the arena's byte range, after the scratch area.
struct Arena {
    /// Free ranges (offset, bytes), sorted by offset, coalesced.
    free: Vec<(usize, usize)>,
    high_water: usize,
}

impl Arena {
    fn new(start: usize) -> Self {
        Self {
            free: Vec::new(),
            high_water: start,
        }
    }

    fn alloc(&mut self, bytes: usize) -> usize {
        let bytes = bytes.next_multiple_of(ALIGN);
        if let Some(i) = self.free.iter().position(|&(_, len)| len >= bytes) {
            let (offset, len) = self.free[i];
            if len == bytes {
                self.free.remove(i);
            } else {
                self.free[i] = (offset + bytes, len - bytes);
            }
            return offset;
        }
        // Grow: a free range at the end is extended rather than skipped.
        match self.free.last() {
            Some(&(offset, len)) if offset + len == self.high_water => {
                self.free.pop();
                self.high_water = offset + bytes;
                offset
            }
            _ => {
                let offset = self.high_water;
                self.high_water += bytes;
                offset
            }
        }
    }

    fn free(&mut self, offset: usize, bytes: usize) {
        let bytes = bytes.next_multiple_of(ALIGN);
        let i = self.free.partition_point(|&(o, _)| o < offset);
        self.free.insert(i, (offset, bytes));
        // Coalesce with the next, then with the previous range.
        if i + 1 < self.free.len() && offset + bytes == self.free[i + 1].0 {
            self.free[i].1 += self.free[i + 1].1;
            self.free.remove(i + 1);
        }
        if i > 0 && self.free[i - 1].0 + self.free[i - 1].1 == offset {
            self.free[i - 1].1 += self.free[i].1;
            self.free.remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arena_reuses_freed_ranges_and_coalesces() {
        let mut a = Arena::new(0);
        let x = a.alloc(100);
        let y = a.alloc(64);
        assert_eq!((x, y), (0, 128));
        a.free(x, 100);
        a.free(y, 64);
        assert_eq!(a.free, vec![(0, 192)]);
        assert_eq!(a.alloc(150), 0);
        assert_eq!(a.high_water, 192);
    }
}

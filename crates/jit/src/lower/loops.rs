//! The strided loop nest: the one loop construct the lowering uses.
//!
//! An [`Access`] is a buffer read or written at `base + (offset + Σ iₖ·strideₖ)·size`
//! for the loop indices iₖ over `dims`. Before emitting, dims of size 1 are
//! dropped and adjacent dims are merged wherever every access is contiguous
//! across them, so a same-shape elementwise op becomes one flat loop and a
//! bias add a two-level one. Each level is a header/body/exit triple (as in
//! cranelift-jit-demo's `translate_while_loop`), each block sealed as soon as
//! its predecessors are known; each level adds its index times the stride to
//! the pointers of the level above.

use super::Lowerer;
use crate::Result;
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{types, BlockArg, InstBuilder, Value};

/// One strided buffer access of a loop nest.
#[derive(Clone, Debug)]
pub(crate) struct Access {
    /// The buffer's address.
    pub base: Value,
    /// Element stride per loop dim (0: broadcast).
    pub strides: Vec<i64>,
    /// Element offset added to every index.
    pub offset: i64,
    /// Bytes per element.
    pub size: i64,
}

/// Row-major element strides of `dims`.
pub(crate) fn contiguous(dims: &[usize]) -> Vec<i64> {
    let mut s = vec![0i64; dims.len()];
    let mut acc = 1i64;
    for i in (0..dims.len()).rev() {
        s[i] = acc;
        acc *= dims[i] as i64;
    }
    s
}

/// Strides reading an operand of `dims` broadcast (numpy rules) to `out` dims.
pub(crate) fn broadcast_strides(dims: &[usize], out: &[usize]) -> Vec<i64> {
    let own = contiguous(dims);
    let pad = out.len() - dims.len();
    (0..out.len())
        .map(|i| {
            if i < pad || dims[i - pad] == 1 {
                0
            } else {
                own[i - pad]
            }
        })
        .collect()
}

/// Drops size-1 dims and merges adjacent dims that every access walks contiguously.
fn simplify(dims: &[usize], accs: &[Access]) -> (Vec<usize>, Vec<Vec<i64>>) {
    let keep: Vec<usize> = (0..dims.len()).filter(|&d| dims[d] != 1).collect();
    let mut out_dims: Vec<usize> = Vec::new();
    let mut strides: Vec<Vec<i64>> = vec![Vec::new(); accs.len()];
    for &d in &keep {
        let mergeable = !out_dims.is_empty()
            && accs.iter().enumerate().all(|(a, acc)| {
                let prev = *strides[a]
                    .last()
                    .expect("internal: same length as out_dims");
                prev == acc.strides[d] * dims[d] as i64
            });
        if mergeable {
            *out_dims.last_mut().expect("internal: not empty") *= dims[d];
            for (a, acc) in accs.iter().enumerate() {
                *strides[a].last_mut().expect("internal: not empty") = acc.strides[d];
            }
        } else {
            out_dims.push(dims[d]);
            for (a, acc) in accs.iter().enumerate() {
                strides[a].push(acc.strides[d]);
            }
        }
    }
    (out_dims, strides)
}

/// The body of a loop nest: gets one address per access.
pub(crate) type Body<'b, 'a> = dyn FnMut(&mut Lowerer<'a>, &[Value]) -> Result<()> + 'b;

impl<'a> Lowerer<'a> {
    /// Runs `body` for every index of `dims` (row-major order) with the
    /// address of each access at that index. Nothing runs if a dim is 0.
    pub(crate) fn nest(
        &mut self,
        dims: &[usize],
        accs: &[Access],
        body: &mut Body<'_, 'a>,
    ) -> Result<()> {
        if dims.contains(&0) {
            return Ok(());
        }
        let (dims, strides) = simplify(dims, accs);
        let bases: Vec<Value> = accs
            .iter()
            .map(|a| {
                if a.offset == 0 {
                    a.base
                } else {
                    self.b.ins().iadd_imm_s(a.base, a.offset * a.size)
                }
            })
            .collect();
        let sizes: Vec<i64> = accs.iter().map(|a| a.size).collect();
        self.level(&dims, &strides, &sizes, 0, bases, body)
    }

    fn level(
        &mut self,
        dims: &[usize],
        strides: &[Vec<i64>],
        sizes: &[i64],
        d: usize,
        ptrs: Vec<Value>,
        body: &mut Body<'_, 'a>,
    ) -> Result<()> {
        if d == dims.len() {
            return body(self, &ptrs);
        }
        self.counted_loop(dims[d] as i64, &mut |this, i| {
            let inner: Vec<Value> = ptrs
                .iter()
                .enumerate()
                .map(|(a, &p)| match strides[a][d] * sizes[a] {
                    0 => p,
                    step => {
                        let off = this.b.ins().imul_imm_s(i, step);
                        this.b.ins().iadd(p, off)
                    }
                })
                .collect();
            this.level(dims, strides, sizes, d + 1, inner, body)
        })
    }

    /// Like [`Lowerer::nest`], but when the innermost (merged) dim is walked
    /// with stride 1 or 0 by every access, that dim runs `lanes` elements at
    /// a time through `vector` (addresses of the first lane; a stride-0
    /// access is to be loaded as a scalar and splat), then a scalar tail
    /// through `scalar`. Otherwise everything goes through `scalar`.
    pub(crate) fn nest_vector(
        &mut self,
        dims: &[usize],
        accs: &[Access],
        lanes: usize,
        vector: &mut VBody<'_, 'a>,
        scalar: &mut Body<'_, 'a>,
    ) -> Result<()> {
        if dims.contains(&0) {
            return Ok(());
        }
        let (sdims, strides) = simplify(dims, accs);
        let inner_ok = sdims.last().is_some_and(|&n| n >= lanes)
            && strides.iter().all(|s| matches!(s.last(), Some(0 | 1)));
        if !inner_ok {
            return self.nest(dims, accs, scalar);
        }
        let last = sdims.len() - 1;
        let n = sdims[last];
        let unit: Vec<bool> = strides.iter().map(|s| s[last] == 1).collect();
        let sizes: Vec<i64> = accs.iter().map(|a| a.size).collect();
        let bases: Vec<Value> = accs
            .iter()
            .map(|a| {
                if a.offset == 0 {
                    a.base
                } else {
                    self.b.ins().iadd_imm_s(a.base, a.offset * a.size)
                }
            })
            .collect();
        let outer = &sdims[..last];
        let outer_strides: Vec<Vec<i64>> = strides.iter().map(|s| s[..last].to_vec()).collect();
        let vec_end = (n / lanes * lanes) as i64;
        let mut inner = |this: &mut Self, ptrs: &[Value]| -> Result<()> {
            let at = |this: &mut Self, i: Value| -> Vec<Value> {
                ptrs.iter()
                    .enumerate()
                    .map(|(a, &p)| {
                        if unit[a] {
                            let off = this.b.ins().imul_imm_s(i, sizes[a]);
                            this.b.ins().iadd(p, off)
                        } else {
                            p
                        }
                    })
                    .collect()
            };
            this.stepped_loop(0, vec_end, lanes as i64, &mut |this, i| {
                let p = at(this, i);
                vector(this, &p, &unit)
            })?;
            this.stepped_loop(vec_end, n as i64, 1, &mut |this, i| {
                let p = at(this, i);
                scalar(this, &p)
            })
        };
        self.level(outer, &outer_strides, &sizes, 0, bases, &mut inner)
    }

    /// `for i in (start..end).step_by(step) { body(i) }`; nothing if empty.
    pub(crate) fn stepped_loop(
        &mut self,
        start: i64,
        end: i64,
        step: i64,
        body: &mut Body1<'_, 'a>,
    ) -> Result<()> {
        if start >= end {
            return Ok(());
        }
        let header = self.b.create_block();
        let block = self.b.create_block();
        let exit = self.b.create_block();
        self.b.append_block_param(header, types::I64);
        let first = self.b.ins().iconst(types::I64, start);
        self.b.ins().jump(header, &[BlockArg::from(first)]);
        self.b.switch_to_block(header);
        let i = self.b.block_params(header)[0];
        let more = self.b.ins().icmp_imm_s(IntCC::SignedLessThan, i, end);
        self.b.ins().brif(more, block, &[], exit, &[]);
        self.b.switch_to_block(block);
        self.b.seal_block(block);
        body(self, i)?;
        let next = self.b.ins().iadd_imm_s(i, step);
        self.b.ins().jump(header, &[BlockArg::from(next)]);
        self.b.seal_block(header);
        self.b.switch_to_block(exit);
        self.b.seal_block(exit);
        Ok(())
    }

    /// `for i in 0..n { body(i) }` with an i64 counter.
    pub(crate) fn counted_loop(&mut self, n: i64, body: &mut Body1<'_, 'a>) -> Result<()> {
        self.stepped_loop(0, n, 1, body)
    }
}

/// The vector body of [`Lowerer::nest_vector`]: addresses of the first
/// lane, and per access whether it is contiguous (else splat a scalar).
pub(crate) type VBody<'b, 'a> = dyn FnMut(&mut Lowerer<'a>, &[Value], &[bool]) -> Result<()> + 'b;

/// The body of a counted loop: gets the index.
pub(crate) type Body1<'b, 'a> = dyn FnMut(&mut Lowerer<'a>, Value) -> Result<()> + 'b;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_strides_zero_the_broadcast_dims() {
        assert_eq!(broadcast_strides(&[3], &[2, 3]), vec![0, 1]);
        assert_eq!(broadcast_strides(&[2, 1], &[2, 3]), vec![1, 0]);
        assert_eq!(contiguous(&[2, 3, 4]), vec![12, 4, 1]);
    }
}

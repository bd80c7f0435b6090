//! Which microkernel family runs on this host, and its blocking sizes.
//!
//! The instruction set is detected at run time (`is_x86_feature_detected!`),
//! so one binary uses AVX-512 where it exists and falls back to AVX2+FMA or
//! to portable Rust elsewhere. A [`Family`] is only handed out for an
//! instruction set the host has: that is what makes calling its
//! `#[target_feature]` microkernels sound.

use super::kernel::{Elem, TileFn};
use super::portable;
#[cfg(target_arch = "x86_64")]
use super::{avx2, avx512};
use crate::{DType, Scalar};

/// An instruction set a microkernel family is written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Isa {
    /// AVX-512F (zmm registers, 32 of them).
    Avx512,
    /// AVX2 with FMA (ymm registers, 16 of them).
    Avx2,
    /// Plain Rust the compiler vectorizes for the baseline target.
    Portable,
}

impl Isa {
    /// Every family, fastest first.
    pub(crate) const ALL: [Isa; 3] = [Isa::Avx512, Isa::Avx2, Isa::Portable];

    /// Whether this host can run the family.
    pub(crate) fn available(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(not(target_arch = "x86_64"))]
            Isa::Avx512 | Isa::Avx2 => false,
            Isa::Portable => true,
        }
    }

    /// The fastest family this host can run.
    pub(crate) fn detect() -> Isa {
        Isa::ALL
            .into_iter()
            .find(|isa| isa.available())
            .unwrap_or(Isa::Portable)
    }
}

/// Register and cache blocking of one family (all in elements).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Blocking {
    /// Rows of a microkernel tile.
    pub mr: usize,
    /// Columns of a microkernel tile.
    pub nr: usize,
    /// Depth of a packed block (the `B` micro-panel, kc·nr, stays in L1).
    pub kc: usize,
    /// Row stride of a packed `A` block (at least `kc`).
    pub lda: usize,
    /// Rows of a packed `A` block (mc·kc stays in L2); a multiple of `mr`.
    pub mc: usize,
    /// Columns of a packed `B` block; a multiple of `nr`.
    pub nc: usize,
    /// Rows of the `B` micro-panel ahead of the current one that the
    /// microkernel prefetches each step (only where `Lanes::prefetch` is
    /// not a no-op).
    pub pf: usize,
}

/// The microkernels of one instruction set and element type.
pub(crate) struct Family<E: 'static> {
    /// Its blocking.
    pub blocking: Blocking,
    /// `tiles[m - 1]` computes an `m × nr` tile, for `m` in `1..=mr`.
    pub tiles: &'static [TileFn<E>],
    /// Columns the `narrow` tiles compute (one vector).
    pub narrow_width: usize,
    /// As `tiles`, for edge panels of at most `narrow_width` valid columns.
    pub narrow: &'static [TileFn<E>],
    /// The same microkernels compiled for one deep depth block (`kc` up to
    /// the whole `k` of a model's layer), for short products with a
    /// prepacked weight (see [`Family::for_product`]); `None` where not
    /// measured.
    pub deep: Option<&'static Family<E>>,
}

impl<E> Family<E> {
    /// The family an `m × · × k` product runs with: the [`deep`](Self::deep)
    /// one when `B` is prepacked, `A` is at most one `mc`-row block, and `k`
    /// is more than one of this family's depth blocks but at most one of
    /// the deep family's.
    ///
    /// Such a product (W1's 64×1024×1024 layers) then walks `k` in one
    /// block: each `C` tile is written once instead of `k / kc` times, and
    /// every micro-panel of the weight is read as one contiguous stream
    /// (`PackedRhs` stores a panel over the whole depth), where `kc`-deep
    /// blocks read each weight panel in `k / kc` pieces 128 KiB apart and
    /// restart the hardware prefetcher at each (docs/jit.md, "W1: one depth
    /// block"). `A` (≤ `mc` rows × `k`) and one weight panel (`k × nr`) stay
    /// in L2.
    pub(crate) fn for_product(&self, m: usize, k: usize, b_packed: bool) -> &Family<E> {
        match self.deep {
            Some(d)
                if b_packed
                    && m <= self.blocking.mc
                    && (self.blocking.kc + 1..=d.blocking.kc).contains(&k) =>
            {
                d
            }
            _ => self,
        }
    }
}

/// Element types with microkernel families.
pub(super) trait HasFamily: Elem {
    /// The family for `isa`, which must be available on this host.
    fn family(isa: Isa) -> &'static Family<Self>;
}

impl HasFamily for f32 {
    fn family(isa: Isa) -> &'static Family<f32> {
        assert!(
            isa.available(),
            "internal: {isa:?} kernels requested on a host without them"
        );
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => &avx512::F32,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => &avx2::F32,
            _ => &portable::F32,
        }
    }
}

impl HasFamily for f64 {
    fn family(isa: Isa) -> &'static Family<f64> {
        assert!(
            isa.available(),
            "internal: {isa:?} kernels requested on a host without them"
        );
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => &avx512::F64,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => &avx2::F64,
            _ => &portable::F64,
        }
    }
}

/// The blocking `gemm` uses for `T` on `isa`.
pub(crate) fn blocking<T: Scalar>(isa: Isa) -> Blocking {
    match T::DTYPE {
        DType::F64 => f64::family(isa).blocking,
        _ => f32::family(isa).blocking,
    }
}

/// The blocking an `m × · × k` product of `T` runs with on `isa`
/// ([`Family::for_product`]).
pub(crate) fn blocking_for<T: Scalar>(isa: Isa, m: usize, k: usize, b_packed: bool) -> Blocking {
    match T::DTYPE {
        DType::F64 => f64::family(isa).for_product(m, k, b_packed).blocking,
        _ => f32::family(isa).for_product(m, k, b_packed).blocking,
    }
}

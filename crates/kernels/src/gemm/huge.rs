//! Transparent huge pages for large prepacked weights.
//!
//! A product streams its prepacked weight through the cores once per call;
//! in 4 KiB pages W1's 4 MiB weight spans 1,024 pages, and the four weights
//! of its forward outrun the second-level TLB, so every call pays a page
//! walk per page. Measured on the 2-core VM (session 7, docs/jit.md "Huge
//! pages for prepacked weights"): a 64×1024×1024 product on 2 threads
//! cost 7.7 % more with four weights in turn than with one hot weight, and
//! nothing more in huge pages; W1 jit-folded ran 3 % faster (median of ten
//! interleaved rounds). Linux's default THP mode is `madvise`, so a buffer must ask:
//! [`PackedRhs`](super::PackedRhs) puts weights of at least [`HUGE_PAGE`]
//! bytes on a 2 MiB boundary and advises the whole huge pages they cover
//! (the tail stays in small pages, so no memory is wasted beyond the
//! alignment slack, which is never touched). The advice is only a hint:
//! where the kernel has THP off, or on other systems, nothing changes.

/// The x86-64 huge-page size, and the weight size from which it is used.
pub(super) const HUGE_PAGE: usize = 2 << 20;

/// The whole huge pages of `buf`, if it starts on a [`HUGE_PAGE`] boundary.
fn whole_pages<T>(buf: &[T]) -> Option<(*mut std::ffi::c_void, usize)> {
    let len = std::mem::size_of_val(buf) / HUGE_PAGE * HUGE_PAGE;
    let start = buf.as_ptr() as usize;
    (len > 0 && start.is_multiple_of(HUGE_PAGE)).then_some((start as *mut _, len))
}

/// Advises the kernel to back the whole huge pages of `buf` with
/// transparent huge pages (`MADV_HUGEPAGE`). Called before the buffer is
/// written: freshly mapped zero pages then fault in as huge pages.
pub(super) fn advise<T>(buf: &[T]) {
    madvise(buf, Advice::HugePages);
}

/// Asks the kernel to move the whole huge pages of the written `buf` into
/// huge pages now (`MADV_COLLAPSE`, Linux 6.1 on): a buffer the allocator
/// recycled from its heap was already faulted in small pages, which
/// [`advise`] alone would leave to the background `khugepaged`.
pub(super) fn collapse<T>(buf: &[T]) {
    madvise(buf, Advice::Collapse);
}

enum Advice {
    HugePages,
    Collapse,
}

#[cfg(target_os = "linux")]
fn madvise<T>(buf: &[T], advice: Advice) {
    let Some((start, len)) = whole_pages(buf) else {
        return;
    };
    let advice = match advice {
        Advice::HugePages => libc::MADV_HUGEPAGE,
        Advice::Collapse => libc::MADV_COLLAPSE,
    };
    // SAFETY: MADV_HUGEPAGE and MADV_COLLAPSE change no memory contents or
    // access rights, only how the kernel backs the range (a collapse copies
    // the pages' contents into a huge page); [start, start + len) lies
    // inside `buf`'s allocation and starts on a page boundary, as madvise
    // requires. A failure (THP not built in or off, an older kernel, no
    // free huge page) leaves the pages as they were, so it is ignored.
    unsafe {
        libc::madvise(start, len, advice);
    }
}

/// Huge pages are advised on Linux only; elsewhere this does nothing.
#[cfg(not(target_os = "linux"))]
fn madvise<T>(buf: &[T], _advice: Advice) {
    let _ = whole_pages(buf);
}

#[cfg(test)]
mod tests {
    use super::super::{MatRef, PackedRhs};
    use super::HUGE_PAGE;

    #[test]
    fn large_weights_start_on_a_huge_page_and_keep_their_values() {
        let (k, n) = (1024, 1024);
        let data: Vec<f32> = (0..k * n).map(|i| (i % 251) as f32 - 125.0).collect();
        let p = PackedRhs::pack(MatRef::new(&data, k, n).expect("fits"));
        assert!((p.panels().as_ptr() as usize).is_multiple_of(HUGE_PAGE));
        let q = p.clone();
        assert!((q.panels().as_ptr() as usize).is_multiple_of(HUGE_PAGE));
        assert_eq!(p.panels(), q.panels());
        let small = PackedRhs::pack(MatRef::new(&data[..64 * 64], 64, 64).expect("fits"));
        assert!((small.panels().as_ptr() as usize).is_multiple_of(64));
        let mut sorted: Vec<f32> = p.panels().to_vec();
        let mut want = data.clone();
        sorted.sort_by(f32::total_cmp);
        want.sort_by(f32::total_cmp);
        assert_eq!(sorted, want, "packing is a permutation of the weight");
    }
}

//! Strided matrix views and one product on them, through the `gemm` crate (the one burn-flex
//! multiplies with): transposes and column blocks are strides, never copies.

/// A strided matrix: element `(r, c)` at `ptr + r rs + c cs`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<P> {
    pub(crate) ptr: P,
    pub(crate) rs: isize,
    pub(crate) cs: isize,
}

/// A read-only [`Mat`].
pub(crate) type View = Mat<*const f32>;

impl<P> Mat<P> {
    /// Row-major rows of `row_stride` elements.
    pub(crate) fn rows(ptr: P, row_stride: usize) -> Self {
        Self {
            ptr,
            rs: row_stride as isize,
            cs: 1,
        }
    }
}

impl View {
    /// The transpose (strides swapped).
    pub(crate) fn t(self) -> Self {
        Self {
            ptr: self.ptr,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

// SAFETY: the raw pointers only ever point into slices borrowed for the duration of one kernel
// call, and each rayon task writes only its own block of the output.
unsafe impl<P> Send for Mat<P> {}
// SAFETY: as above.
unsafe impl<P> Sync for Mat<P> {}

/// `dst (m x n) = [dst +] scale lhs (m x k) rhs (k x n)`, `dst` kept only when `accumulate`;
/// single-threaded (the callers split the work over rayon).
///
/// # Safety
/// Every element the strides address must lie in a live allocation, and `dst` must not alias
/// the sources.
pub(crate) unsafe fn product(
    dst: Mat<*mut f32>,
    lhs: View,
    rhs: View,
    [m, n, k]: [usize; 3],
    accumulate: bool,
    scale: f32,
) {
    ::gemm::gemm(
        m,
        n,
        k,
        dst.ptr,
        dst.cs,
        dst.rs,
        accumulate,
        lhs.ptr,
        lhs.cs,
        lhs.rs,
        rhs.ptr,
        rhs.cs,
        rhs.rs,
        1.0,
        scale,
        false,
        false,
        false,
        ::gemm::Parallelism::None,
    );
}

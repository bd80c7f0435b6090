//! The convolution lowering: im2col and its adjoint col2im.
//!
//! For one image of `C×H×W` (NCHW without the N), [`im2col`] writes the
//! matrix `cols` of shape `(C·kh·kw) × (oh·ow)`, row-major, whose row
//! `c·kh·kw + i·kw + j` (PyTorch's flattening order of a `C×kh×kw` kernel)
//! holds, for every output position, the input value under kernel tap
//! `(i, j)` of channel `c` (0 where the tap falls in the padding). A
//! convolution is then one GEMM: `out (O × oh·ow) = W (O × C·kh·kw) · cols`.
//! [`col2im`] is the adjoint: it scatters-adds `cols` back into an image, which
//! is the input gradient of a convolution.

use crate::{KernelError, Result, Scalar};

/// The geometry of a 2-D convolution over one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2dGeometry {
    /// Input channels.
    pub channels: usize,
    /// Input height.
    pub height: usize,
    /// Input width.
    pub width: usize,
    /// Kernel (height, width).
    pub kernel: (usize, usize),
    /// Stride (vertical, horizontal).
    pub stride: (usize, usize),
    /// Zero padding added on each side (vertical, horizontal).
    pub padding: (usize, usize),
    /// Dilation (vertical, horizontal).
    pub dilation: (usize, usize),
}

impl Conv2dGeometry {
    /// Checks the geometry: positive kernel, stride and dilation, and a
    /// dilated kernel that fits in the padded input.
    ///
    /// # Errors
    /// [`KernelError::Geometry`] saying which constraint failed.
    pub fn validate(&self) -> Result<()> {
        let fail = |message: String| {
            Err(KernelError::Geometry {
                what: "conv2d",
                message,
            })
        };
        let (kh, kw) = self.kernel;
        if kh == 0 || kw == 0 || self.stride.0 == 0 || self.stride.1 == 0 {
            return fail(format!(
                "kernel {:?} and stride {:?} must be positive",
                self.kernel, self.stride
            ));
        }
        if self.dilation.0 == 0 || self.dilation.1 == 0 {
            return fail(format!("dilation {:?} must be positive", self.dilation));
        }
        let (eh, ew) = self.effective_kernel();
        if eh > self.height + 2 * self.padding.0 || ew > self.width + 2 * self.padding.1 {
            return fail(format!(
                "dilated kernel {eh}×{ew} is larger than the padded input {}×{}",
                self.height + 2 * self.padding.0,
                self.width + 2 * self.padding.1
            ));
        }
        Ok(())
    }

    /// The kernel's extent once dilated: `d·(k−1)+1` per axis.
    pub fn effective_kernel(&self) -> (usize, usize) {
        (
            self.dilation.0 * (self.kernel.0 - 1) + 1,
            self.dilation.1 * (self.kernel.1 - 1) + 1,
        )
    }

    /// Output (height, width): `(H + 2p − d·(k−1) − 1) / s + 1` per axis.
    /// Meaningful only for a geometry that passed [`Self::validate`].
    pub fn output_size(&self) -> (usize, usize) {
        let (eh, ew) = self.effective_kernel();
        (
            (self.height + 2 * self.padding.0 - eh) / self.stride.0 + 1,
            (self.width + 2 * self.padding.1 - ew) / self.stride.1 + 1,
        )
    }

    /// Rows of the column matrix: `C·kh·kw`.
    pub fn col_rows(&self) -> usize {
        self.channels * self.kernel.0 * self.kernel.1
    }

    /// Columns of the column matrix: `oh·ow`.
    pub fn col_cols(&self) -> usize {
        let (oh, ow) = self.output_size();
        oh * ow
    }

    /// Elements of one input image: `C·H·W`.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    fn check(&self, image: usize, cols: usize) -> Result<()> {
        self.validate()?;
        if image != self.image_len() {
            return Err(KernelError::Length {
                what: "conv2d image",
                expected: self.image_len(),
                actual: image,
            });
        }
        let needed = self.col_rows() * self.col_cols();
        if cols != needed {
            return Err(KernelError::Length {
                what: "conv2d column matrix",
                expected: needed,
                actual: cols,
            });
        }
        Ok(())
    }

    /// Calls `f(col_row, input_row_index, row_of_output_positions)` for every
    /// kernel tap and output row: the one traversal both directions share.
    /// `input_row_index` is `None` where the whole output row reads padding.
    fn for_each_tap(&self, mut f: impl FnMut(usize, Option<usize>, usize, usize, usize)) {
        let (kh, kw) = self.kernel;
        let (oh, ow) = self.output_size();
        for c in 0..self.channels {
            for i in 0..kh {
                for j in 0..kw {
                    let row = (c * kh + i) * kw + j;
                    for oy in 0..oh {
                        let y = (oy * self.stride.0 + i * self.dilation.0) as isize
                            - self.padding.0 as isize;
                        let src = (0..self.height as isize)
                            .contains(&y)
                            .then(|| (c * self.height + y as usize) * self.width);
                        f(row, src, oy, j, ow);
                    }
                }
            }
        }
    }

    /// Input column for output column `ox` and kernel tap column `j`, if inside the image.
    #[inline(always)]
    fn input_x(&self, ox: usize, j: usize) -> Option<usize> {
        let x = (ox * self.stride.1 + j * self.dilation.1) as isize - self.padding.1 as isize;
        (0..self.width as isize).contains(&x).then_some(x as usize)
    }
}

/// Unfolds one `C×H×W` image into the `(C·kh·kw) × (oh·ow)` column matrix.
///
/// # Errors
/// [`KernelError::Geometry`] for an invalid geometry, [`KernelError::Length`]
/// if `image` or `cols` do not have the geometry's sizes.
pub fn im2col<T: Scalar>(geom: &Conv2dGeometry, image: &[T], cols: &mut [T]) -> Result<()> {
    geom.check(image.len(), cols.len())?;
    let ncols = geom.col_cols();
    geom.for_each_tap(|row, src, oy, j, ow| {
        let out = &mut cols[row * ncols + oy * ow..row * ncols + (oy + 1) * ow];
        match src {
            None => out.fill(T::zero()),
            Some(base) => {
                for (ox, o) in out.iter_mut().enumerate() {
                    *o = geom.input_x(ox, j).map_or(T::zero(), |x| image[base + x]);
                }
            }
        }
    });
    Ok(())
}

/// The adjoint of [`im2col`]: `image ← image + fold(cols)`, each column entry
/// added to the input element it was read from (padding taps are dropped).
///
/// # Errors
/// As [`im2col`].
pub fn col2im<T: Scalar>(geom: &Conv2dGeometry, cols: &[T], image: &mut [T]) -> Result<()> {
    geom.check(image.len(), cols.len())?;
    let ncols = geom.col_cols();
    geom.for_each_tap(|row, src, oy, j, ow| {
        if let Some(base) = src {
            let inp = &cols[row * ncols + oy * ow..row * ncols + (oy + 1) * ow];
            for (ox, &v) in inp.iter().enumerate() {
                if let Some(x) = geom.input_x(ox, j) {
                    image[base + x] += v;
                }
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geom(
        c: usize,
        h: usize,
        w: usize,
        k: usize,
        s: usize,
        p: usize,
        d: usize,
    ) -> Conv2dGeometry {
        Conv2dGeometry {
            channels: c,
            height: h,
            width: w,
            kernel: (k, k),
            stride: (s, s),
            padding: (p, p),
            dilation: (d, d),
        }
    }

    /// Direct convolution by definition, for one output channel of all-ones... no:
    /// each kernel tap read straight from the definition of cross-correlation.
    fn naive_tap(
        g: &Conv2dGeometry,
        image: &[f64],
        c: usize,
        i: usize,
        j: usize,
        oy: usize,
        ox: usize,
    ) -> f64 {
        let y = (oy * g.stride.0 + i * g.dilation.0) as isize - g.padding.0 as isize;
        let x = (ox * g.stride.1 + j * g.dilation.1) as isize - g.padding.1 as isize;
        if y < 0 || x < 0 || y >= g.height as isize || x >= g.width as isize {
            0.0
        } else {
            image[(c * g.height + y as usize) * g.width + x as usize]
        }
    }

    #[test]
    fn im2col_matches_definition_with_stride_padding_dilation() {
        for g in [
            geom(2, 5, 6, 3, 1, 1, 1),
            geom(3, 7, 7, 3, 2, 2, 2),
            geom(1, 4, 4, 1, 1, 0, 1),
        ] {
            let image: Vec<f64> = (0..g.image_len()).map(|v| v as f64 + 1.0).collect();
            let mut cols = vec![f64::NAN; g.col_rows() * g.col_cols()];
            im2col(&g, &image, &mut cols).unwrap();
            let (oh, ow) = g.output_size();
            for c in 0..g.channels {
                for i in 0..g.kernel.0 {
                    for j in 0..g.kernel.1 {
                        let row = (c * g.kernel.0 + i) * g.kernel.1 + j;
                        for oy in 0..oh {
                            for ox in 0..ow {
                                let got = cols[row * g.col_cols() + oy * ow + ox];
                                assert_eq!(got, naive_tap(&g, &image, c, i, j, oy, ox));
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn col2im_is_the_adjoint_of_im2col() {
        // <im2col(x), y> == <x, col2im(y)> for any x, y.
        let g = geom(2, 6, 5, 3, 2, 1, 2);
        let x: Vec<f64> = (0..g.image_len())
            .map(|v| ((v * 7) % 11) as f64 - 5.0)
            .collect();
        let y: Vec<f64> = (0..g.col_rows() * g.col_cols())
            .map(|v| ((v * 3) % 13) as f64 - 6.0)
            .collect();
        let mut cx = vec![0.0; y.len()];
        im2col(&g, &x, &mut cx).unwrap();
        let mut ty = vec![0.0; x.len()];
        col2im(&g, &y, &mut ty).unwrap();
        let lhs: f64 = cx.iter().zip(&y).map(|(a, b)| a * b).sum();
        let rhs: f64 = x.iter().zip(&ty).map(|(a, b)| a * b).sum();
        assert_eq!(lhs, rhs);
    }

    #[test]
    fn im2col_rejects_bad_geometry_and_lengths() {
        let g = geom(1, 2, 2, 5, 1, 0, 1);
        assert!(matches!(
            im2col(&g, &[0.0f32; 4], &mut []),
            Err(KernelError::Geometry { .. })
        ));
        let g = geom(1, 3, 3, 2, 1, 0, 1);
        assert!(matches!(
            im2col(&g, &[0.0f32; 8], &mut [0.0; 16]),
            Err(KernelError::Length { .. })
        ));
    }
}

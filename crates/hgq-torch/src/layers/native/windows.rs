//! The windows of convolutions and poolings as offsets into one channels-last sample: the
//! native step's im2col (a gather of every window's values into rows) and its adjoint.
use crate::layers::conv::positions;
use crate::{Result, TorchError};

/// The offset of a tap that reads padding (no value of the sample).
pub(super) const PAD: u32 = u32::MAX;

/// A window's geometry over a channels-last sample `[*spatial, channels]`.
pub(super) struct Geometry<'a> {
    pub spatial: &'a [usize],
    pub channels: usize,
    /// The output's positions per spatial axis.
    pub out: &'a [usize],
    pub window: &'a [usize],
    pub strides: &'a [usize],
    /// `None`: 1 on every axis.
    pub dilation: Option<&'a [usize]>,
    /// `(before, after)` per spatial axis.
    pub pads: &'a [(usize, usize)],
}

/// For every output position and every position of its window (row-major: the output's
/// positions, then the window's), the offset of the tap's first channel in one sample, or
/// [`PAD`] where the tap reads the padding.
pub(super) fn offsets(g: &Geometry<'_>) -> Result<Vec<u32>> {
    let rank = g.spatial.len();
    let sample: usize = g.spatial.iter().product::<usize>() * g.channels;
    let axes = [g.out.len(), g.window.len(), g.strides.len(), g.pads.len()];
    if axes.iter().any(|&n| n != rank)
        || g.dilation.is_some_and(|d| d.len() != rank)
        || sample >= PAD as usize
    {
        return Err(TorchError::Unsupported(format!(
            "the native step's windows: a sample of {:?} x {} channels, windows {:?}",
            g.spatial, g.channels, g.window
        )));
    }
    // Row-major strides of a sample, in values.
    let mut stride = vec![g.channels; rank];
    for d in (0..rank.saturating_sub(1)).rev() {
        stride[d] = stride[d + 1] * g.spatial[d + 1];
    }
    let taps: usize = g.window.iter().product();
    let mut index = Vec::with_capacity(g.out.iter().product::<usize>() * taps);
    for o in positions(g.out) {
        for t in positions(g.window) {
            let mut off = 0usize;
            let mut inside = true;
            for d in 0..rank {
                let dil = g.dilation.map_or(1, |v| v[d]);
                // The position in the padded input, then in the input itself.
                let at = (o[d] * g.strides[d] + t[d] * dil).checked_sub(g.pads[d].0);
                match at {
                    Some(at) if at < g.spatial[d] => off += at * stride[d],
                    _ => inside = false,
                }
            }
            index.push(if inside { off as u32 } else { PAD });
        }
    }
    Ok(index)
}

/// The values under every window of every sample of `x` (`batch` samples of `sample`
/// values) as rows of `offsets.len() / positions` taps times `channels`: row `b * positions
/// + p` holds sample `b`'s window `p`, zeros where it reads padding (im2col).
pub(super) fn gather(x: &[f32], offsets: &[u32], channels: usize, sample: usize) -> Vec<f32> {
    let batch = x.len() / sample.max(1);
    let mut cols = hgq_core::scratch::elements::<f32>(batch * offsets.len() * channels);
    for (xs, out) in x
        .chunks_exact(sample)
        .zip(cols.chunks_exact_mut(offsets.len() * channels))
    {
        if channels == 1 {
            // One value per tap: read, not copied (a copy of one value is a call).
            for (&off, o) in offsets.iter().zip(out.iter_mut()) {
                *o = if off == PAD { 0.0 } else { xs[off as usize] };
            }
            continue;
        }
        for (&off, o) in offsets.iter().zip(out.chunks_exact_mut(channels)) {
            if off == PAD {
                o.fill(0.0);
            } else {
                let off = off as usize;
                o.copy_from_slice(&xs[off..off + channels]);
            }
        }
    }
    cols
}

/// The adjoint of [`gather`]: `d` (its rows) added back to the values they were read from, in
/// row order (padding's share dropped); `batch` samples of `sample` values.
pub(super) fn scatter(d: &[f32], offsets: &[u32], channels: usize, sample: usize) -> Vec<f32> {
    let row = offsets.len() * channels;
    let batch = d.len() / row.max(1);
    let mut dx = hgq_core::scratch::elements::<f32>(batch * sample);
    dx.fill(0.0);
    for (ds, out) in d.chunks_exact(row).zip(dx.chunks_exact_mut(sample)) {
        if channels == 1 {
            // One value per tap: added, not a loop of one.
            for (&off, &g) in offsets.iter().zip(ds) {
                if off != PAD {
                    out[off as usize] += g;
                }
            }
            continue;
        }
        for (&off, g) in offsets.iter().zip(ds.chunks_exact(channels)) {
            if off != PAD {
                let off = off as usize;
                for (o, &g) in out[off..off + channels].iter_mut().zip(g) {
                    *o += g;
                }
            }
        }
    }
    dx
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The offsets of a padded, strided, dilated window against the positions counted by
    /// hand, and the gather and scatter as the plain sums they are.
    #[test]
    fn windows_read_the_values_under_them() -> Result<()> {
        // A 1-D input of 5 positions x 2 channels, windows of 2 taps dilated by 2, stride 2,
        // one value of padding before: output positions 0, 1, 2 read padded positions
        // (0, 2), (2, 4), (4, 6), input positions (-1, 1), (1, 3), (3, 5).
        let g = Geometry {
            spatial: &[5],
            channels: 2,
            out: &[3],
            window: &[2],
            strides: &[2],
            dilation: Some(&[2]),
            pads: &[(1, 1)],
        };
        let off = offsets(&g)?;
        assert_eq!(off, [PAD, 2, 2, 6, 6, PAD]);
        let x: Vec<f32> = (0..20).map(|v| v as f32).collect();
        let cols = gather(&x, &off, 2, 10);
        // Sample 0, then sample 1 (values 10..20).
        let want = [
            0., 0., 2., 3., 2., 3., 6., 7., 6., 7., 0., 0., //
            0., 0., 12., 13., 12., 13., 16., 17., 16., 17., 0., 0.,
        ];
        assert_eq!(cols, want);
        let d: Vec<f32> = (0..24).map(|v| v as f32).collect();
        let dx = scatter(&d, &off, 2, 10);
        let mut want = vec![0.0f32; 20];
        for (r, row) in d.chunks_exact(12).enumerate() {
            for (t, &o) in off.iter().enumerate() {
                if o != PAD {
                    for c in 0..2 {
                        want[r * 10 + o as usize + c] += row[t * 2 + c];
                    }
                }
            }
        }
        assert_eq!(dx, want);
        // A 2-D window, row-major: 3x3 input, 2x2 windows, stride 1, no padding.
        let g = Geometry {
            spatial: &[3, 3],
            channels: 1,
            out: &[2, 2],
            window: &[2, 2],
            strides: &[1, 1],
            dilation: None,
            pads: &[(0, 0), (0, 0)],
        };
        assert_eq!(
            offsets(&g)?,
            [0, 1, 3, 4, 1, 2, 4, 5, 3, 4, 6, 7, 4, 5, 7, 8]
        );
        // One channel (read and added per value): the same plain sums, two samples.
        let off = offsets(&g)?;
        let x: Vec<f32> = (0..18).map(|v| v as f32 * 0.5).collect();
        let cols = gather(&x, &off, 1, 9);
        let want: Vec<f32> = (0..2)
            .flat_map(|b| off.iter().map(move |&o| (b * 9 + o as usize) as f32 * 0.5))
            .collect();
        assert_eq!(cols, want);
        let dx = scatter(&cols, &off, 1, 9);
        let mut want = vec![0.0f32; 18];
        for (j, &v) in cols.iter().enumerate() {
            want[(j / off.len()) * 9 + off[j % off.len()] as usize] += v;
        }
        assert_eq!(dx, want);
        // Axes that disagree: an error, not a panic.
        let bad = Geometry { out: &[2], ..g };
        assert!(offsets(&bad).is_err());
        Ok(())
    }
}

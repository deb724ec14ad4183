//! What the kernels' tests share.

/// Every element of `got` within `tol * (1 + |want|)` of `want`'s, naming the first that is not.
pub fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let bound = tol * (1.0 + w.abs());
        assert!(
            (g - w).abs() <= bound,
            "{what}[{i}]: {g} vs {w} (bound {bound})"
        );
    }
}

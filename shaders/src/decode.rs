//! Host kernels for decoding on the CPU: the operations of a transformer layer other than its
//! matrix products, over plain row-major `f32` slices, so a decoding step runs one pass per
//! operation with no tensor allocations or dispatches between them. Each has a reference in
//! Burn's operations that the decoders' tests hold it to (the model's own forward pass).
//!
//! C=hidden, T=rows, H=query heads, K=key/value heads, D=head size, S=cached positions

/// RMSNorm of each row of `x` (`[T, C]`) into `out`: `x / sqrt(mean(x²) + eps) * gamma`.
pub fn rms_norm(x: &[f32], gamma: &[f32], eps: f32, out: &mut [f32]) {
    let c = gamma.len();
    for (row, out) in x.chunks_exact(c).zip(out.chunks_exact_mut(c)) {
        let mean_square = row.iter().map(|v| v * v).sum::<f32>() / c as f32;
        let rms = (mean_square + eps).sqrt();
        for ((o, &v), &g) in out.iter_mut().zip(row).zip(gamma) {
            *o = v / rms * g;
        }
    }
}

/// Rotary position embeddings in Hugging Face's layout (the two halves of each head rotated
/// together: `[a, b] -> [a cos - b sin, b cos + a sin]`), in place, for `x` = `[T, heads * D]`
/// whose row `t` is at position `start + t`; `inv_freq` holds `D / 2` frequencies. The angles
/// are `position * frequency` in f32, as the tensor path computes them.
pub fn rotate(x: &mut [f32], heads: usize, inv_freq: &[f32], start: usize) {
    let half = inv_freq.len();
    let d = 2 * half;
    let mut cos = vec![0f32; half];
    let mut sin = vec![0f32; half];
    for (t, row) in x.chunks_exact_mut(heads * d).enumerate() {
        let p = (start + t) as f32;
        for ((c, s), &f) in cos.iter_mut().zip(sin.iter_mut()).zip(inv_freq) {
            let angle = p * f;
            (*c, *s) = (angle.cos(), angle.sin());
        }
        for head in row.chunks_exact_mut(d) {
            let (a, b) = head.split_at_mut(half);
            for i in 0..half {
                let (x0, x1) = (a[i], b[i]);
                a[i] = x0 * cos[i] - x1 * sin[i];
                b[i] = x1 * cos[i] + x0 * sin[i];
            }
        }
    }
}

/// Causal grouped-query attention of `T` new rows over a cache of `S` positions whose last `T`
/// are the new rows' own: `q` = `[T, H * D]`, `keys` and `values` = `[S, K * D]`, `out` =
/// `[T, H * D]`. Row `t` sees positions `0..=S - T + t`; query head `h` reads key/value head
/// `h / (H / K)`. Scores are scaled by `1 / sqrt(D)` and softmaxed in f32.
pub fn attend(q: &[f32], keys: &[f32], values: &[f32], shape: AttentionShape, out: &mut [f32]) {
    let AttentionShape { heads, kv_heads, d } = shape;
    let row_kv = kv_heads * d;
    let s = keys.len() / row_kv;
    let t = q.len() / (heads * d);
    let group = heads / kv_heads;
    let arch = pulp::Arch::new();
    // One task per (row, key/value head): the query heads that share it are `out`'s next
    // `group * D` columns, and read each cached key and value once between them.
    let one = |(at, out): (usize, &mut [f32])| {
        let (i, g) = (at / kv_heads, at % kv_heads);
        let width = group * d;
        arch.dispatch(GroupAttention {
            q: &q[at * width..(at + 1) * width],
            keys,
            values,
            d,
            kv: g * d,
            row_kv,
            seen: s - t + i + 1,
            out,
        });
    };
    crate::team::for_each(out.chunks_mut(group * d).enumerate().collect(), one);
}

/// The query heads of one row that share a key/value head (`q` and `out` hold them side by
/// side, D each), over the first `seen` cached positions, whose key/value head starts at column
/// `kv` of rows of `row_kv`; compiled for the CPU's widest vector unit.
struct GroupAttention<'a> {
    q: &'a [f32],
    keys: &'a [f32],
    values: &'a [f32],
    d: usize,
    kv: usize,
    row_kv: usize,
    seen: usize,
    out: &'a mut [f32],
}

impl pulp::WithSimd for GroupAttention<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) {
        let Self {
            q,
            keys,
            values,
            d,
            kv,
            row_kv,
            seen,
            out,
        } = self;
        let heads = q.len() / d;
        let scale = 1.0 / (d as f32).sqrt();
        // Scores `[heads, seen]`.
        let mut scores = vec![0f32; heads * seen];
        for j in 0..seen {
            let key = &keys[j * row_kv + kv..][..d];
            for (h, qh) in q.chunks_exact(d).enumerate() {
                scores[h * seen + j] = dot(qh, key) * scale;
            }
        }
        let mut inv = vec![0f32; heads];
        for (row, inv) in scores.chunks_exact_mut(seen).zip(&mut inv) {
            let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            *inv = 1.0 / crate::cross_entropy::exp_shifted(simd, row, max);
        }
        out.fill(0.0);
        for j in 0..seen {
            let value = &values[j * row_kv + kv..][..d];
            for (h, oh) in out.chunks_exact_mut(d).enumerate() {
                let w = scores[h * seen + j];
                for (o, &x) in oh.iter_mut().zip(value) {
                    *o += w * x;
                }
            }
        }
        for (oh, &inv) in out.chunks_exact_mut(d).zip(&inv) {
            for o in oh.iter_mut() {
                *o *= inv;
            }
        }
    }
}

/// Heads of an attention layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    /// Query heads (H).
    pub heads: usize,
    /// Key/value heads (K), dividing H.
    pub kv_heads: usize,
    /// Head size (D).
    pub d: usize,
}

/// SwiGLU's gate: `gate = silu(gate) * up`, in place, `silu(x) = x / (1 + exp(-x))`, with
/// the training kernel's lane function (the vectorised `exp`).
///
/// # Panics
/// If `gate` and `up` differ in length.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    assert_eq!(
        gate.len(),
        up.len(),
        "silu_mul: gate and up differ in length"
    );
    pulp::Arch::new().dispatch(SiluMul { gate, up });
}

/// [`silu_mul`]'s loop, compiled for the CPU's widest vector unit.
struct SiluMul<'a> {
    gate: &'a mut [f32],
    up: &'a [f32],
}

impl pulp::WithSimd for SiluMul<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, s: S) {
        use crate::activation::{swiglu_f32, swiglu_simd};
        let (gate, gate_tail) = S::as_mut_simd_f32s(self.gate);
        let (up, up_tail) = S::as_simd_f32s(self.up);
        for (g, &u) in gate.iter_mut().zip(up) {
            *g = swiglu_simd(s, *g, u);
        }
        for (g, &u) in gate_tail.iter_mut().zip(up_tail) {
            *g = swiglu_f32(*g, u);
        }
    }
}

/// `x += y`, element by element.
pub fn add_assign(x: &mut [f32], y: &[f32]) {
    for (a, &b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums, which the compiler keeps in one vector register.
    let mut acc = [0f32; 8];
    let (ac, ar) = a.split_at(a.len() / 8 * 8);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(8).zip(bc.chunks_exact(8)) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ar.iter().zip(br).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_of_one_position_returns_its_value() {
        // One cached position: the softmax is 1 whatever the scores.
        let shape = AttentionShape {
            heads: 4,
            kv_heads: 2,
            d: 3,
        };
        let q: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let keys: Vec<f32> = (0..6).map(|i| -(i as f32)).collect();
        let values: Vec<f32> = (0..6).map(|i| i as f32 * 0.5).collect();
        let mut out = vec![0f32; 12];
        attend(&q, &keys, &values, shape, &mut out);
        // Heads 0 and 1 read key/value head 0, heads 2 and 3 head 1.
        let expected = [0.0, 0.5, 1.0, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 1.5, 2.0, 2.5];
        assert_eq!(out, expected);
    }

    #[test]
    fn silu_mul_follows_the_library_exp() {
        // 37 values: whole vectors and a tail on every width; inputs from -99 (where the
        // library's exp(-x) overflows to infinity and ours stops at e^88, both giving ~0) to
        // 99.
        let gate0: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) * 5.5).collect();
        let up: Vec<f32> = (0..37).map(|i| 1.0 + (i as f32 * 0.3).sin()).collect();
        let mut gate = gate0.clone();
        silu_mul(&mut gate, &up);
        for ((&got, &g), &u) in gate.iter().zip(&gate0).zip(&up) {
            let want = g / (1.0 + (-g).exp()) * u;
            assert!(
                (got - want).abs() <= 8.0 * f32::EPSILON * want.abs() + 1e-30,
                "silu({g}) * {u}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn rotation_keeps_each_pair_s_length_and_position_zero_is_the_identity() {
        let inv_freq = [1.0, 0.1];
        let x0: Vec<f32> = vec![1.0, 2.0, 3.0, 4.0, -1.0, 0.5, 0.25, 2.0];
        let mut x = x0.clone();
        rotate(&mut x, 2, &inv_freq, 0);
        assert_eq!(x, x0);
        rotate(&mut x, 2, &inv_freq, 3);
        for h in 0..2 {
            for i in 0..2 {
                let at = |v: &[f32], j: usize| v[h * 4 + j];
                let before = at(&x0, i).hypot(at(&x0, i + 2));
                let after = at(&x, i).hypot(at(&x, i + 2));
                assert!((before - after).abs() <= 4.0 * f32::EPSILON * before);
            }
        }
        // Position 3, frequency 1: the first pair of head 0 turns by 3 radians.
        let (c, s) = (3f32.cos(), 3f32.sin());
        assert!((x[0] - (c - 3.0 * s)).abs() < 1e-6 && (x[2] - (3.0 * c + s)).abs() < 1e-6);
    }
}

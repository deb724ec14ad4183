//! Gradient utilities: parameter paths, the global norm and clipping, and the combinations of
//! gradient sets that Heun's method needs.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

use crate::{Result, readback};

/// The dotted paths of a model's float parameters (`h.0.attn.c_attn.weight`, ...).
pub fn param_paths<M: Module>(model: &M) -> Vec<String> {
    param_shapes(model).into_iter().map(|(p, _)| p).collect()
}

/// The dotted paths and shapes of a model's float parameters.
pub fn param_shapes<M: Module>(model: &M) -> Vec<(String, Vec<usize>)> {
    struct Paths {
        path: Vec<String>,
        out: Vec<(String, Vec<usize>)>,
    }
    impl ModuleVisitor for Paths {
        fn enter_module(&mut self, name: &str, _container: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            self.out
                .push((self.path.join("."), param.shape().dims::<D>().to_vec()));
        }
    }
    let mut v = Paths {
        path: Vec::new(),
        out: Vec::new(),
    };
    model.visit(&mut v);
    v.out
}

/// The average `(a + b) / 2` of two gradient sets of the same model.
pub fn average_grads<M: Module>(
    model: &M,
    a: GradientsParams,
    b: GradientsParams,
) -> GradientsParams {
    struct Avg {
        a: GradientsParams,
        b: GradientsParams,
        out: GradientsParams,
    }
    impl ModuleVisitor for Avg {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            match (self.a.remove::<D>(param.id), self.b.remove::<D>(param.id)) {
                (Some(x), Some(y)) => self.out.register(param.id, (x + y).mul_scalar(0.5)),
                (Some(x), None) | (None, Some(x)) => self.out.register(param.id, x),
                (None, None) => {}
            }
        }
    }
    let mut v = Avg {
        a,
        b,
        out: GradientsParams::new(),
    };
    model.visit(&mut v);
    v.out
}

/// A second handle on each gradient (tensors are shared, not copied).
pub fn clone_grads<M: Module>(model: &M, grads: &GradientsParams) -> GradientsParams {
    struct Copy<'a> {
        from: &'a GradientsParams,
        out: GradientsParams,
    }
    impl ModuleVisitor for Copy<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if let Some(g) = self.from.get::<D>(param.id) {
                self.out.register(param.id, g);
            }
        }
    }
    let mut v = Copy {
        from: grads,
        out: GradientsParams::new(),
    };
    model.visit(&mut v);
    v.out
}

struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    total: Option<Tensor<1>>,
}

impl ModuleVisitor for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let s = g.square().sum();
            self.total = Some(match self.total.take() {
                Some(t) => t + s,
                None => s,
            });
        }
    }
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl ModuleVisitor for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            self.grads.register(param.id, g.mul_scalar(self.factor));
        }
    }
}

/// The L2 norm of all gradients taken together.
pub fn global_norm<M: Module>(model: &M, grads: &GradientsParams) -> Result<f64> {
    readback::resolve("the gradient norm", global_norm_async(model, grads))
}

/// [`global_norm`], awaiting the readback.
pub async fn global_norm_async<M: Module>(model: &M, grads: &GradientsParams) -> Result<f64> {
    let mut visitor = SquaredNorm { grads, total: None };
    model.visit(&mut visitor);
    let Some(total) = visitor.total else {
        return Ok(0.0);
    };
    Ok(readback::scalar_async(total, "the gradient norm")
        .await?
        .sqrt())
}

/// Multiplies every gradient by `factor`.
pub fn scale_grads<M: Module>(model: &M, grads: &mut GradientsParams, factor: f64) {
    model.visit(&mut Scale { grads, factor });
}

/// Rescales all gradients together so their global norm is at most `max_norm` (no-op when
/// `max_norm` is 0). Returns the norm before clipping.
pub fn clip_global_norm<M: Module>(
    model: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> Result<f64> {
    readback::resolve(
        "the gradient norm",
        clip_global_norm_async(model, grads, max_norm),
    )
}

/// [`clip_global_norm`], awaiting the readback.
pub async fn clip_global_norm_async<M: Module>(
    model: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> Result<f64> {
    let norm = global_norm_async(model, grads).await?;
    if max_norm > 0.0 && norm > max_norm {
        scale_grads(model, grads, max_norm / (norm + 1e-6));
    }
    Ok(norm)
}

//! Low-rank adapters run beside a weight matrix: y = x·W₀ᵀ + s·(x·Aᵀ)·Bᵀ, with W₀ (out × in)
//! left as it is, A (r × in) and B (out × r). The forward never forms W₀ + s·B·A, and the
//! backward gives the adapters' gradients from the matrix's input and output gradient without
//! the dense out × in gradient: dL/dB = s·dYᵀ·(X·Aᵀ), dL/dA = s·(dY·B)ᵀ·X. A LoRA fine-tuning
//! of every matrix of a 1.5 B model so holds one copy of the weights, not two, and no
//! gradient the size of the model.

use anyhow::{bail, Result};
use candle_core::Tensor;

use crate::model::ops;

/// One matrix's adapter pair and its scale s (LoRA's α/r).
#[derive(Clone, Debug)]
pub struct Adapter {
    /// r × in (with any dropout mask already applied to its columns).
    pub a: Tensor,
    /// out × r.
    pub b: Tensor,
    pub scale: f64,
}

/// The gradient names of the adapter pair on matrix `name`.
pub fn grad_names(name: &str) -> (String, String) {
    (format!("{name}.lora_A"), format!("{name}.lora_B"))
}

impl Adapter {
    /// Check the pair against the matrix it sits beside (`dims`: out × in).
    pub fn check(&self, name: &str, dims: &[usize]) -> Result<()> {
        let (a, b) = (self.a.dims(), self.b.dims());
        let ok = dims.len() == 2
            && a.len() == 2
            && b.len() == 2
            && a[0] == b[1]
            && a[1] == dims[1]
            && b[0] == dims[0];
        if !ok {
            bail!("adapter on `{name}` ({dims:?}): A is {a:?} and B is {b:?}, expected r × {} and {} × r", dims.get(1).unwrap_or(&0), dims.first().unwrap_or(&0));
        }
        if !self.scale.is_finite() {
            bail!("adapter on `{name}`: scale {} is not a number", self.scale);
        }
        Ok(())
    }

    fn in_dtype(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((self.a.to_dtype(x.dtype())?, self.b.to_dtype(x.dtype())?))
    }

    /// s·(x·Aᵀ)·Bᵀ: what the adapter adds to the matrix's output.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (a, b) = self.in_dtype(x)?;
        Ok(ops::linear(&ops::linear(x, &a)?, &b)?.affine(self.scale, 0.0)?)
    }

    /// s·(dY·B)·A: what the adapter adds to the input's gradient.
    pub fn input_grad(&self, dy: &Tensor) -> Result<Tensor> {
        let (a, b) = self.in_dtype(dy)?;
        let u = ops::linear(dy, &b.t()?.contiguous()?)?;
        Ok(ops::linear(&u, &a.t()?.contiguous()?)?.affine(self.scale, 0.0)?)
    }

    /// (dL/dA, dL/dB) from the matrix's input `x` and output gradient `dy`.
    pub fn grads(&self, x: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
        let (a, b) = self.in_dtype(x)?;
        let xa = ops::linear(x, &a)?;
        let gb = ops::linear_dw(&xa, dy)?.affine(self.scale, 0.0)?;
        let dyb = ops::linear(dy, &b.t()?.contiguous()?)?;
        let ga = ops::linear_dw(x, &dyb)?.affine(self.scale, 0.0)?;
        Ok((ga, gb))
    }
}

//! The hooked, trainable transformer: one forward that runs any layer range of Gemma 3 or a
//! Llama-family model on a padded batch, applies hooks (cache / patch / gradient), computes
//! logits only where asked, and keeps what its hand-written backward needs — only for the
//! layers at and above the lowest one that needs a gradient.

use crate::model::adapter::{self, Adapter};
use crate::model::batch::Batch;
use crate::model::config::{Activation, ModelConfig};
use crate::model::hooks::{selection_mask, ActivationCache, HookPoint, Hooks, PatchMode};
use crate::model::ops;
use crate::model::weights::Weights;
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeMap, BTreeSet};

/// Where logits are computed.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum LogitsAt {
    /// No logits (e.g. a representation loss or a run stopped early).
    None,
    /// Every position: `[B, T, V]`.
    All,
    /// Each row's last real token: `[B, V]`.
    #[default]
    Last,
    /// Chosen (row, position) pairs: `[N, V]`.
    Rows(Vec<(usize, usize)>),
}

/// Options of one run.
#[derive(Clone, Debug, Default)]
pub struct RunOpts<'a> {
    pub hooks: Option<&'a Hooks>,
    /// Start from this residual stream (`resid_pre` of the given block) instead of the
    /// embeddings.
    pub start: Option<(usize, Tensor)>,
    /// Run blocks below this index only; the run's `resid` is then `resid_pre` of it.
    pub stop_at: Option<usize>,
    pub logits: LogitsAt,
    /// Keep what the backward needs.
    pub grad: bool,
    /// The backward also returns d(metric)/d(starting residual).
    pub grad_start: bool,
    /// Whether the backward's blocks are checkpointed.
    pub checkpoint: Checkpoint,
}

/// Activation checkpointing: keep only each block's input and recompute the block's
/// activations during the backward, one block at a time instead of all of them at once, for
/// one more forward of those blocks. The gradients are the same, bit for bit. Runs with hooks
/// are never checkpointed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Checkpoint {
    /// Keep every block's activations.
    #[default]
    Off,
    /// Keep only the blocks' inputs.
    On,
    /// On when the blocks' activations would take more than [`CHECKPOINT_AUTO_BYTES`].
    Auto,
}

/// Activations of the blocks a backward needs above which [`Checkpoint::Auto`] checkpoints.
pub const CHECKPOINT_AUTO_BYTES: usize = 1 << 30;

/// Result of a run.
pub struct RunOutput {
    pub logits: Option<Tensor>,
    /// Residual stream after the last block run (before the final norm).
    pub resid: Tensor,
    pub cache: ActivationCache,
    tape: Option<Tape>,
}

/// Gradients from [`Transformer::backward`].
#[derive(Default)]
pub struct Grads {
    /// d(metric)/d(parameter) for every trainable parameter reached.
    pub params: BTreeMap<String, Tensor>,
    /// d(metric)/d(activation) at the requested hook points.
    pub hooks: BTreeMap<HookPoint, Tensor>,
    /// d(metric)/d(starting residual) when `grad_start` was set.
    pub start: Option<Tensor>,
}

/// Keys and values of earlier positions, for generation.
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    /// Per row: (is real, position) of every cached key slot.
    keys: Vec<Vec<(bool, u32)>>,
}

impl KvCache {
    pub fn new(n_layers: usize) -> Self {
        KvCache {
            layers: vec![None; n_layers],
            keys: Vec::new(),
        }
    }

    /// Number of cached slots.
    pub fn len(&self) -> usize {
        self.keys.first().map_or(0, |r| r.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A cache made of given per-layer keys/values `[B, KV, S, hd]` (None for layers that will
    /// not be run) and, per row, which of the S slots are real and their positions.
    pub fn from_parts(layers: Vec<Option<(Tensor, Tensor)>>, keys: Vec<Vec<(bool, u32)>>) -> Self {
        KvCache { layers, keys }
    }

    /// Keys and values of one layer.
    pub fn layer(&self, l: usize) -> Option<&(Tensor, Tensor)> {
        self.layers.get(l).and_then(|x| x.as_ref())
    }

    /// This one-row cache (a shared prompt prefix) repeated for `rows` rows.
    pub fn repeated(&self, rows: usize) -> Result<KvCache> {
        if self.keys.len() != 1 {
            bail!(
                "only a one-row cache can be repeated; this one holds {} rows",
                self.keys.len()
            );
        }
        let layers = self
            .layers
            .iter()
            .map(|l| match l {
                Some((k, v)) => Ok(Some((
                    k.repeat((rows, 1, 1, 1))?,
                    v.repeat((rows, 1, 1, 1))?,
                ))),
                None => Ok(None),
            })
            .collect::<Result<_>>()?;
        Ok(KvCache {
            layers,
            keys: vec![self.keys[0].clone(); rows],
        })
    }

    /// Position the next token of each row gets.
    pub fn next_positions(&self) -> Vec<u32> {
        self.keys
            .iter()
            .map(|r| r.iter().filter(|k| k.0).map(|k| k.1 + 1).max().unwrap_or(0))
            .collect()
    }
}

#[derive(Clone)]
struct LayerNames {
    q: String,
    k: String,
    v: String,
    o: String,
    qb: String,
    kb: String,
    vb: String,
    gate: String,
    up: String,
    down: String,
    ln_in: String,
    ln_post_attn: String,
    ln_pre_ff: String,
    ln_post_ff: String,
    q_norm: String,
    k_norm: String,
}

impl LayerNames {
    fn new(l: usize) -> Self {
        let p = format!("model.layers.{l}");
        LayerNames {
            q: format!("{p}.self_attn.q_proj.weight"),
            k: format!("{p}.self_attn.k_proj.weight"),
            v: format!("{p}.self_attn.v_proj.weight"),
            o: format!("{p}.self_attn.o_proj.weight"),
            qb: format!("{p}.self_attn.q_proj.bias"),
            kb: format!("{p}.self_attn.k_proj.bias"),
            vb: format!("{p}.self_attn.v_proj.bias"),
            gate: format!("{p}.mlp.gate_proj.weight"),
            up: format!("{p}.mlp.up_proj.weight"),
            down: format!("{p}.mlp.down_proj.weight"),
            ln_in: format!("{p}.input_layernorm.weight"),
            ln_post_attn: format!("{p}.post_attention_layernorm.weight"),
            ln_pre_ff: format!("{p}.pre_feedforward_layernorm.weight"),
            ln_post_ff: format!("{p}.post_feedforward_layernorm.weight"),
            q_norm: format!("{p}.self_attn.q_norm.weight"),
            k_norm: format!("{p}.self_attn.k_norm.weight"),
        }
    }

    fn attn_params(&self) -> [&String; 9] {
        [
            &self.q,
            &self.k,
            &self.v,
            &self.o,
            &self.qb,
            &self.kb,
            &self.vb,
            &self.q_norm,
            &self.k_norm,
        ]
    }
}

/// Per-layer tensors kept for the backward.
struct LayerTape {
    x: Tensor,
    h1: Tensor,
    r1: Tensor,
    q_lin: Tensor,
    k_lin: Tensor,
    rq: Option<Tensor>,
    rk: Option<Tensor>,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    p: Tensor,
    z_flat: Tensor,
    o: Tensor,
    r_pa: Option<Tensor>,
    mid: Tensor,
    h2: Tensor,
    r2: Tensor,
    gate: Tensor,
    up: Tensor,
    act: Tensor,
    post: Tensor,
    m: Tensor,
    r_pf: Option<Tensor>,
    cos: Tensor,
    sin: Tensor,
}

/// What the forward kept of one block for the backward.
enum Recorded {
    Activations(LayerTape),
    /// Checkpointed: the block's input only.
    Input(Tensor),
}

struct HeadTape {
    rows: Option<Tensor>,
    xr: Tensor,
    hn: Tensor,
    rstd: Tensor,
    capped: Option<Tensor>,
}

struct Tape {
    start_layer: usize,
    lowest: usize,
    end_layer: usize,
    layers: BTreeMap<usize, Recorded>,
    /// Attention masks (all layers, sliding-window layers) and RoPE table rows, for
    /// recomputing checkpointed blocks.
    masks: (Tensor, Option<Tensor>),
    pos: Tensor,
    /// Gradient masks (1 = passes) of entries replaced by patches.
    keep: BTreeMap<HookPoint, Vec<Tensor>>,
    grad_points: BTreeSet<HookPoint>,
    head: Option<HeadTape>,
    ids: Option<Tensor>,
    shape: (usize, usize),
    grad_start: bool,
}

impl LayerTape {
    /// The same activations in f32 (a half-precision forward's, for the f32 backward).
    fn widened(&self) -> Result<LayerTape> {
        let w = |t: &Tensor| t.to_dtype(DType::F32);
        let wo = |t: &Option<Tensor>| t.as_ref().map(w).transpose();
        Ok(LayerTape {
            x: w(&self.x)?,
            h1: w(&self.h1)?,
            r1: w(&self.r1)?,
            q_lin: w(&self.q_lin)?,
            k_lin: w(&self.k_lin)?,
            rq: wo(&self.rq)?,
            rk: wo(&self.rk)?,
            q: w(&self.q)?,
            k: w(&self.k)?,
            v: w(&self.v)?,
            p: w(&self.p)?,
            z_flat: w(&self.z_flat)?,
            o: w(&self.o)?,
            r_pa: wo(&self.r_pa)?,
            mid: w(&self.mid)?,
            h2: w(&self.h2)?,
            r2: w(&self.r2)?,
            gate: w(&self.gate)?,
            up: w(&self.up)?,
            act: w(&self.act)?,
            post: w(&self.post)?,
            m: w(&self.m)?,
            r_pf: wo(&self.r_pf)?,
            cos: w(&self.cos)?,
            sin: w(&self.sin)?,
        })
    }
}

impl Tape {
    /// The same tape in f32: what the f32 backward of a half-precision forward reads.
    fn widened(&self) -> Result<Tape> {
        let w = |t: &Tensor| t.to_dtype(DType::F32);
        let layers = self
            .layers
            .iter()
            .map(|(&l, r)| {
                Ok((
                    l,
                    match r {
                        Recorded::Activations(lt) => Recorded::Activations(lt.widened()?),
                        Recorded::Input(x) => Recorded::Input(w(x)?),
                    },
                ))
            })
            .collect::<Result<_>>()?;
        let head = match &self.head {
            Some(h) => Some(HeadTape {
                rows: h.rows.clone(),
                xr: w(&h.xr)?,
                hn: w(&h.hn)?,
                rstd: w(&h.rstd)?,
                capped: h.capped.as_ref().map(w).transpose()?,
            }),
            None => None,
        };
        let keep = self
            .keep
            .iter()
            .map(|(p, v)| Ok((*p, v.iter().map(w).collect::<candle_core::Result<_>>()?)))
            .collect::<Result<_>>()?;
        Ok(Tape {
            start_layer: self.start_layer,
            lowest: self.lowest,
            end_layer: self.end_layer,
            layers,
            masks: (w(&self.masks.0)?, self.masks.1.as_ref().map(w).transpose()?),
            pos: self.pos.clone(),
            keep,
            grad_points: self.grad_points.clone(),
            head,
            ids: self.ids.clone(),
            shape: self.shape,
            grad_start: self.grad_start,
        })
    }
}

/// The hooked transformer over a model's weights.
pub struct Transformer {
    pub config: ModelConfig,
    weights: Weights,
    trainable: BTreeSet<String>,
    /// Low-rank adapters run beside weight matrices (LoRA), by matrix name; their gradients
    /// come out of the backward as `NAME.lora_A` / `NAME.lora_B`.
    adapters: BTreeMap<String, Adapter>,
    names: Vec<LayerNames>,
    /// RoPE tables (cos, sin) by (RoPE base, scaled): `[n·max_pos, hd]`, the n tables of
    /// [`ModelConfig::rope_scalings`] one after the other.
    rope: Vec<((f64, bool), Tensor, Tensor)>,
    /// Rows of each of those n tables (max_pos).
    rope_rows: usize,
    device: Device,
    dtype: DType,
}

/// Largest context the RoPE tables are built for up front.
const ROPE_TABLE_LEN: usize = 8192;

impl Transformer {
    /// Build from a config and weights (checked against each other).
    pub fn new(config: ModelConfig, weights: Weights) -> Result<Self> {
        config.validate()?;
        weights.check_against(&config)?;
        // The final norm is held as numbers in f32 (f64 in the finite-difference tests) however
        // the matrices are held. Weights stored in bf16/f16 or as blocks are computed with in
        // f32 unless a half compute dtype is chosen (`set_compute_dtype`).
        let norm = weights.get("model.norm.weight")?;
        let dtype = if norm.dtype() == DType::F64 {
            DType::F64
        } else {
            DType::F32
        };
        let device = norm.device().clone();
        let max_pos = config.max_position_embeddings.clamp(1, ROPE_TABLE_LEN);
        let mut rope = Vec::new();
        for l in 0..config.num_layers {
            let (base, scaled) = config.rope_of(l);
            if !rope.iter().any(|(k, _, _)| *k == (base, scaled)) {
                let (mut cos, mut sin) = (Vec::new(), Vec::new());
                for scaling in config.rope_scalings(scaled) {
                    let (c, s) =
                        ops::rope_tables(max_pos, config.head_dim, base, &scaling, &device)?;
                    cos.push(c);
                    sin.push(s);
                }
                let (c, s) = (Tensor::cat(&cos, 0)?, Tensor::cat(&sin, 0)?);
                rope.push(((base, scaled), c.to_dtype(dtype)?, s.to_dtype(dtype)?));
            }
        }
        let names = (0..config.num_layers).map(LayerNames::new).collect();
        Ok(Transformer {
            config,
            weights,
            trainable: BTreeSet::new(),
            adapters: BTreeMap::new(),
            names,
            rope,
            rope_rows: max_pos,
            device,
            dtype,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Compute forward passes in `dtype`: f32, or bf16/f16 (activations and matrix products in
    /// half; norms, softmax and logits in f32; what a run returns in f32). Training is mixed
    /// precision: trainable weights stay f32, and the backward runs in f32 on the widened
    /// activations.
    pub fn set_compute_dtype(&mut self, dtype: DType) -> Result<()> {
        if dtype == self.dtype {
            return Ok(());
        }
        if self.dtype == DType::F64 || !matches!(dtype, DType::F32 | DType::BF16 | DType::F16) {
            bail!(
                "compute dtype {dtype:?}: expected f32, bf16 or f16 (and f32 weights, not {:?})",
                self.dtype
            );
        }
        for (_, c, s) in &mut self.rope {
            *c = c.to_dtype(dtype)?;
            *s = s.to_dtype(dtype)?;
        }
        self.dtype = dtype;
        Ok(())
    }

    /// The same model computing in f32 (the weights shared, not copied): where a half-precision
    /// model runs its backward.
    fn widened(&self) -> Result<Transformer> {
        let rope = self
            .rope
            .iter()
            .map(|(k, c, s)| Ok((*k, c.to_dtype(DType::F32)?, s.to_dtype(DType::F32)?)))
            .collect::<Result<_>>()?;
        Ok(Transformer {
            config: self.config.clone(),
            weights: self.weights.clone(),
            trainable: self.trainable.clone(),
            adapters: self.adapters.clone(),
            names: self.names.clone(),
            rope,
            rope_rows: self.rope_rows,
            device: self.device.clone(),
            dtype: DType::F32,
        })
    }

    /// Whether forward passes compute in bf16/f16.
    fn half(&self) -> bool {
        ops::is_half(self.dtype)
    }

    /// An activation handed in (a starting residual, a patch value) in the compute dtype.
    fn inward(&self, t: &Tensor) -> Result<Tensor> {
        Ok(if t.dtype() == self.dtype {
            t.clone()
        } else {
            t.to_dtype(self.dtype)?
        })
    }

    /// An activation handed out (the final residual, a cached activation): f32 when the model
    /// computes in half precision.
    fn outward(&self, t: Tensor) -> Result<Tensor> {
        if !self.half() {
            return Ok(t);
        }
        let t = t.to_dtype(DType::F32)?;
        // f16's range ends at 65,504; a residual stream that goes past it (Gemma's does)
        // turns into inf and NaN, which must not pass for numbers.
        if self.dtype == DType::F16 && !t.sum_all()?.to_scalar::<f32>()?.is_finite() {
            bail!(
                "computing in f16 overflowed (this model's activations go past f16's range of \
                 ±65,504); use --compute bf16, which has f32's range"
            );
        }
        Ok(t)
    }

    /// The dtype of attention masks: the compute dtype, or f32 where attention scores are
    /// computed in f32 (half precision).
    fn mask_dtype(&self) -> DType {
        if self.half() {
            DType::F32
        } else {
            self.dtype
        }
    }

    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    pub fn into_weights(self) -> Weights {
        self.weights
    }

    /// Replace one parameter (same shape), e.g. after an optimizer step.
    pub fn set_param(&mut self, name: &str, value: Tensor) -> Result<()> {
        let old = self.weights.dims(name)?;
        if old != value.dims() {
            bail!(
                "parameter `{name}`: new value has shape {:?}, expected {old:?}",
                value.dims()
            );
        }
        self.weights.insert(name, value);
        Ok(())
    }

    /// Choose the trainable parameters (HF names); all others are frozen and cost no gradient.
    pub fn set_trainable<S: AsRef<str>>(&mut self, names: &[S]) -> Result<()> {
        let mut set = BTreeSet::new();
        for n in names {
            let n = n.as_ref();
            if !self.weights.contains(n) {
                bail!("cannot train `{n}`: the model has no such parameter (names look like `model.layers.3.mlp.down_proj.weight`)");
            }
            set.insert(n.to_string());
        }
        // Trainable parameters (and so their gradients and optimizer state) are kept in f32
        // (f64 in the finite-difference tests) even when the frozen weights are stored, or the
        // forward computes, in bf16/f16.
        let master = if self.half() { DType::F32 } else { self.dtype };
        for n in &set {
            self.weights.hold_as(n, master)?;
        }
        self.trainable = set;
        Ok(())
    }

    pub fn trainable(&self) -> &BTreeSet<String> {
        &self.trainable
    }

    /// Run these adapters beside their matrices from now on (replacing any earlier ones);
    /// an empty map removes them. Each is checked against its matrix.
    pub fn set_adapters(&mut self, adapters: BTreeMap<String, Adapter>) -> Result<()> {
        for (name, a) in &adapters {
            if self.key_point(name).is_none() {
                bail!("cannot adapt `{name}`: not a weight matrix of a block");
            }
            a.check(name, &self.weights.dims(name)?)?;
        }
        self.adapters = adapters;
        Ok(())
    }

    /// The matrix `name` applied to `x`, with its adapter when it has one.
    fn lin(&self, name: &str, x: &Tensor) -> Result<Tensor> {
        let y = ops::linear(x, &self.w(name)?)?;
        match self.adapters.get(name) {
            Some(a) => Ok((y + a.forward(x)?)?),
            None => Ok(y),
        }
    }

    /// The gradient of [`Self::lin`]'s input.
    fn lin_dx(&self, name: &str, x: &Tensor, dy: &Tensor) -> Result<Tensor> {
        let dx = ops::linear_bwd(x, &self.w(name)?, dy, false)?.0;
        match self.adapters.get(name) {
            Some(a) => Ok((dx + a.input_grad(dy)?)?),
            None => Ok(dx),
        }
    }

    /// The gradients [`Self::lin`] gives its parameters: the matrix's own when it is trainable,
    /// its adapter pair's when it has one.
    fn lin_grads(&self, name: &str, x: &Tensor, dy: &Tensor, grads: &mut Grads) -> Result<()> {
        if self.is_trainable(name) {
            add_grad(&mut grads.params, name, ops::linear_dw(x, dy)?)?;
        }
        if let Some(a) = self.adapters.get(name) {
            let (ga, gb) = a.grads(x, dy)?;
            let (na, nb) = adapter::grad_names(name);
            add_grad(&mut grads.params, &na, ga)?;
            add_grad(&mut grads.params, &nb, gb)?;
        }
        Ok(())
    }

    /// Whether the backward must give `name` a gradient (its own or its adapter's).
    fn learns(&self, name: &str) -> bool {
        self.is_trainable(name) || self.adapters.contains_key(name)
    }

    /// Names of every parameter of the given blocks' MLPs (blocks the model lacks have none;
    /// commands check `--layers` against the model before they get here).
    pub fn mlp_param_names(&self, layers: &[usize]) -> Vec<String> {
        layers
            .iter()
            .filter_map(|&l| self.names.get(l))
            .flat_map(|n| [n.gate.clone(), n.up.clone(), n.down.clone()])
            .collect()
    }

    /// The hook point a run must cache so that [`Transformer::matrix_input`] can rebuild the
    /// input ("keys") of a block's weight matrix: `resid_pre` for q/k/v, `hook_z` for o,
    /// `resid_mid` for gate/up, `mlp.hook_post` for down. `None` for other parameters.
    pub fn key_point(&self, name: &str) -> Option<HookPoint> {
        let l = Self::param_layer(name)?;
        let n = self.names.get(l)?;
        if [&n.q, &n.k, &n.v].contains(&&name.to_string()) {
            Some(HookPoint::ResidPre(l))
        } else if name == n.o {
            Some(HookPoint::AttnZ(l))
        } else if name == n.gate || name == n.up {
            Some(HookPoint::ResidMid(l))
        } else if name == n.down {
            Some(HookPoint::MlpPost(l))
        } else {
            None
        }
    }

    /// The rows `[B, T, in]` that weight `name` multiplies, from the activation cached at
    /// [`Transformer::key_point`]`(name)` (normalized where the block normalizes).
    pub fn matrix_input(&self, name: &str, cached: &Tensor) -> Result<Tensor> {
        let point = self
            .key_point(name)
            .with_context(|| format!("`{name}` is not a weight matrix of a block"))?;
        let n = &self.names[point.layer().expect("block point")];
        let c = &self.config;
        let norm = |ln: &str| -> Result<Tensor> {
            Ok(ops::rms_norm(cached, &self.norm_scale(ln)?, c.rms_norm_eps)?.0)
        };
        match point {
            HookPoint::ResidPre(_) => norm(&n.ln_in),
            HookPoint::ResidMid(_) => norm(if c.arch.layout().sandwich_norms {
                &n.ln_pre_ff
            } else {
                &n.ln_post_attn
            }),
            HookPoint::AttnZ(_) => {
                let (b, t, h, hd) = cached.dims4()?;
                Ok(cached.reshape((b, t, h * hd))?)
            }
            _ => Ok(cached.clone()),
        }
    }

    fn is_trainable(&self, name: &str) -> bool {
        self.trainable.contains(name)
    }

    /// A weight in the compute dtype (weights stored in bf16/f16 are widened here, and blocks
    /// dequantized, one matrix at a time).
    fn w(&self, name: &str) -> Result<Tensor> {
        let t = self.weights.dense(name, &self.device)?;
        Ok(if t.dtype() == self.dtype {
            t
        } else {
            t.to_dtype(self.dtype)?
        })
    }

    /// The dtype of what runs hand out and take in (logits, activations, residuals, patches)
    /// and of trainable weights, gradients and optimizer state: f32 (f64 in the
    /// finite-difference tests), also when the forward computes in bf16/f16.
    pub fn dtype(&self) -> DType {
        if self.half() {
            DType::F32
        } else {
            self.dtype
        }
    }

    /// The dtype the forward pass computes in: [`Transformer::dtype`], or bf16/f16 when chosen
    /// with [`Transformer::set_compute_dtype`].
    pub fn compute_dtype(&self) -> DType {
        self.dtype
    }

    /// Effective RMSNorm multiplier (Gemma stores w and multiplies by 1 + w).
    fn norm_scale(&self, name: &str) -> Result<Tensor> {
        // Half-precision models normalize in f32, with the multiplier in f32 (1 + w in bf16
        // would round it).
        let w = if self.half() {
            self.weights.get(name)?.to_dtype(DType::F32)?
        } else {
            self.w(name)?
        };
        Ok(if self.config.arch.layout().norm_plus_one {
            w.affine(1.0, 1.0)?
        } else {
            w.clone()
        })
    }

    fn param_layer(name: &str) -> Option<usize> {
        name.strip_prefix("model.layers.")?
            .split('.')
            .next()?
            .parse()
            .ok()
    }

    /// The RoPE table rows of a batch's slots `[B·T]`: each slot's position in the table its
    /// row takes ([`ModelConfig::rope_table_of`] of the row's length, cached tokens included:
    /// its largest position + 1). A row's length decides for itself alone, so a sequence gets
    /// the same numbers whatever it is batched with (transformers decides by the batch's
    /// longest row).
    fn rope_index(&self, batch: &Batch) -> Result<Tensor> {
        let rows: Vec<u32> = batch
            .positions
            .iter()
            .flat_map(|row| {
                let len = row.iter().max().map_or(0, |&p| p as usize + 1);
                let offset = (self.config.rope_table_of(len) * self.rope_rows) as u32;
                row.iter().map(move |&p| p + offset)
            })
            .collect();
        Ok(Tensor::from_vec(
            rows,
            batch.size() * batch.len(),
            &self.device,
        )?)
    }

    /// cos and sin `[B, 1, T, hd]` of layer `l` at the table rows `pos` (see
    /// [`rope_index`](Self::rope_index)).
    fn rope_for(&self, l: usize, pos: &Tensor, b: usize, t: usize) -> Result<(Tensor, Tensor)> {
        let key = self.config.rope_of(l);
        let (_, c, s) = self
            .rope
            .iter()
            .find(|(k, _, _)| *k == key)
            .expect("table built for every base");
        let hd = self.config.head_dim;
        Ok((
            c.index_select(pos, 0)?.reshape((b, 1, t, hd))?,
            s.index_select(pos, 0)?.reshape((b, 1, t, hd))?,
        ))
    }

    /// Token embeddings `[B, T, D]` (Gemma: scaled by sqrt(D)), in the compute dtype.
    pub fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let x = self
            .weights
            .rows("model.embed_tokens.weight", &ids.flatten_all()?)?
            .to_dtype(self.dtype)?
            .reshape((b, t, self.config.hidden_size))?;
        let s = self.config.embed_scale();
        Ok(if s != 1.0 { x.affine(s, 0.0)? } else { x })
    }

    /// Longest sequence this model is run with: its max_position_embeddings, at most the
    /// length of the RoPE tables.
    pub fn context_len(&self) -> usize {
        self.config.max_position_embeddings.min(ROPE_TABLE_LEN)
    }

    fn check_batch(&self, batch: &Batch) -> Result<()> {
        let max = self.context_len();
        let longest = batch.positions.iter().flatten().copied().max().unwrap_or(0) as usize + 1;
        if longest > max {
            bail!("prompt of {longest} tokens is longer than the context this model is run with ({max} tokens)");
        }
        Ok(())
    }

    /// Last-position logits of prompts given as token ids (one batch, left-padded with `pad`),
    /// as rows.
    pub fn last_logits(&self, ids: &[Vec<u32>], pad: u32) -> Result<Vec<Vec<f32>>> {
        let b = Batch::new(ids, pad, crate::model::batch::PadSide::Left, self.device())?;
        let opts = RunOpts {
            logits: LogitsAt::Last,
            ..Default::default()
        };
        let logits = self.run(&b, &opts)?.logits.expect("logits asked for");
        Ok(logits.to_dtype(DType::F32)?.to_vec2()?)
    }

    /// Run the model on a batch.
    pub fn run(&self, batch: &Batch, opts: &RunOpts) -> Result<RunOutput> {
        self.check_batch(batch)?;
        let n_layers = self.config.num_layers;
        let (b, t) = (batch.size(), batch.len());
        let empty = Hooks::default();
        let hooks = opts.hooks.unwrap_or(&empty);
        for p in hooks
            .cache
            .iter()
            .chain(hooks.grads.iter())
            .chain(hooks.patches.iter().map(|p| &p.point))
        {
            if p.layer().is_some_and(|l| l >= n_layers) {
                bail!("hook `{p}`: layer does not exist (the model has {n_layers} blocks)");
            }
        }
        let start_layer = opts.start.as_ref().map_or(0, |s| s.0);
        let end_layer = opts.stop_at.unwrap_or(n_layers).min(n_layers);
        if start_layer > end_layer {
            bail!("run: start layer {start_layer} is above the stop layer {end_layer}");
        }
        let want_logits = end_layer == n_layers && opts.logits != LogitsAt::None;
        if opts.stop_at.is_some_and(|s| s < n_layers) && opts.logits != LogitsAt::None {
            bail!("run: logits asked for, but the run stops at block {end_layer}");
        }
        // The lowest layer whose backward is needed.
        let lowest = if !opts.grad {
            usize::MAX
        } else {
            let mut lo = end_layer;
            for n in self.trainable.iter().chain(self.adapters.keys()) {
                match Self::param_layer(n) {
                    Some(l) => lo = lo.min(l),
                    None if n == "model.embed_tokens.weight" => lo = lo.min(start_layer),
                    None => {}
                }
            }
            for p in &hooks.grads {
                lo = lo.min(p.layer().unwrap_or(start_layer));
            }
            if opts.grad_start {
                lo = start_layer;
            }
            lo.max(start_layer)
        };

        let mut cache = ActivationCache::new();
        let mut keep: BTreeMap<HookPoint, Vec<Tensor>> = BTreeMap::new();
        let mut x = match &opts.start {
            Some((_, r)) => {
                if r.dims() != [b, t, self.config.hidden_size] {
                    bail!(
                        "run: starting residual has shape {:?}, expected {:?}",
                        r.dims(),
                        [b, t, self.config.hidden_size]
                    );
                }
                self.inward(r)?
            }
            None => {
                let e = self.embed(&batch.ids)?;
                self.hook(HookPoint::Embed, e, hooks, &mut cache, &mut keep)?
            }
        };
        let pos = self.rope_index(batch)?;
        let mask_global = batch.attn_mask(&[], None, self.mask_dtype(), &self.device)?;
        let mask_local = match self.config.sliding_window {
            Some(w) if (0..n_layers).any(|l| self.config.is_sliding(l)) => {
                Some(batch.attn_mask(&[], Some(w), self.mask_dtype(), &self.device)?)
            }
            _ => None,
        };
        let mut layers = BTreeMap::new();
        let checkpoint = hooks.is_empty()
            && match opts.checkpoint {
                Checkpoint::Off => false,
                Checkpoint::On => true,
                Checkpoint::Auto => {
                    let blocks = end_layer.saturating_sub(lowest.max(start_layer));
                    blocks * self.block_activation_bytes(b, t) > CHECKPOINT_AUTO_BYTES
                }
            };
        for l in start_layer..end_layer {
            let mask = self.mask_of(l, &mask_global, mask_local.as_ref());
            let (c, s) = self.rope_for(l, &pos, b, t)?;
            let record = l >= lowest;
            if record && checkpoint {
                layers.insert(l, Recorded::Input(x.clone()));
            }
            let (nx, tape) = self.layer_forward(
                l,
                x,
                mask,
                &c,
                &s,
                None,
                hooks,
                &mut cache,
                &mut keep,
                record && !checkpoint,
            )?;
            x = nx;
            if let Some(tp) = tape {
                layers.insert(l, Recorded::Activations(tp));
            }
        }
        let (logits, head) = if want_logits {
            let (lg, ht) = self.head_forward(&x, &opts.logits, batch)?;
            (Some(lg), Some(ht))
        } else {
            (None, None)
        };
        let tape = opts.grad.then(|| Tape {
            start_layer,
            lowest,
            end_layer,
            layers,
            masks: (mask_global, mask_local),
            pos,
            keep,
            grad_points: hooks.grads.clone(),
            head,
            ids: (start_layer == 0 && opts.start.is_none()).then(|| batch.ids.clone()),
            shape: (b, t),
            grad_start: opts.grad_start,
        });
        Ok(RunOutput {
            logits,
            resid: self.outward(x)?,
            cache,
            tape,
        })
    }

    /// Bytes one block keeps for its backward on a `b × t` batch (what [`LayerTape`] holds:
    /// residual-width rows, keys and values, the MLP's hidden rows, the attention weights).
    fn block_activation_bytes(&self, b: usize, t: usize) -> usize {
        let c = &self.config;
        let per_token = 9 * c.hidden_size.max(c.num_heads * c.head_dim)
            + 3 * c.num_kv_heads * c.head_dim
            + 4 * c.intermediate_size
            + c.num_heads * t;
        b * t * per_token * self.dtype.size_in_bytes()
    }

    /// The attention mask of block `l`: the sliding-window one on its sliding layers.
    fn mask_of<'a>(&self, l: usize, global: &'a Tensor, local: Option<&'a Tensor>) -> &'a Tensor {
        if self.config.is_sliding(l) {
            local.unwrap_or(global)
        } else {
            global
        }
    }

    /// The activations of a checkpointed block, from its input (no hooks: a checkpointed run
    /// has none).
    fn recompute_layer(&self, l: usize, x: &Tensor, tape: &Tape) -> Result<LayerTape> {
        let (b, t) = tape.shape;
        let mask = self.mask_of(l, &tape.masks.0, tape.masks.1.as_ref());
        let (c, s) = self.rope_for(l, &tape.pos, b, t)?;
        let (_, lt) = self.layer_forward(
            l,
            x.clone(),
            mask,
            &c,
            &s,
            None,
            &Hooks::default(),
            &mut ActivationCache::new(),
            &mut BTreeMap::new(),
            true,
        )?;
        lt.context("recomputing a block kept no activations")
    }

    /// Apply the hooks of one point to an activation.
    fn hook(
        &self,
        p: HookPoint,
        mut a: Tensor,
        hooks: &Hooks,
        cache: &mut ActivationCache,
        keep: &mut BTreeMap<HookPoint, Vec<Tensor>>,
    ) -> Result<Tensor> {
        for patch in hooks.patches.iter().filter(|x| x.point == p) {
            let z = matches!(p, HookPoint::AttnZ(_));
            let m = selection_mask(&patch.sel, a.dims(), z, &self.device)?.to_dtype(self.dtype)?;
            let v = self.inward(&patch.value)?;
            let v = v.broadcast_as(a.dims()).with_context(|| {
                format!(
                    "patch at `{p}`: value of shape {:?} does not fit the activation {:?}",
                    patch.value.dims(),
                    a.dims()
                )
            })?;
            a = match patch.mode {
                PatchMode::Replace => {
                    let inv = m.affine(-1.0, 1.0)?;
                    keep.entry(p).or_default().push(inv.clone());
                    (a.broadcast_mul(&inv)? + v.broadcast_mul(&m)?)?
                }
                PatchMode::Add => (a + v.broadcast_mul(&m)?)?,
            };
        }
        if hooks.cache.contains(&p) {
            cache.insert(p, self.outward(a.clone())?);
        }
        Ok(a)
    }

    #[allow(clippy::too_many_arguments)]
    fn layer_forward(
        &self,
        l: usize,
        x: Tensor,
        mask: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        kv: Option<&mut Option<(Tensor, Tensor)>>,
        hooks: &Hooks,
        cache: &mut ActivationCache,
        keep: &mut BTreeMap<HookPoint, Vec<Tensor>>,
        record: bool,
    ) -> Result<(Tensor, Option<LayerTape>)> {
        let c = &self.config;
        let n = &self.names[l];
        let layout = c.arch.layout();
        let (b, t, _) = x.dims3()?;
        let (h, kvh, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let x = self.hook(HookPoint::ResidPre(l), x, hooks, cache, keep)?;
        let (h1, r1) = ops::rms_norm(&x, &self.norm_scale(&n.ln_in)?, c.rms_norm_eps)?;
        let mut q_lin = self.lin(&n.q, &h1)?;
        let mut k_lin = self.lin(&n.k, &h1)?;
        let mut v_lin = self.lin(&n.v, &h1)?;
        if c.attention_bias {
            q_lin = q_lin.broadcast_add(&self.w(&n.qb)?)?;
            k_lin = k_lin.broadcast_add(&self.w(&n.kb)?)?;
            v_lin = v_lin.broadcast_add(&self.w(&n.vb)?)?;
        }
        let q_lin = q_lin.reshape((b, t, h, hd))?;
        let k_lin = k_lin.reshape((b, t, kvh, hd))?;
        let v4 = v_lin
            .reshape((b, t, kvh, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let (qn, rq, kn, rk) = if layout.qk_norm {
            let (qn, rq) = ops::rms_norm(&q_lin, &self.norm_scale(&n.q_norm)?, c.rms_norm_eps)?;
            let (kn, rk) = ops::rms_norm(&k_lin, &self.norm_scale(&n.k_norm)?, c.rms_norm_eps)?;
            (qn, Some(rq), kn, Some(rk))
        } else {
            (q_lin.clone(), None, k_lin.clone(), None)
        };
        let q = ops::rope(&qn.transpose(1, 2)?.contiguous()?, cos, sin)?;
        let k = ops::rope(&kn.transpose(1, 2)?.contiguous()?, cos, sin)?;
        let (k_all, v_all) = match kv {
            Some(slot) => {
                let (ka, va) = match slot.take() {
                    Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v4], 2)?),
                    None => (k.clone(), v4.clone()),
                };
                *slot = Some((ka.clone(), va.clone()));
                (ka, va)
            }
            None => (k.clone(), v4.clone()),
        };
        let (z, p) = ops::attention(&q, &k_all, &v_all, mask, &c.attn_scores())?;
        let z_tl = z.transpose(1, 2)?.contiguous()?;
        let z_tl = self.hook(HookPoint::AttnZ(l), z_tl, hooks, cache, keep)?;
        let z_flat = z_tl.reshape((b, t, h * hd))?;
        let o = self.lin(&n.o, &z_flat)?;
        let (attn_out, r_pa) = if layout.sandwich_norms {
            let (a, r) = ops::rms_norm(&o, &self.norm_scale(&n.ln_post_attn)?, c.rms_norm_eps)?;
            (a, Some(r))
        } else {
            (o.clone(), None)
        };
        let attn_out = self.hook(HookPoint::AttnOut(l), attn_out, hooks, cache, keep)?;
        let mid = (&x + attn_out)?;
        let mid = self.hook(HookPoint::ResidMid(l), mid, hooks, cache, keep)?;
        let ln2 = if layout.sandwich_norms {
            &n.ln_pre_ff
        } else {
            &n.ln_post_attn
        };
        let (h2, r2) = ops::rms_norm(&mid, &self.norm_scale(ln2)?, c.rms_norm_eps)?;
        let gate = self.lin(&n.gate, &h2)?;
        let gate = self.hook(HookPoint::MlpPre(l), gate, hooks, cache, keep)?;
        let up = self.lin(&n.up, &h2)?;
        let act = match c.activation {
            Activation::GeluTanh => ops::gelu_tanh(&gate)?,
            Activation::Silu => ops::silu(&gate)?,
        };
        let post = (&act * &up)?;
        let post = self.hook(HookPoint::MlpPost(l), post, hooks, cache, keep)?;
        let m = self.lin(&n.down, &post)?;
        let (mlp_out, r_pf) = if layout.sandwich_norms {
            let (a, r) = ops::rms_norm(&m, &self.norm_scale(&n.ln_post_ff)?, c.rms_norm_eps)?;
            (a, Some(r))
        } else {
            (m.clone(), None)
        };
        let mlp_out = self.hook(HookPoint::MlpOut(l), mlp_out, hooks, cache, keep)?;
        let out = (&mid + mlp_out)?;
        let out = self.hook(HookPoint::ResidPost(l), out, hooks, cache, keep)?;
        let tape = record.then(|| LayerTape {
            x,
            h1,
            r1,
            q_lin,
            k_lin,
            rq,
            rk,
            q,
            k,
            v: v4,
            p,
            z_flat,
            o,
            r_pa,
            mid,
            h2,
            r2,
            gate,
            up,
            act,
            post,
            m,
            r_pf,
            cos: cos.clone(),
            sin: sin.clone(),
        });
        Ok((out, tape))
    }

    /// Logits `[N, V]` of final residual rows `[N, D]` (final norm, LM head, soft-capping).
    pub fn head(&self, rows: &Tensor) -> Result<Tensor> {
        self.head_with(rows, &self.lm_weight()?)
    }

    /// Logits `[N, K]` of final residual rows `[N, D]` for the vocabulary entries `tokens` only:
    /// the LM head restricted to K rows (a K×D product instead of V×D).
    pub fn head_tokens(&self, rows: &Tensor, tokens: &[u32]) -> Result<Tensor> {
        let v = self.config.vocab_size;
        if let Some(t) = tokens.iter().find(|&&t| t as usize >= v) {
            bail!("token id {t} is outside the vocabulary (size {v})");
        }
        let ids = Tensor::from_vec(tokens.to_vec(), tokens.len(), &self.device)?;
        let selected = self
            .weights
            .rows(self.lm_name(), &ids)?
            .to_dtype(self.dtype)?;
        self.head_with(rows, &selected)
    }

    fn head_with(&self, rows: &Tensor, lm_weight: &Tensor) -> Result<Tensor> {
        let (hn, _) = ops::rms_norm(
            rows,
            &self.norm_scale("model.norm.weight")?,
            self.config.rms_norm_eps,
        )?;
        // Logits in f32 also from a half-precision model (see `ops::linear_wide`).
        let logits = self.outward(ops::linear_wide(&hn, lm_weight)?)?;
        Ok(match self.config.final_logit_softcapping {
            Some(cap) => ops::softcap(&logits, cap)?,
            None => logits,
        })
    }

    /// The LM head's matrix `[V, D]` in the compute dtype.
    pub(crate) fn lm_weight(&self) -> Result<Tensor> {
        self.w(self.lm_name())
    }

    /// The final norm's effective multiplier.
    pub(crate) fn final_norm_scale(&self) -> Result<Tensor> {
        self.norm_scale("model.norm.weight")
    }

    /// Whether the final norm or the LM head is being trained (then a loss on logits needs
    /// their gradients, not only the residual's).
    pub fn head_is_trainable(&self) -> bool {
        self.is_trainable(self.lm_name()) || self.is_trainable("model.norm.weight")
    }

    fn lm_name(&self) -> &'static str {
        if self.config.tie_word_embeddings {
            "model.embed_tokens.weight"
        } else {
            "lm_head.weight"
        }
    }

    fn head_forward(&self, x: &Tensor, at: &LogitsAt, batch: &Batch) -> Result<(Tensor, HeadTape)> {
        let (b, t, d) = x.dims3()?;
        let flat = x.reshape((b * t, d))?;
        let rows: Option<Vec<u32>> = match at {
            LogitsAt::All | LogitsAt::None => None,
            LogitsAt::Last => Some(
                batch
                    .last
                    .iter()
                    .enumerate()
                    .map(|(i, &p)| (i * t + p) as u32)
                    .collect(),
            ),
            LogitsAt::Rows(v) => {
                for &(r, p) in v {
                    if r >= b || p >= t {
                        bail!(
                            "logits asked at row {r}, position {p}, outside the batch ({b} × {t})"
                        );
                    }
                }
                Some(v.iter().map(|&(r, p)| (r * t + p) as u32).collect())
            }
        };
        let rows = match rows {
            Some(v) => {
                let n = v.len();
                Some(Tensor::from_vec(v, n, &self.device)?)
            }
            None => None,
        };
        let xr = match &rows {
            Some(r) => flat.index_select(r, 0)?,
            None => flat,
        };
        let (hn, rstd) = ops::rms_norm(
            &xr,
            &self.norm_scale("model.norm.weight")?,
            self.config.rms_norm_eps,
        )?;
        let mut logits = self.outward(ops::linear_wide(&hn, &self.lm_weight()?)?)?;
        let mut capped = None;
        if let Some(cap) = self.config.final_logit_softcapping {
            logits = ops::softcap(&logits, cap)?;
            capped = Some(logits.clone());
        }
        if *at == LogitsAt::All {
            logits = logits.reshape((b, t, ()))?;
        }
        Ok((
            logits,
            HeadTape {
                rows,
                xr,
                hn,
                rstd,
                capped,
            },
        ))
    }

    /// Backward from the gradient of a metric with respect to the run's logits and/or its final
    /// residual. Returns the gradients of trainable parameters, of requested hook points and,
    /// when asked, of the starting residual.
    pub fn backward(
        &self,
        out: &RunOutput,
        d_logits: Option<&Tensor>,
        d_resid: Option<&Tensor>,
    ) -> Result<Grads> {
        let tape = out
            .tape
            .as_ref()
            .context("backward: the run was made without `grad: true`")?;
        if self.half() {
            // Mixed precision: the forward ran in half precision, the backward runs in f32 on
            // the widened activations (gradients of f32 master weights, as in AMP training).
            let wide = self.widened()?;
            let out32 = RunOutput {
                logits: None,
                resid: out.resid.clone(),
                cache: ActivationCache::new(),
                tape: Some(tape.widened()?),
            };
            return wide.backward(&out32, d_logits, d_resid);
        }
        let (b, t) = tape.shape;
        let d = self.config.hidden_size;
        let mut grads = Grads::default();
        let mut g: Option<Tensor> = d_resid.cloned();
        let mut head_dense: Option<(Tensor, Tensor)> = None;
        if let Some(dl) = d_logits {
            let head = tape
                .head
                .as_ref()
                .context("backward: d_logits given but the run computed no logits")?;
            let dl = dl.reshape(((), self.config.vocab_size))?;
            let dl = match (&head.capped, self.config.final_logit_softcapping) {
                (Some(y), Some(cap)) => ops::softcap_bwd(y, &dl, cap)?,
                _ => dl,
            };
            let lm = self.lm_weight()?;
            let (dhn, _) = ops::linear_bwd(&head.hn, &lm, &dl, false)?;
            if self.is_trainable(self.lm_name()) {
                // Kept for the end, where a tied embedding adds its lookup rows in the same pass.
                head_dense = Some((dl.clone(), head.hn.clone()));
            }
            let (dxr, dns) = ops::rms_norm_bwd(
                &head.xr,
                &self.norm_scale("model.norm.weight")?,
                &head.rstd,
                &dhn,
                self.is_trainable("model.norm.weight"),
            )?;
            if let Some(dn) = dns {
                add_grad(&mut grads.params, "model.norm.weight", dn)?;
            }
            let full = match &head.rows {
                Some(r) => {
                    Tensor::zeros((b * t, d), self.dtype, &self.device)?.index_add(r, &dxr, 0)?
                }
                None => dxr,
            }
            .reshape((b, t, d))?;
            g = Some(match g {
                Some(x) => (x + full)?,
                None => full,
            });
        }
        let mut g = g.context("backward: give d_logits or d_resid")?;
        let (vocab, tied) = (self.config.vocab_size, self.config.tie_word_embeddings);
        let dense_grad = |dense: &Option<(Tensor, Tensor)>, rows: Option<(&Tensor, &Tensor)>| {
            ops::vocab_grad(
                dense.as_ref().map(|(a, b)| (a, b)),
                rows,
                vocab,
                d,
                &self.device,
            )
        };
        if let Some(hd) = &head_dense {
            if !tied {
                grads.params.insert(
                    "lm_head.weight".into(),
                    dense_grad(&Some(hd.clone()), None)?,
                );
                head_dense = None;
            }
        }
        if tape.lowest > tape.end_layer {
            if head_dense.is_some() {
                grads
                    .params
                    .insert(self.lm_name().into(), dense_grad(&head_dense, None)?);
            }
            return Ok(grads);
        }
        let need_below_lowest = tape.grad_start
            || (tape.ids.is_some()
                && (self.is_trainable("model.embed_tokens.weight")
                    || tape.grad_points.contains(&HookPoint::Embed)));
        for l in (tape.lowest..tape.end_layer).rev() {
            let recomputed;
            let lt = match tape.layers.get(&l) {
                Some(Recorded::Activations(lt)) => lt,
                Some(Recorded::Input(x)) => {
                    recomputed = self.recompute_layer(l, x, tape)?;
                    &recomputed
                }
                None => bail!("backward: missing layer tape"),
            };
            let need_dx = l > tape.lowest || need_below_lowest;
            g = self.layer_backward(l, lt, g, need_dx, tape, &mut grads)?;
        }
        if tape.lowest == tape.start_layer {
            if let Some(ids) = &tape.ids {
                g = self.grad_point(HookPoint::Embed, g, tape, &mut grads)?;
                if self.is_trainable("model.embed_tokens.weight") {
                    // Lookup rows and (tied) head gradient in one pass over the big matrix.
                    let de = (g.reshape((b * t, d))? * self.config.embed_scale())?;
                    let flat = ids.flatten_all()?;
                    grads.params.insert(
                        "model.embed_tokens.weight".into(),
                        dense_grad(&head_dense, Some((&flat, &de)))?,
                    );
                    head_dense = None;
                }
            }
            if tape.grad_start {
                grads.start = Some(g);
            }
        }
        if head_dense.is_some() {
            grads
                .params
                .insert(self.lm_name().into(), dense_grad(&head_dense, None)?);
        }
        Ok(grads)
    }

    /// At a hook point on the way down: record the gradient if asked, then stop it at entries
    /// that a patch replaced.
    fn grad_point(
        &self,
        p: HookPoint,
        mut g: Tensor,
        tape: &Tape,
        grads: &mut Grads,
    ) -> Result<Tensor> {
        if tape.grad_points.contains(&p) {
            grads.hooks.insert(p, g.clone());
        }
        if let Some(ms) = tape.keep.get(&p) {
            for m in ms {
                g = g.broadcast_mul(m)?;
            }
        }
        Ok(g)
    }

    fn layer_backward(
        &self,
        l: usize,
        lt: &LayerTape,
        g_out: Tensor,
        need_dx: bool,
        tape: &Tape,
        grads: &mut Grads,
    ) -> Result<Tensor> {
        let c = &self.config;
        let n = &self.names[l];
        let layout = c.arch.layout();
        let (b, t, _) = lt.x.dims3()?;
        let (h, kvh, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let tp = |name: &str| self.learns(name);
        let wants = |p: HookPoint| tape.grad_points.contains(&p);
        let attn_trainable = n.attn_params().iter().any(|x| tp(x))
            || tp(&n.ln_in)
            || (layout.sandwich_norms && tp(&n.ln_post_attn));
        let need_attn = need_dx
            || attn_trainable
            || wants(HookPoint::AttnZ(l))
            || wants(HookPoint::AttnOut(l))
            || wants(HookPoint::ResidPre(l));
        let need_dmid = need_attn || wants(HookPoint::ResidMid(l));
        let ln2 = if layout.sandwich_norms {
            &n.ln_pre_ff
        } else {
            &n.ln_post_attn
        };

        let g = self.grad_point(HookPoint::ResidPost(l), g_out, tape, grads)?;
        // MLP branch.
        let d_mlp_out = self.grad_point(HookPoint::MlpOut(l), g.clone(), tape, grads)?;
        let d_m = match &lt.r_pf {
            Some(r) => {
                let (dm, ds) = ops::rms_norm_bwd(
                    &lt.m,
                    &self.norm_scale(&n.ln_post_ff)?,
                    r,
                    &d_mlp_out,
                    tp(&n.ln_post_ff),
                )?;
                if let Some(ds) = ds {
                    add_grad(&mut grads.params, &n.ln_post_ff, ds)?;
                }
                dm
            }
            None => d_mlp_out,
        };
        let need_inner = need_dmid
            || tp(&n.gate)
            || tp(&n.up)
            || tp(ln2)
            || wants(HookPoint::MlpPost(l))
            || wants(HookPoint::MlpPre(l));
        let mut g_mid = g;
        self.lin_grads(&n.down, &lt.post, &d_m, grads)?;
        if need_inner {
            let d_post = self.lin_dx(&n.down, &lt.post, &d_m)?;
            let d_post = self.grad_point(HookPoint::MlpPost(l), d_post, tape, grads)?;
            let d_act = (&d_post * &lt.up)?;
            let d_up = (&d_post * &lt.act)?;
            let d_gate = match c.activation {
                Activation::GeluTanh => ops::gelu_tanh_bwd(&lt.gate, &d_act)?,
                Activation::Silu => ops::silu_bwd(&lt.gate, &d_act)?,
            };
            let d_gate = self.grad_point(HookPoint::MlpPre(l), d_gate, tape, grads)?;
            self.lin_grads(&n.gate, &lt.h2, &d_gate, grads)?;
            self.lin_grads(&n.up, &lt.h2, &d_up, grads)?;
            if need_dmid || tp(ln2) {
                let d_h2 = (self.lin_dx(&n.gate, &lt.h2, &d_gate)?
                    + self.lin_dx(&n.up, &lt.h2, &d_up)?)?;
                let (dmid, ds) =
                    ops::rms_norm_bwd(&lt.mid, &self.norm_scale(ln2)?, &lt.r2, &d_h2, tp(ln2))?;
                if let Some(ds) = ds {
                    add_grad(&mut grads.params, ln2, ds)?;
                }
                g_mid = (g_mid + dmid)?;
            }
        }
        if !need_dmid {
            return Ok(g_mid);
        }
        let g_mid = self.grad_point(HookPoint::ResidMid(l), g_mid, tape, grads)?;
        if !need_attn {
            return Ok(g_mid);
        }
        // Attention branch.
        let d_attn_out = self.grad_point(HookPoint::AttnOut(l), g_mid.clone(), tape, grads)?;
        let d_o = match &lt.r_pa {
            Some(r) => {
                let (d, ds) = ops::rms_norm_bwd(
                    &lt.o,
                    &self.norm_scale(&n.ln_post_attn)?,
                    r,
                    &d_attn_out,
                    tp(&n.ln_post_attn),
                )?;
                if let Some(ds) = ds {
                    add_grad(&mut grads.params, &n.ln_post_attn, ds)?;
                }
                d
            }
            None => d_attn_out,
        };
        self.lin_grads(&n.o, &lt.z_flat, &d_o, grads)?;
        let d_zflat = self.lin_dx(&n.o, &lt.z_flat, &d_o)?;
        let d_z_tl = self.grad_point(
            HookPoint::AttnZ(l),
            d_zflat.reshape((b, t, h, hd))?,
            tape,
            grads,
        )?;
        let d_z = d_z_tl.transpose(1, 2)?.contiguous()?;
        let (dq, dk, dv) = ops::attention_bwd(&lt.q, &lt.k, &lt.v, &lt.p, &d_z, &c.attn_scores())?;
        let dqn = ops::rope_bwd(&dq, &lt.cos, &lt.sin)?
            .transpose(1, 2)?
            .contiguous()?;
        let dkn = ops::rope_bwd(&dk, &lt.cos, &lt.sin)?
            .transpose(1, 2)?
            .contiguous()?;
        let dv = dv.transpose(1, 2)?.contiguous()?;
        let (dq_lin, dk_lin) = match (&lt.rq, &lt.rk) {
            (Some(rq), Some(rk)) => {
                let (a, dsq) = ops::rms_norm_bwd(
                    &lt.q_lin,
                    &self.norm_scale(&n.q_norm)?,
                    rq,
                    &dqn,
                    tp(&n.q_norm),
                )?;
                let (bb, dsk) = ops::rms_norm_bwd(
                    &lt.k_lin,
                    &self.norm_scale(&n.k_norm)?,
                    rk,
                    &dkn,
                    tp(&n.k_norm),
                )?;
                if let Some(ds) = dsq {
                    add_grad(&mut grads.params, &n.q_norm, ds)?;
                }
                if let Some(ds) = dsk {
                    add_grad(&mut grads.params, &n.k_norm, ds)?;
                }
                (a, bb)
            }
            _ => (dqn, dkn),
        };
        let dq_lin = dq_lin.reshape((b, t, h * hd))?;
        let dk_lin = dk_lin.reshape((b, t, kvh * hd))?;
        let dv_lin = dv.reshape((b, t, kvh * hd))?;
        for (name, bias, dy) in [
            (&n.q, &n.qb, &dq_lin),
            (&n.k, &n.kb, &dk_lin),
            (&n.v, &n.vb, &dv_lin),
        ] {
            self.lin_grads(name, &lt.h1, dy, grads)?;
            if c.attention_bias && self.is_trainable(bias) {
                let width = dy.dim(2)?;
                add_grad(&mut grads.params, bias, dy.reshape(((), width))?.sum(0)?)?;
            }
        }
        let need_dh1 = need_dx || tp(&n.ln_in) || wants(HookPoint::ResidPre(l));
        if !need_dh1 {
            return Ok(g_mid);
        }
        let d_h1 = ((self.lin_dx(&n.q, &lt.h1, &dq_lin)?
            + self.lin_dx(&n.k, &lt.h1, &dk_lin)?)?
            + self.lin_dx(&n.v, &lt.h1, &dv_lin)?)?;
        let (dx, ds) = ops::rms_norm_bwd(
            &lt.x,
            &self.norm_scale(&n.ln_in)?,
            &lt.r1,
            &d_h1,
            tp(&n.ln_in),
        )?;
        if let Some(ds) = ds {
            add_grad(&mut grads.params, &n.ln_in, ds)?;
        }
        let dx = (g_mid + dx)?;
        self.grad_point(HookPoint::ResidPre(l), dx, tape, grads)
    }

    /// Forward of new tokens with a KV cache (generation). `seqs` holds each row's new tokens;
    /// on the first call they are padded on the left. Returns last-position logits `[B, V]`.
    pub fn step(&self, seqs: &[Vec<u32>], pad_id: u32, kv: &mut KvCache) -> Result<Tensor> {
        let mut batch = Batch::new(
            seqs,
            pad_id,
            crate::model::batch::PadSide::Left,
            &self.device,
        )?;
        if !kv.is_empty() {
            let next = kv.next_positions();
            if next.len() != batch.size() {
                bail!(
                    "generation: {} rows given, the cache holds {}",
                    batch.size(),
                    next.len()
                );
            }
            for (row, start) in batch.positions.iter_mut().zip(next) {
                for (i, p) in row.iter_mut().enumerate() {
                    *p = start + i as u32;
                }
            }
        }
        let x = self.embed(&batch.ids)?;
        let (_, logits) = self.run_cached(
            &batch,
            x,
            0,
            kv,
            &Hooks::default(),
            &mut ActivationCache::new(),
            &LogitsAt::Last,
        )?;
        Ok(logits.expect("logits asked"))
    }

    /// Run blocks `start..` on the batch's slots (residual `x`, `[B, T, D]`) after the keys and
    /// values already in `kv` (per row: which cached slots are real, and their positions), and
    /// append this batch's keys and values. Used for generation and for causal-tracing
    /// restorations, where the positions before the restored one are the corrupted run's cache.
    #[allow(clippy::too_many_arguments)]
    pub fn run_cached(
        &self,
        batch: &Batch,
        x: Tensor,
        start: usize,
        kv: &mut KvCache,
        hooks: &Hooks,
        cache: &mut ActivationCache,
        at: &LogitsAt,
    ) -> Result<(Tensor, Option<Tensor>)> {
        self.run_cached_range(
            batch,
            x,
            start..self.config.num_layers,
            kv,
            hooks,
            cache,
            at,
        )
    }

    /// [`run_cached`](Self::run_cached) over the blocks of `layers` only (logits only when the
    /// range ends at the last block).
    #[allow(clippy::too_many_arguments)]
    pub fn run_cached_range(
        &self,
        batch: &Batch,
        x: Tensor,
        layers: std::ops::Range<usize>,
        kv: &mut KvCache,
        hooks: &Hooks,
        cache: &mut ActivationCache,
        at: &LogitsAt,
    ) -> Result<(Tensor, Option<Tensor>)> {
        if layers.end > self.config.num_layers {
            bail!(
                "run: block range {layers:?} goes past the {} blocks",
                self.config.num_layers
            );
        }
        if layers.end < self.config.num_layers && *at != LogitsAt::None {
            bail!(
                "run: logits asked for, but the run stops at block {}",
                layers.end
            );
        }
        self.check_batch(batch)?;
        let (b, t) = (batch.size(), batch.len());
        let mut x = self.inward(&x)?;
        let mut keep = BTreeMap::new();
        let pos = self.rope_index(batch)?;
        let mask_global = batch.attn_mask(&kv.keys, None, self.mask_dtype(), &self.device)?;
        let mask_local = match self.config.sliding_window {
            Some(w) => Some(batch.attn_mask(&kv.keys, Some(w), self.mask_dtype(), &self.device)?),
            None => None,
        };
        for l in layers {
            let mask = self.mask_of(l, &mask_global, mask_local.as_ref());
            let (c, s) = self.rope_for(l, &pos, b, t)?;
            let slot = &mut kv.layers[l];
            x = self
                .layer_forward(
                    l,
                    x,
                    mask,
                    &c,
                    &s,
                    Some(slot),
                    hooks,
                    cache,
                    &mut keep,
                    false,
                )?
                .0;
        }
        if kv.keys.is_empty() {
            kv.keys = vec![Vec::new(); b];
        }
        for (bi, row) in kv.keys.iter_mut().enumerate() {
            row.extend(
                batch.valid[bi]
                    .iter()
                    .copied()
                    .zip(batch.positions[bi].iter().copied()),
            );
        }
        let logits = match at {
            LogitsAt::None => None,
            other => Some(self.head_forward(&x, other, batch)?.0),
        };
        Ok((self.outward(x)?, logits))
    }
}

fn add_grad(map: &mut BTreeMap<String, Tensor>, name: &str, g: Tensor) -> Result<()> {
    match map.get_mut(name) {
        Some(old) => *old = (&*old + g)?,
        None => {
            map.insert(name.to_string(), g);
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "transformer_tests.rs"]
pub(crate) mod tests;

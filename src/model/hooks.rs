//! Hook points in TransformerLens naming (`blocks.{l}.hook_resid_pre`, `blocks.{l}.attn.hook_z`,
//! …) and what can be done at them: cache the activation, replace or add to it at chosen batch
//! rows / positions / heads, and ask for d(metric)/d(activation).

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

/// A named activation of the hooked transformer. Shapes (B batch, T positions):
/// residual-sized points are `[B, T, d_model]`; `AttnZ` is `[B, T, n_heads, d_head]`;
/// `MlpPre` (gate pre-activation) and `MlpPost` (activation × up) are `[B, T, d_mlp]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HookPoint {
    /// `hook_embed`: token embeddings (Gemma: already multiplied by sqrt(d_model)).
    Embed,
    ResidPre(usize),
    AttnZ(usize),
    AttnOut(usize),
    ResidMid(usize),
    MlpPre(usize),
    MlpPost(usize),
    MlpOut(usize),
    ResidPost(usize),
}

impl HookPoint {
    /// The block the point belongs to (`None` for the embedding).
    pub fn layer(&self) -> Option<usize> {
        use HookPoint::*;
        match *self {
            Embed => None,
            ResidPre(l) | AttnZ(l) | AttnOut(l) | ResidMid(l) | MlpPre(l) | MlpPost(l)
            | MlpOut(l) | ResidPost(l) => Some(l),
        }
    }

    /// Every hook point of a model with `n_layers` blocks, in execution order.
    pub fn all(n_layers: usize) -> Vec<HookPoint> {
        use HookPoint::*;
        let mut v = vec![Embed];
        for l in 0..n_layers {
            v.extend([
                ResidPre(l),
                AttnZ(l),
                AttnOut(l),
                ResidMid(l),
                MlpPre(l),
                MlpPost(l),
                MlpOut(l),
                ResidPost(l),
            ]);
        }
        v
    }

    /// Parse a name and check the layer exists.
    pub fn parse_for(name: &str, n_layers: usize) -> Result<HookPoint> {
        let p: HookPoint = name.parse()?;
        if let Some(l) = p.layer() {
            if l >= n_layers {
                bail!("hook `{name}`: layer {l} does not exist (the model has {n_layers} blocks, 0..{})", n_layers - 1);
            }
        }
        Ok(p)
    }
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use HookPoint::*;
        match *self {
            Embed => write!(f, "hook_embed"),
            ResidPre(l) => write!(f, "blocks.{l}.hook_resid_pre"),
            AttnZ(l) => write!(f, "blocks.{l}.attn.hook_z"),
            AttnOut(l) => write!(f, "blocks.{l}.hook_attn_out"),
            ResidMid(l) => write!(f, "blocks.{l}.hook_resid_mid"),
            MlpPre(l) => write!(f, "blocks.{l}.mlp.hook_pre"),
            MlpPost(l) => write!(f, "blocks.{l}.mlp.hook_post"),
            MlpOut(l) => write!(f, "blocks.{l}.hook_mlp_out"),
            ResidPost(l) => write!(f, "blocks.{l}.hook_resid_post"),
        }
    }
}

impl FromStr for HookPoint {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        use HookPoint::*;
        if s == "hook_embed" {
            return Ok(Embed);
        }
        let known = "hook_embed, blocks.{l}.hook_resid_pre, blocks.{l}.attn.hook_z, blocks.{l}.hook_attn_out, \
             blocks.{l}.hook_resid_mid, blocks.{l}.mlp.hook_pre, blocks.{l}.mlp.hook_post, \
             blocks.{l}.hook_mlp_out, blocks.{l}.hook_resid_post";
        let rest = s.strip_prefix("blocks.");
        let parsed = rest.and_then(|r| {
            let (num, tail) = r.split_once('.')?;
            let l: usize = num.parse().ok()?;
            Some(match tail {
                "hook_resid_pre" => ResidPre(l),
                "attn.hook_z" => AttnZ(l),
                "hook_attn_out" => AttnOut(l),
                "hook_resid_mid" => ResidMid(l),
                "mlp.hook_pre" => MlpPre(l),
                "mlp.hook_post" => MlpPost(l),
                "hook_mlp_out" => MlpOut(l),
                "hook_resid_post" => ResidPost(l),
                _ => return None,
            })
        });
        match parsed {
            Some(p) => Ok(p),
            None => bail!("unknown hook point `{s}`; known hook points: {known}"),
        }
    }
}

/// Which part of an activation a patch touches. `None` means all.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub rows: Option<Vec<usize>>,
    pub positions: Option<Vec<usize>>,
    /// Only for `AttnZ`.
    pub heads: Option<Vec<usize>>,
}

/// How a patch changes the activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchMode {
    /// The selected entries become `value` (e.g. the clean activation in a corrupted run).
    Replace,
    /// `value` is added to the selected entries (steering).
    Add,
}

/// An intervention at one hook point. `value` has the activation's full shape (or one that
/// broadcasts to it); only the selected entries are used.
#[derive(Clone, Debug)]
pub struct Patch {
    pub point: HookPoint,
    pub mode: PatchMode,
    pub value: Tensor,
    pub sel: Selection,
}

/// What to do at hook points during one forward pass.
#[derive(Clone, Debug, Default)]
pub struct Hooks {
    /// Points whose activation is returned in the run's cache.
    pub cache: BTreeSet<HookPoint>,
    /// Interventions, applied in order.
    pub patches: Vec<Patch>,
    /// Points whose gradient d(metric)/d(activation) the backward returns.
    pub grads: BTreeSet<HookPoint>,
}

impl Hooks {
    /// No caching, patching or gradient point.
    pub fn is_empty(&self) -> bool {
        self.cache.is_empty() && self.patches.is_empty() && self.grads.is_empty()
    }

    pub fn new() -> Self {
        Self::default()
    }

    pub fn cache(mut self, p: HookPoint) -> Self {
        self.cache.insert(p);
        self
    }

    pub fn cache_all(mut self, n_layers: usize) -> Self {
        self.cache.extend(HookPoint::all(n_layers));
        self
    }

    pub fn grad(mut self, p: HookPoint) -> Self {
        self.grads.insert(p);
        self
    }

    pub fn patch(mut self, p: Patch) -> Self {
        self.patches.push(p);
        self
    }

    /// Whether anything happens at `p` (so the forward can skip layout work otherwise).
    pub fn touches(&self, p: HookPoint) -> bool {
        self.cache.contains(&p)
            || self.grads.contains(&p)
            || self.patches.iter().any(|x| x.point == p)
    }

    /// Lowest layer that needs a gradient because of a grad hook or a patch (None: none).
    pub fn lowest_grad_layer(&self) -> Option<Option<usize>> {
        self.grads.iter().map(|p| p.layer()).min()
    }
}

/// 0/1 mask over the leading dims of an activation (`[B, T, 1]` or `[B, T, H, 1]`).
pub(crate) fn selection_mask(
    sel: &Selection,
    dims: &[usize],
    z_layout: bool,
    device: &Device,
) -> Result<Tensor> {
    let (b, t) = (dims[0], dims[1]);
    let h = if z_layout { dims[2] } else { 1 };
    for (what, list, n) in [
        ("row", &sel.rows, b),
        ("position", &sel.positions, t),
        ("head", &sel.heads, h),
    ] {
        if let Some(v) = list {
            if let Some(bad) = v.iter().find(|&&i| i >= n) {
                bail!("patch selection: {what} {bad} is out of range (size {n})");
            }
        }
    }
    if sel.heads.is_some() && !z_layout {
        bail!("patch selection: heads can only be chosen at attn.hook_z");
    }
    let pick = |list: &Option<Vec<usize>>, n: usize| -> Vec<bool> {
        match list {
            None => vec![true; n],
            Some(v) => {
                let mut m = vec![false; n];
                for &i in v {
                    m[i] = true;
                }
                m
            }
        }
    };
    let (rb, rt, rh) = (
        pick(&sel.rows, b),
        pick(&sel.positions, t),
        pick(&sel.heads, h),
    );
    let mut m = Vec::with_capacity(b * t * h);
    for &row in &rb {
        for &pos in &rt {
            m.extend(
                rh.iter()
                    .map(|&head| if row && pos && head { 1f32 } else { 0f32 }),
            );
        }
    }
    let shape: Vec<usize> = if z_layout {
        vec![b, t, h, 1]
    } else {
        vec![b, t, 1]
    };
    Ok(Tensor::from_vec(m, shape, device)?)
}

/// Activations cached by a run, by hook point.
pub type ActivationCache = BTreeMap<HookPoint, Tensor>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in HookPoint::all(3) {
            let s = p.to_string();
            assert_eq!(s.parse::<HookPoint>().unwrap(), p, "{s}");
        }
    }

    #[test]
    fn unknown_names_are_rejected_with_the_list() {
        let e = "blocks.2.hook_resid_prex"
            .parse::<HookPoint>()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown hook point `blocks.2.hook_resid_prex`"),
            "{e}"
        );
        assert!(e.contains("hook_resid_post"));
        let e = HookPoint::parse_for("blocks.18.hook_mlp_out", 18)
            .unwrap_err()
            .to_string();
        assert!(e.contains("layer 18 does not exist"), "{e}");
    }

    #[test]
    fn selection_masks() {
        let sel = Selection {
            rows: Some(vec![1]),
            positions: Some(vec![0, 2]),
            heads: None,
        };
        let m = selection_mask(&sel, &[2, 3, 4], false, &Device::Cpu).unwrap();
        let v: Vec<f32> = m.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(v, vec![0., 0., 0., 1., 0., 1.]);
        let bad = Selection {
            rows: Some(vec![5]),
            ..Default::default()
        };
        assert!(selection_mask(&bad, &[2, 3, 4], false, &Device::Cpu)
            .unwrap_err()
            .to_string()
            .contains("row 5"));
    }
}

//! A [`Localization`]: ranked components with scores, the chosen set and its parameter count,
//! saved as JSON; KUDA's window choice from MLP indirect effects; controls (random, all MLPs).

use crate::model::Transformer;
use anyhow::{bail, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

/// A located component.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Component {
    Mlp { layer: usize },
    Attn { layer: usize },
    Head { layer: usize, head: usize },
}

impl Component {
    /// Parameter names the component owns (heads own the whole attention layer's matrices).
    pub fn params(&self, model: &Transformer) -> Vec<String> {
        match *self {
            Component::Mlp { layer } => model.mlp_param_names(&[layer]),
            Component::Attn { layer } | Component::Head { layer, .. } => {
                ["q_proj", "k_proj", "v_proj", "o_proj"]
                    .iter()
                    .map(|m| format!("model.layers.{layer}.self_attn.{m}.weight"))
                    .collect()
            }
        }
    }
}

/// Ranked components and the chosen set.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Localization {
    pub method: String,
    pub model: String,
    pub data: String,
    /// All components, best first, with their scores.
    pub ranked: Vec<(Component, f64)>,
    pub chosen: Vec<Component>,
    pub params: Vec<String>,
    pub param_count: usize,
}

impl Localization {
    pub fn new(
        method: &str,
        model_id: &str,
        data: &str,
        ranked: Vec<(Component, f64)>,
        chosen: Vec<Component>,
        model: &Transformer,
    ) -> Result<Self> {
        let mut params: Vec<String> = chosen.iter().flat_map(|c| c.params(model)).collect();
        params.sort();
        params.dedup();
        let mut count = 0;
        for p in &params {
            count += model.weights().elem_count(p)?;
        }
        Ok(Localization {
            method: method.into(),
            model: model_id.into(),
            data: data.into(),
            ranked,
            chosen,
            params,
            param_count: count,
        })
    }
}

/// KUDA's layer choice: the window of `k` consecutive layers with the largest total MLP
/// indirect effect (`effects[l]`, averaged over facts). Returns the first layer of the window.
pub fn best_window(effects: &[f64], k: usize) -> Result<usize> {
    if k == 0 || k > effects.len() {
        bail!("window of {k} layers does not fit {} layers", effects.len());
    }
    let mut best = (f64::NEG_INFINITY, 0);
    for start in 0..=effects.len() - k {
        let s: f64 = effects[start..start + k].iter().sum();
        if s > best.0 {
            best = (s, start);
        }
    }
    Ok(best.1)
}

/// `n` MLP layers chosen at random with a seed (the random control).
pub fn random_mlps(n_layers: usize, n: usize, seed: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n_layers).collect();
    v.shuffle(&mut rand::rngs::StdRng::seed_from_u64(seed));
    let mut out = v[..n.min(n_layers)].to_vec();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_window_finds_the_peak() {
        let e = [0.0, 0.1, 0.5, 0.6, 0.2, 0.0];
        assert_eq!(best_window(&e, 2).unwrap(), 2);
        assert_eq!(best_window(&e, 3).unwrap(), 2);
        assert_eq!(best_window(&e, 6).unwrap(), 0);
        assert!(best_window(&e, 7).is_err());
    }

    #[test]
    fn random_control_is_seeded() {
        assert_eq!(random_mlps(18, 3, 1), random_mlps(18, 3, 1));
        assert_eq!(random_mlps(18, 3, 1).len(), 3);
    }
}

//! A padded batch of token sequences: ids, validity mask, per-row positions, and the additive
//! attention masks (causal, padding, sliding window) the attention uses.

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};

/// Which side padding goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PadSide {
    /// Pads before the tokens: every row's last token is in the last column (generation).
    #[default]
    Left,
    /// Pads after the tokens.
    Right,
}

/// Additive mask value for positions a query may not see (finite, so a row with no visible key
/// gives a uniform pattern instead of NaN).
pub const MASKED: f32 = -1e30;

/// A padded batch of token id sequences.
#[derive(Clone, Debug)]
pub struct Batch {
    /// `[B, T]` u32.
    pub ids: Tensor,
    /// Which slots hold real tokens.
    pub valid: Vec<Vec<bool>>,
    /// Position id of each slot: 0.. over the real tokens of the row (pads get 0 or repeat).
    pub positions: Vec<Vec<u32>>,
    /// Slot index of the last real token of each row.
    pub last: Vec<usize>,
    pub side: PadSide,
}

impl Batch {
    /// Pad `seqs` to one length. Empty sequences are an error.
    pub fn new(seqs: &[Vec<u32>], pad_id: u32, side: PadSide, device: &Device) -> Result<Batch> {
        if seqs.is_empty() {
            bail!("empty batch: no sequences");
        }
        if let Some(i) = seqs.iter().position(|s| s.is_empty()) {
            bail!("batch row {i} has no tokens");
        }
        let t = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(seqs.len() * t);
        let mut valid = Vec::new();
        let mut positions = Vec::new();
        let mut last = Vec::new();
        for s in seqs {
            let npad = t - s.len();
            let (mut row_ids, mut row_valid, mut row_pos) = (Vec::new(), Vec::new(), Vec::new());
            if side == PadSide::Left {
                row_ids.extend(std::iter::repeat_n(pad_id, npad));
                row_valid.extend(std::iter::repeat_n(false, npad));
                row_pos.extend(std::iter::repeat_n(0u32, npad));
            }
            row_ids.extend_from_slice(s);
            row_valid.extend(std::iter::repeat_n(true, s.len()));
            row_pos.extend(0..s.len() as u32);
            if side == PadSide::Right {
                row_ids.extend(std::iter::repeat_n(pad_id, npad));
                row_valid.extend(std::iter::repeat_n(false, npad));
                row_pos.extend(std::iter::repeat_n(s.len() as u32 - 1, npad));
            }
            last.push(if side == PadSide::Left {
                t - 1
            } else {
                s.len() - 1
            });
            ids.extend(row_ids);
            valid.push(row_valid);
            positions.push(row_pos);
        }
        let ids = Tensor::from_vec(ids, (seqs.len(), t), device)?;
        Ok(Batch {
            ids,
            valid,
            positions,
            last,
            side,
        })
    }

    pub fn size(&self) -> usize {
        self.valid.len()
    }

    pub fn len(&self) -> usize {
        self.valid.first().map_or(0, |r| r.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Additive attention mask `[B, 1, T, S]` for queries in this batch's slots against `past`
    /// earlier key slots (all valid, from a KV cache) followed by this batch's slots.
    /// A query sees a key when the key is real, not in the future, and (with a window)
    /// fewer than `window` positions back.
    pub fn attn_mask(
        &self,
        past: &[Vec<(bool, u32)>],
        window: Option<usize>,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let (b, t) = (self.size(), self.len());
        let p = past.first().map_or(0, |r| r.len());
        let s = p + t;
        let mut m = vec![MASKED; b * t * s];
        for bi in 0..b {
            let keys: Vec<(bool, u32)> = past
                .get(bi)
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .chain(
                    self.valid[bi]
                        .iter()
                        .copied()
                        .zip(self.positions[bi].iter().copied()),
                )
                .collect();
            for qi in 0..t {
                let qpos = self.positions[bi][qi] as i64;
                let qslot = p + qi;
                for (ks, &(kvalid, kpos)) in keys.iter().enumerate().take(qslot + 1) {
                    let in_window = window.is_none_or(|w| qpos - (kpos as i64) < w as i64);
                    if kvalid && in_window {
                        m[(bi * t + qi) * s + ks] = 0.0;
                    }
                }
            }
        }
        Ok(Tensor::from_vec(m, (b, 1, t, s), device)?.to_dtype(dtype)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn left_and_right_padding_positions() {
        let d = Device::Cpu;
        let b = Batch::new(&[vec![5, 6, 7], vec![8]], 0, PadSide::Left, &d).unwrap();
        assert_eq!(b.positions, vec![vec![0, 1, 2], vec![0, 0, 0]]);
        assert_eq!(b.last, vec![2, 2]);
        let ids: Vec<Vec<u32>> = b.ids.to_vec2().unwrap();
        assert_eq!(ids, vec![vec![5, 6, 7], vec![0, 0, 8]]);
        let r = Batch::new(&[vec![5, 6, 7], vec![8]], 0, PadSide::Right, &d).unwrap();
        assert_eq!(r.last, vec![2, 0]);
        assert_eq!(r.valid[1], vec![true, false, false]);
        assert!(Batch::new(&[vec![]], 0, PadSide::Left, &d).is_err());
    }

    #[test]
    fn mask_is_causal_padded_and_windowed() {
        let d = Device::Cpu;
        let b = Batch::new(&[vec![1, 2, 3], vec![4, 5]], 0, PadSide::Left, &d).unwrap();
        let m = b
            .attn_mask(&[], None, DType::F32, &d)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let seen = |bi: usize, q: usize, k: usize| m[(bi * 3 + q) * 3 + k] == 0.0;
        assert!(seen(0, 2, 0) && seen(0, 2, 2) && !seen(0, 0, 1));
        assert!(!seen(1, 2, 0) && seen(1, 2, 1) && seen(1, 2, 2));
        let w = b
            .attn_mask(&[], Some(2), DType::F32, &d)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(
            w[2 * 3] != 0.0 && w[2 * 3 + 1] == 0.0,
            "window 2: position 2 sees 1 and 2 only"
        );
    }
}

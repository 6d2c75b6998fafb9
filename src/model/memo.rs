//! Scores of batches kept on disk by what was scored, so that a long scoring (an MCQ set on a
//! large model) that is interrupted resumes where it stopped, and the same questions asked
//! again of the same model are read back: bit for bit the numbers the batch gave, because a
//! batch is looked up by its exact content (the batches of a scoring depend only on its
//! prompts and batch size, see [`crate::model::scoring::length_buckets`]).
//!
//! One JSONL file per model, code and thread count (the numbers depend on each); a line per
//! batch, `{"k": key, "rows": [[…], …]}`, appended and flushed as each batch is done. A line
//! cut short by an interruption is ignored.

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Kept batch scores of one model (see the module doc).
#[derive(Debug)]
pub struct BatchMemo {
    path: PathBuf,
    kept: RefCell<HashMap<String, Vec<Vec<f32>>>>,
    file: RefCell<Option<File>>,
    /// Batches read back, for the caller's report.
    hits: Cell<usize>,
    /// The file ends inside a line (an interrupted write): the next line starts a new one.
    cut: bool,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Line {
    k: String,
    rows: Vec<Vec<f32>>,
}

impl BatchMemo {
    /// The memo of the model `lm` under this code and thread count, in the cache directory.
    pub fn for_model(lm: &crate::model::LanguageModel) -> Result<BatchMemo> {
        let mut h = Sha256::new();
        h.update(crate::model::cache_fingerprint(&lm.origin)?.as_bytes());
        h.update(b"|");
        h.update(crate::util::code_fingerprint().as_bytes());
        h.update(crate::util::threads().to_le_bytes());
        let name = hex::encode(h.finalize());
        BatchMemo::open(
            &crate::model::source::cache_dir()?
                .join("scores")
                .join(format!("{}.jsonl", &name[..32])),
        )
    }

    /// The memo kept in `path` (created on the first batch).
    pub fn open(path: &Path) -> Result<BatchMemo> {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let cut = !text.is_empty() && !text.ends_with('\n');
        let kept = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Line>(l).ok())
            .map(|l| (l.k, l.rows))
            .collect();
        Ok(BatchMemo {
            path: path.to_path_buf(),
            kept: RefCell::new(kept),
            file: RefCell::new(None),
            hits: Cell::new(0),
            cut,
        })
    }

    /// The key of a batch: what it computes (`kind`, e.g. the tokens scored) and its prompts.
    pub fn key(kind: &[&[u32]], prompts: &[Vec<u32>]) -> String {
        let mut h = Sha256::new();
        for part in kind
            .iter()
            .copied()
            .chain(prompts.iter().map(Vec::as_slice))
        {
            h.update((part.len() as u64).to_le_bytes());
            for t in part {
                h.update(t.to_le_bytes());
            }
        }
        hex::encode(h.finalize())
    }

    /// The rows kept for `key`, if any.
    pub fn get(&self, key: &str) -> Option<Vec<Vec<f32>>> {
        let rows = self.kept.borrow().get(key).cloned();
        if rows.is_some() {
            self.hits.set(self.hits.get() + 1);
        }
        rows
    }

    /// Keep `rows` for `key`, on disk at once.
    pub fn put(&self, key: &str, rows: &[Vec<f32>]) -> Result<()> {
        let mut file = self.file.borrow_mut();
        if file.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .with_context(|| format!("opening {}", self.path.display()))?;
            if self.cut {
                f.write_all(b"\n")
                    .with_context(|| format!("writing {}", self.path.display()))?;
            }
            *file = Some(f);
        }
        let mut text = serde_json::to_string(&Line {
            k: key.into(),
            rows: rows.to_vec(),
        })?;
        text.push('\n');
        let f = file.as_mut().expect("opened above");
        f.write_all(text.as_bytes())
            .and_then(|_| f.flush())
            .with_context(|| format!("writing {}", self.path.display()))?;
        self.kept.borrow_mut().insert(key.into(), rows.to_vec());
        Ok(())
    }

    /// How many batches were read back so far.
    pub fn hits(&self) -> usize {
        self.hits.get()
    }

    /// Say on stderr how many batches were read back, if any (`what`: whose batches).
    pub fn report_hits(&self, what: &str) {
        if self.hits() > 0 {
            eprintln!(
                "{what}{} batch(es) read back from {} (scored before by this model and code)",
                self.hits(),
                self.path.display()
            );
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_rows_come_back_exactly_and_a_cut_line_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scores/m.jsonl");
        let rows = vec![vec![1.0f32 / 3.0, -2.5e-7, f32::MAX], vec![0.1, 0.2, 0.3]];
        let k = BatchMemo::key(&[&[5, 6]], &[vec![1, 2, 3], vec![4]]);
        assert_ne!(k, BatchMemo::key(&[&[5, 6]], &[vec![1, 2], vec![3, 4]]));
        assert_ne!(k, BatchMemo::key(&[&[5]], &[vec![6, 1, 2, 3], vec![4]]));
        {
            let m = BatchMemo::open(&path).unwrap();
            assert!(m.get(&k).is_none());
            m.put(&k, &rows).unwrap();
        }
        // An interrupted write leaves half a line.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"{\"k\":\"abc\",\"rows\":[[1.0,").unwrap();
        let m = BatchMemo::open(&path).unwrap();
        assert_eq!(m.get(&k).unwrap(), rows, "bit for bit");
        assert_eq!(m.hits(), 1);
        assert!(m.get("abc").is_none());
        // What is kept after the cut line is read back too.
        let k2 = BatchMemo::key(&[&[7]], &[vec![8]]);
        m.put(&k2, &rows[..1]).unwrap();
        let again = BatchMemo::open(&path).unwrap();
        assert_eq!(again.get(&k2).unwrap(), rows[..1]);
        assert_eq!(again.get(&k).unwrap(), rows);
    }
}

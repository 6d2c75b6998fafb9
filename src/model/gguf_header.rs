//! Bounded check of a GGUF header before it is parsed: every count, string length, array
//! length, value type, tensor shape and tensor extent is checked against the bytes the file
//! really has, without allocating more than those bytes. A hostile header (a tensor that claims
//! 2^60 elements, a metadata array of 2^40 entries, an alignment of 0) is an error naming the
//! byte offset and what would be valid, never a huge allocation or a panic.

use anyhow::{bail, Result};
use candle_core::quantized::GgmlDType;
use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom};

/// Alignment of the tensor data when `general.alignment` is absent (GGUF specification).
const DEFAULT_ALIGNMENT: u64 = 32;
/// Most dimensions a GGUF tensor may have (`GGML_MAX_DIMS`).
const MAX_DIMS: u32 = 4;
/// Deepest nesting of arrays inside arrays.
const MAX_DEPTH: usize = 64;

/// GGUF value types by their on-disk id.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    U8,
    I8,
    U16,
    I16,
    U32,
    I32,
    F32,
    Bool,
    String,
    Array,
    U64,
    I64,
    F64,
}

impl Kind {
    fn from_id(id: u32) -> Option<Kind> {
        const ALL: [Kind; 13] = [
            Kind::U8,
            Kind::I8,
            Kind::U16,
            Kind::I16,
            Kind::U32,
            Kind::I32,
            Kind::F32,
            Kind::Bool,
            Kind::String,
            Kind::Array,
            Kind::U64,
            Kind::I64,
            Kind::F64,
        ];
        ALL.get(id as usize).copied()
    }

    /// Bytes of a fixed-size value; None for strings and arrays.
    fn fixed_size(self) -> Option<u64> {
        match self {
            Kind::U8 | Kind::I8 | Kind::Bool => Some(1),
            Kind::U16 | Kind::I16 => Some(2),
            Kind::U32 | Kind::I32 | Kind::F32 => Some(4),
            Kind::U64 | Kind::I64 | Kind::F64 => Some(8),
            Kind::String | Kind::Array => None,
        }
    }
}

/// Tensor data types by their on-disk id (the ones candle can read).
fn ggml_dtype(id: u32) -> Option<GgmlDType> {
    Some(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        9 => GgmlDType::Q8_1,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        15 => GgmlDType::Q8K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

const DTYPE_IDS: &str = "0-3, 6-15 or 30";

/// A reader that knows how many bytes remain and never reads or skips past them.
struct Scan<'r, R> {
    r: &'r mut R,
    pos: u64,
    len: u64,
    /// GGUF version 1 stores lengths and dimensions as u32, later versions as u64.
    v1: bool,
}

impl<R: Read> Scan<'_, R> {
    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    /// Fail unless `n` more bytes exist; `what` says what needs them.
    fn need(&self, n: u64, what: &dyn Fn() -> String) -> Result<()> {
        if n > self.remaining() {
            bail!(
                "at byte {}: {} needs {n} bytes but only {} remain in the file (truncated or corrupt)",
                self.pos,
                what(),
                self.remaining()
            );
        }
        Ok(())
    }

    fn bytes<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        self.need(N as u64, what)?;
        let mut b = [0u8; N];
        self.r.read_exact(&mut b)?;
        self.pos += N as u64;
        Ok(b)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.bytes(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.bytes(what)?))
    }

    /// A length or count: u32 in GGUF v1, u64 later.
    fn length(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        if self.v1 {
            Ok(self.u32(what)? as u64)
        } else {
            self.u64(what)
        }
    }

    fn skip(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<()> {
        self.need(n, what)?;
        // Read through rather than seek: behind a buffered reader this costs no system call.
        let skipped = std::io::copy(&mut self.r.by_ref().take(n), &mut std::io::sink())?;
        if skipped != n {
            bail!(
                "at byte {}: {}: the file ended early (truncated)",
                self.pos + skipped,
                what()
            );
        }
        self.pos += n;
        Ok(())
    }

    /// A length-prefixed string, read (lossily decoded) since the file holds its bytes.
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let n = self.length(what)?;
        self.need(n, &|| format!("{} (a string of {n} bytes)", what()))?;
        let mut v = vec![0u8; n as usize];
        self.r.read_exact(&mut v)?;
        self.pos += n;
        Ok(String::from_utf8_lossy(&v).into_owned())
    }

    fn skip_string(&mut self, what: &dyn Fn() -> String) -> Result<()> {
        let n = self.length(what)?;
        self.skip(n, &|| format!("{} (a string of {n} bytes)", what()))
    }

    fn kind(&mut self, what: &dyn Fn() -> String) -> Result<Kind> {
        let id = self.u32(what)?;
        Kind::from_id(id).ok_or_else(|| {
            anyhow::anyhow!(
                "at byte {}: {}: unknown value type {id} (valid: 0-12)",
                self.pos - 4,
                what()
            )
        })
    }

    /// Skip one value, returning it when it is a non-negative integer of at most 32 bits (the
    /// only form `general.alignment` is read in).
    fn value(
        &mut self,
        kind: Kind,
        depth: usize,
        what: &dyn Fn() -> String,
    ) -> Result<Option<u64>> {
        match kind {
            Kind::U8 => Ok(Some(self.bytes::<1>(what)?[0] as u64)),
            Kind::I8 => Ok(u64::try_from(i8::from_le_bytes(self.bytes(what)?)).ok()),
            Kind::U16 => Ok(Some(u16::from_le_bytes(self.bytes(what)?) as u64)),
            Kind::I16 => Ok(u64::try_from(i16::from_le_bytes(self.bytes(what)?)).ok()),
            Kind::U32 => Ok(Some(self.u32(what)? as u64)),
            Kind::I32 => Ok(u64::try_from(i32::from_le_bytes(self.bytes(what)?)).ok()),
            Kind::Bool => match self.bytes::<1>(what)?[0] {
                0 | 1 => Ok(None),
                b => bail!(
                    "at byte {}: {}: boolean byte {b} (valid: 0 or 1)",
                    self.pos - 1,
                    what()
                ),
            },
            Kind::String => self.skip_string(what).map(|_| None),
            Kind::F32 | Kind::U64 | Kind::I64 | Kind::F64 => self
                .skip(kind.fixed_size().unwrap_or(8), what)
                .map(|_| None),
            Kind::Array => {
                if depth >= MAX_DEPTH {
                    bail!(
                        "at byte {}: {}: arrays nested deeper than {MAX_DEPTH}",
                        self.pos,
                        what()
                    );
                }
                let elem = self.kind(what)?;
                let n = self.length(what)?;
                // Every element takes at least its fixed size, a length prefix (strings) or a
                // type and a length (arrays): a count the file cannot hold fails here.
                let prefix = if self.v1 { 4 } else { 8 };
                let min = elem
                    .fixed_size()
                    .unwrap_or(prefix + u64::from(elem == Kind::Array) * 4);
                self.need(n.saturating_mul(min), &|| {
                    format!("{} (an array of {n} {elem:?} values)", what())
                })?;
                match elem.fixed_size() {
                    Some(size) => self.skip(n * size, what)?,
                    None => {
                        for i in 0..n {
                            self.value(elem, depth + 1, &|| format!("{}[{i}]", what()))?;
                        }
                    }
                }
                Ok(None)
            }
        }
    }
}

/// Check a GGUF header read from `r` (positioned at its start; the file has `len` bytes from
/// there). On success `r` is back at the start. Errors say which byte and which entry is at fault.
pub fn check<R: Read + Seek>(r: &mut R, len: u64) -> Result<()> {
    let start = r.stream_position()?;
    let mut buffered = std::io::BufReader::new(&mut *r);
    check_from(&mut buffered, len)?;
    drop(buffered);
    r.seek(SeekFrom::Start(start))?;
    Ok(())
}

fn check_from<R: Read>(r: &mut R, len: u64) -> Result<()> {
    let mut s = Scan {
        r,
        pos: 0,
        len,
        v1: false,
    };
    let magic = s.bytes::<4>(&|| "the magic number".into())?;
    if &magic != b"GGUF" {
        bail!(
            "not a GGUF file (magic {:?}, expected \"GGUF\")",
            String::from_utf8_lossy(&magic)
        );
    }
    let version = s.u32(&|| "the version".into())?;
    if !(1..=3).contains(&version) {
        bail!("GGUF version {version} is not supported (supported: 1, 2, 3)");
    }
    s.v1 = version == 1;
    let n_tensors = s.length(&|| "the tensor count".into())?;
    let n_meta = s.length(&|| "the metadata count".into())?;
    // A metadata entry takes at least a key length, a type and one byte; a tensor entry a name
    // length, a dimension count, a type and an offset.
    let prefix = if s.v1 { 4 } else { 8 };
    s.need(
        n_meta
            .saturating_mul(prefix + 5)
            .saturating_add(n_tensors.saturating_mul(prefix + 16)),
        &|| format!("the header's {n_tensors} tensors and {n_meta} metadata entries"),
    )?;
    let mut alignment = DEFAULT_ALIGNMENT;
    for i in 0..n_meta {
        let key = s.string(&|| format!("metadata entry {i}'s key"))?;
        let what = || format!("metadata `{key}`");
        let kind = s.kind(&what)?;
        let v = s.value(kind, 0, &what)?;
        if key == "general.alignment" {
            alignment = v.unwrap_or(DEFAULT_ALIGNMENT);
        }
    }
    if alignment == 0 || !alignment.is_power_of_two() {
        bail!("metadata `general.alignment` = {alignment}: must be a power of two, e.g. 32");
    }
    let mut tensors = Vec::new();
    let mut names = HashSet::new();
    for i in 0..n_tensors {
        let name = s.string(&|| format!("tensor {i}'s name"))?;
        let what = || format!("tensor `{name}`");
        let n_dims = s.u32(&what)?;
        if n_dims > MAX_DIMS {
            bail!("{}: {n_dims} dimensions (at most {MAX_DIMS})", what());
        }
        let mut elems: u64 = 1;
        for _ in 0..n_dims {
            let d = s.length(&what)?;
            elems = elems.checked_mul(d).ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: the shape's element count overflows 64 bits (corrupt shape)",
                    what()
                )
            })?;
        }
        let id = s.u32(&what)?;
        let dtype = ggml_dtype(id).ok_or_else(|| {
            anyhow::anyhow!("{}: unknown tensor type {id} (valid: {DTYPE_IDS})", what())
        })?;
        let offset = s.u64(&what)?;
        let block = dtype.block_size() as u64;
        if !elems.is_multiple_of(block) {
            bail!(
                "{}: {elems} elements is not a multiple of the {dtype:?} block size {block}",
                what()
            );
        }
        let bytes = (elems / block).saturating_mul(dtype.type_size() as u64);
        if !names.insert(name.clone()) {
            bail!("{}: defined twice", what());
        }
        tensors.push((name, offset, bytes, elems));
    }
    let data_start = s.pos.div_ceil(alignment).saturating_mul(alignment);
    for (name, offset, bytes, elems) in tensors {
        let end = data_start.saturating_add(offset).saturating_add(bytes);
        if end > len {
            bail!(
                "truncated: tensor `{name}` ({elems} elements, {bytes} bytes at data offset {offset}) \
                 ends at byte {end} but the file has {len} bytes"
            );
        }
    }
    Ok(())
}

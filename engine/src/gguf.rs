//! GGUF, llama.cpp's single-file model format: a header, typed metadata, a tensor table and
//! aligned tensor data (<https://github.com/ggml-org/ggml/blob/master/docs/gguf.md>).
//!
//! The reader trusts nothing in the file: every count, length, offset and size is checked against
//! the bytes actually present before anything is allocated or sliced, so a lying header gives an
//! error naming the file, never a panic or a huge allocation.
//!
//! Tensor types F32, F16, BF16, Q8_0, Q4_0 and Q4_1 are supported; any other type is reported by
//! name when its tensor is read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::TensorData;

use crate::{Error, Result};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Values per block of the 32-wide block-quantized types.
pub const QK: usize = 32;

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// Unsigned integer of any width.
    U64(u64),
    /// Signed integer of any width.
    I64(i64),
    /// Floating point number of any width.
    F64(f64),
    /// Boolean.
    Bool(bool),
    /// UTF-8 string.
    String(String),
    /// Array of values.
    Array(Vec<Value>),
}

impl Value {
    /// The value as an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U64(v) => Some(v),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, if it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F64(v) => Some(v),
            Self::U64(v) => Some(v as f64),
            Self::I64(v) => Some(v as f64),
            _ => None,
        }
    }

    /// The value as a string slice.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// The ggml tensor types this reader knows by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// 16-bit IEEE float.
    F16,
    /// bfloat16.
    Bf16,
    /// Blocks of 32: one f16 scale `d`, 32 signed bytes; `x = d * q`.
    Q8_0,
    /// Blocks of 32: one f16 scale `d`, 32 nibbles; `x = d * (q - 8)`.
    Q4_0,
    /// Blocks of 32: f16 scale `d` and minimum `m`, 32 nibbles; `x = d * q + m`.
    Q4_1,
    /// A type this reader cannot decode (its ggml id and name).
    Other(u32, &'static str),
}

impl GgmlType {
    fn from_id(id: u32) -> Self {
        let name = match id {
            0 => return Self::F32,
            1 => return Self::F16,
            2 => return Self::Q4_0,
            3 => return Self::Q4_1,
            8 => return Self::Q8_0,
            30 => return Self::Bf16,
            6 => "Q5_0",
            7 => "Q5_1",
            9 => "Q8_1",
            10 => "Q2_K",
            11 => "Q3_K",
            12 => "Q4_K",
            13 => "Q5_K",
            14 => "Q6_K",
            15 => "Q8_K",
            16..=23 | 29 => "IQ (importance) quantization",
            24 => "I8",
            25 => "I16",
            26 => "I32",
            27 => "I64",
            28 => "F64",
            34 => "TQ1_0",
            35 => "TQ2_0",
            39 => "MXFP4",
            _ => "unknown",
        };
        Self::Other(id, name)
    }

    /// Values per block and bytes per block; `None` for types this reader cannot decode.
    pub fn block(self) -> Option<(usize, usize)> {
        match self {
            Self::F32 => Some((1, 4)),
            Self::F16 | Self::Bf16 => Some((1, 2)),
            Self::Q8_0 => Some((QK, 2 + QK)),
            Self::Q4_0 => Some((QK, 2 + QK / 2)),
            Self::Q4_1 => Some((QK, 4 + QK / 2)),
            Self::Other(..) => None,
        }
    }

    /// The type's name as llama.cpp spells it.
    pub fn name(self) -> String {
        match self {
            Self::F32 => "F32".into(),
            Self::F16 => "F16".into(),
            Self::Bf16 => "BF16".into(),
            Self::Q8_0 => "Q8_0".into(),
            Self::Q4_0 => "Q4_0".into(),
            Self::Q4_1 => "Q4_1".into(),
            Self::Other(id, name) => format!("{name} (type id {id})"),
        }
    }
}

/// One entry of the tensor table.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    /// The tensor's name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` is the contiguous (innermost) one.
    pub dims: Vec<u64>,
    /// Element type.
    pub ggml_type: GgmlType,
    /// Byte offset from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Number of elements.
    pub fn len(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Whether the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The shape in row-major (PyTorch) order: ggml's dims reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed GGUF file held in memory.
pub struct GgufFile {
    path: PathBuf,
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata by key.
    pub metadata: BTreeMap<String, Value>,
    /// The tensor table, in file order.
    pub tensors: Vec<TensorInfo>,
    bytes: Vec<u8>,
    data_start: usize,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "GgufFile({}, v{}, {} keys, {} tensors)",
            self.path.display(),
            self.version,
            self.metadata.len(),
            self.tensors.len()
        )
    }
}

/// A bounds-checked little-endian cursor.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, message: impl Into<String>) -> Error {
        Error::format(self.path, message.into())
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let left = (self.bytes.len() - self.pos) as u64;
        if n > left {
            return Err(self.err(format!(
                "truncated: {what} needs {n} bytes at offset {} but only {left} remain",
                self.pos
            )));
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.bytes[start..self.pos])
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        let raw = self.take(len, what)?;
        String::from_utf8(raw.to_vec()).map_err(|_| self.err(format!("{what} is not UTF-8")))
    }

    /// Checks that `count` items of at least `min_size` bytes each can still fit, so a lying
    /// count cannot make us allocate more than the file holds.
    fn check_count(&self, count: u64, min_size: u64, what: &str) -> Result<usize> {
        let left = (self.bytes.len() - self.pos) as u64;
        if count.saturating_mul(min_size) > left {
            return Err(self.err(format!(
                "{what}: the header claims {count} entries but only {left} bytes remain \
                 (the file is truncated or damaged)"
            )));
        }
        Ok(count as usize)
    }

    fn value(&mut self, kind: u32, what: &str, depth: usize) -> Result<Value> {
        Ok(match kind {
            0 => Value::U64(u64::from(self.array::<1>(what)?[0])),
            1 => Value::I64(i64::from(self.array::<1>(what)?[0] as i8)),
            2 => Value::U64(u64::from(u16::from_le_bytes(self.array(what)?))),
            3 => Value::I64(i64::from(i16::from_le_bytes(self.array(what)?))),
            4 => Value::U64(u64::from(self.u32(what)?)),
            5 => Value::I64(i64::from(i32::from_le_bytes(self.array(what)?))),
            6 => Value::F64(f64::from(f32::from_le_bytes(self.array(what)?))),
            7 => match self.array::<1>(what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.err(format!("{what}: boolean byte {b} is not 0 or 1"))),
            },
            8 => Value::String(self.string(what)?),
            9 => {
                if depth > 4 {
                    return Err(self.err(format!("{what}: arrays nested too deeply")));
                }
                let inner = self.u32(what)?;
                let count = self.u64(what)?;
                let min = match inner {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    _ => 8,
                };
                let count = self.check_count(count, min, what)?;
                let mut items = Vec::with_capacity(count);
                for _ in 0..count {
                    items.push(self.value(inner, what, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64(what)?),
            11 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            other => return Err(self.err(format!("{what}: unknown metadata value type {other}"))),
        })
    }
}

impl GgufFile {
    /// Reads and validates a GGUF file.
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::parse(path, bytes)
    }

    /// Validates GGUF bytes; `path` only names the source in errors.
    pub fn parse(path: &Path, bytes: Vec<u8>) -> Result<Self> {
        let mut c = Cursor {
            bytes: &bytes,
            pos: 0,
            path,
        };
        if c.take(4, "the magic number")? != MAGIC {
            return Err(c.err("not a GGUF file (the first four bytes are not 'GGUF')"));
        }
        let version = c.u32("the version")?;
        if !(2..=3).contains(&version) {
            return Err(c.err(format!(
                "GGUF version {version} is not supported (2 and 3 are)"
            )));
        }
        let tensor_count = c.u64("the tensor count")?;
        let kv_count = c.u64("the metadata count")?;
        // A key-value pair takes at least 8 (key length) + 4 (type) + 1 bytes.
        let kv_count = c.check_count(kv_count, 13, "metadata")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..kv_count {
            let key = c.string("a metadata key")?;
            let kind = c.u32(&key)?;
            let value = c.value(kind, &key, 0)?;
            metadata.insert(key, value);
        }
        // A tensor entry takes at least 8 (name length) + 4 (rank) + 4 (type) + 8 (offset).
        let tensor_count = c.check_count(tensor_count, 24, "the tensor table")?;
        let mut tensors = Vec::with_capacity(tensor_count);
        for _ in 0..tensor_count {
            let name = c.string("a tensor name")?;
            let rank = c.u32(&name)?;
            if rank == 0 || rank > 4 {
                return Err(c.err(format!("tensor '{name}' has rank {rank} (1 to 4 allowed)")));
            }
            let mut dims = Vec::with_capacity(rank as usize);
            for _ in 0..rank {
                dims.push(c.u64(&name)?);
            }
            let ggml_type = GgmlType::from_id(c.u32(&name)?);
            let offset = c.u64(&name)?;
            tensors.push(TensorInfo {
                name,
                dims,
                ggml_type,
                offset,
            });
        }
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() && a <= 1 << 20 => a,
                _ => return Err(c.err(format!("general.alignment {v:?} is not a power of two"))),
            },
        };
        let data_start = (c.pos as u64).div_ceil(alignment) * alignment;
        let data_len = (bytes.len() as u64).saturating_sub(data_start);
        let file = Self {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            data_start: data_start as usize,
            bytes: Vec::new(),
        };
        for t in &file.tensors {
            let size = file.byte_size(t)?;
            if t.offset % alignment != 0 {
                return Err(file.err(format!(
                    "tensor '{}' starts at offset {}, which is not aligned to {alignment}",
                    t.name, t.offset
                )));
            }
            if t.offset.checked_add(size).is_none_or(|end| end > data_len) {
                return Err(file.err(format!(
                    "tensor '{}' ({} bytes at offset {}) points past the end of the file \
                     (the data section holds {data_len} bytes); the file is truncated or damaged",
                    t.name, size, t.offset
                )));
            }
        }
        Ok(Self { bytes, ..file })
    }

    fn err(&self, message: impl Into<String>) -> Error {
        Error::format(&self.path, message.into())
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes the tensor occupies; an error for undecodable types or shapes that do not fill
    /// whole blocks. Types this reader cannot decode still get a size when their block layout
    /// is unknown only at read time, so the table check stays strict for the known ones.
    fn byte_size(&self, t: &TensorInfo) -> Result<u64> {
        let Some((block, block_bytes)) = t.ggml_type.block() else {
            // Unknown layouts cannot be bounds-checked; they are rejected when read.
            return Ok(0);
        };
        let n = t
            .dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| self.err(format!("tensor '{}' has an absurd size", t.name)))?;
        if !t.dims[0].is_multiple_of(block as u64) {
            return Err(self.err(format!(
                "tensor '{}' has {} values per row, not a multiple of the {}-value blocks of {}",
                t.name,
                t.dims[0],
                block,
                t.ggml_type.name()
            )));
        }
        (n / block as u64)
            .checked_mul(block_bytes as u64)
            .ok_or_else(|| self.err(format!("tensor '{}' has an absurd size", t.name)))
    }

    /// A metadata value, or an error naming the missing key.
    pub fn get(&self, key: &str) -> Result<&Value> {
        self.metadata
            .get(key)
            .ok_or_else(|| self.err(format!("missing metadata key '{key}'")))
    }

    /// A required unsigned integer.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        let v = self.get(key)?;
        v.as_u64().ok_or_else(|| {
            self.err(format!(
                "metadata '{key}' is {v:?}, not an unsigned integer"
            ))
        })
    }

    /// A required number.
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        let v = self.get(key)?;
        v.as_f64()
            .ok_or_else(|| self.err(format!("metadata '{key}' is {v:?}, not a number")))
    }

    /// A required string.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.get(key)?;
        v.as_str()
            .ok_or_else(|| self.err(format!("metadata '{key}' is not a string")))
    }

    /// A required array of strings.
    pub fn get_strings(&self, key: &str) -> Result<Vec<&str>> {
        let v = self.get(key)?;
        v.as_array()
            .and_then(|a| a.iter().map(Value::as_str).collect::<Option<Vec<_>>>())
            .ok_or_else(|| self.err(format!("metadata '{key}' is not an array of strings")))
    }

    /// The entry of the tensor table with this name.
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor and its table entry.
    pub fn raw(&self, name: &str) -> Result<(&TensorInfo, &[u8])> {
        let t = self
            .tensor_info(name)
            .ok_or_else(|| self.err(format!("missing tensor '{name}'")))?;
        if t.ggml_type.block().is_none() {
            return Err(self.err(format!(
                "tensor '{name}' has type {}, which Cinder cannot read \
                 (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)",
                t.ggml_type.name()
            )));
        }
        let size = self.byte_size(t)? as usize;
        let start = self.data_start + t.offset as usize;
        Ok((t, &self.bytes[start..start + size]))
    }

    /// A tensor decoded to f32, in row-major shape (ggml's dims reversed).
    pub fn tensor_f32(&self, name: &str) -> Result<TensorData> {
        let (t, raw) = self.raw(name)?;
        Ok(TensorData::new(dequantize(t.ggml_type, raw), t.shape()))
    }
}

fn f16_at(raw: &[u8], i: usize) -> f32 {
    half::f16::from_le_bytes([raw[i], raw[i + 1]]).to_f32()
}

/// Decodes `raw` values of a supported type to f32. `raw` must hold whole blocks.
pub fn dequantize(kind: GgmlType, raw: &[u8]) -> Vec<f32> {
    match kind {
        GgmlType::F32 => raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        GgmlType::F16 => (0..raw.len() / 2).map(|i| f16_at(raw, 2 * i)).collect(),
        GgmlType::Bf16 => raw
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        GgmlType::Q8_0 => raw
            .chunks_exact(2 + QK)
            .flat_map(|b| {
                let d = f16_at(b, 0);
                b[2..].iter().map(move |&q| d * f32::from(q as i8))
            })
            .collect(),
        GgmlType::Q4_0 => raw
            .chunks_exact(2 + QK / 2)
            .flat_map(|b| {
                let d = f16_at(b, 0);
                let qs = &b[2..];
                let lo = qs.iter().map(move |&q| d * (f32::from(q & 0x0F) - 8.0));
                let hi = qs.iter().map(move |&q| d * (f32::from(q >> 4) - 8.0));
                lo.chain(hi)
            })
            .collect(),
        GgmlType::Q4_1 => raw
            .chunks_exact(4 + QK / 2)
            .flat_map(|b| {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                let qs = &b[4..];
                let lo = qs.iter().map(move |&q| d * f32::from(q & 0x0F) + m);
                let hi = qs.iter().map(move |&q| d * f32::from(q >> 4) + m);
                lo.chain(hi)
            })
            .collect(),
        GgmlType::Other(..) => Vec::new(),
    }
}

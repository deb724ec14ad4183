//! End-to-end and parity tests for Cinder; the tests live in `tests/tests/`, fixtures in
//! `tests/fixtures/`, and the scripts that regenerate fixtures in `tests/scripts/`.

use std::path::PathBuf;

/// The folder holding committed fixtures.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// A JSON file, or a panic naming it (for reference fixtures).
pub fn read_json(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A JSON array of token ids.
pub fn json_ids(value: &serde_json::Value) -> Vec<u32> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(serde_json::Value::as_u64)
                .map(|x| x as u32)
                .collect()
        })
        .unwrap_or_default()
}

/// The git-ignored cache where fetched corpora and weights live (`CINDER_CACHE` overrides it,
/// as it does for the `cinder` command).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("CINDER_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../cache"))
}

/// A small GGUF writer for building test files, valid and broken.
pub mod gguf {
    /// A metadata value to write.
    pub enum Meta {
        /// uint32
        U32(u32),
        /// float32
        F32(f32),
        /// string
        Str(String),
        /// array of strings
        Strs(Vec<String>),
        /// array of int32
        I32s(Vec<i32>),
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }

    /// A tensor to write: name, ggml dims (innermost first), ggml type id, raw bytes.
    pub struct RawTensor {
        /// Name.
        pub name: String,
        /// ggml dims, innermost first.
        pub dims: Vec<u64>,
        /// ggml type id (0 = F32, 8 = Q8_0, ...).
        pub kind: u32,
        /// Encoded data.
        pub data: Vec<u8>,
    }

    impl RawTensor {
        /// An F32 tensor from row-major values of `shape` (outermost first).
        pub fn f32(name: &str, shape: &[usize], values: &[f32]) -> Self {
            Self {
                name: name.to_string(),
                dims: shape.iter().rev().map(|&d| d as u64).collect(),
                kind: 0,
                data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            }
        }
    }

    /// Serialises a version-3 GGUF file with 32-byte alignment.
    pub fn write(meta: &[(&str, Meta)], tensors: &[RawTensor]) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((tensors.len() as u64).to_le_bytes());
        out.extend((meta.len() as u64).to_le_bytes());
        for (key, value) in meta {
            string(&mut out, key);
            match value {
                Meta::U32(v) => {
                    out.extend(4u32.to_le_bytes());
                    out.extend(v.to_le_bytes());
                }
                Meta::F32(v) => {
                    out.extend(6u32.to_le_bytes());
                    out.extend(v.to_le_bytes());
                }
                Meta::Str(s) => {
                    out.extend(8u32.to_le_bytes());
                    string(&mut out, s);
                }
                Meta::Strs(items) => {
                    out.extend(9u32.to_le_bytes());
                    out.extend(8u32.to_le_bytes());
                    out.extend((items.len() as u64).to_le_bytes());
                    for s in items {
                        string(&mut out, s);
                    }
                }
                Meta::I32s(items) => {
                    out.extend(9u32.to_le_bytes());
                    out.extend(5u32.to_le_bytes());
                    out.extend((items.len() as u64).to_le_bytes());
                    for v in items {
                        out.extend(v.to_le_bytes());
                    }
                }
            }
        }
        let mut offset = 0u64;
        let mut offsets = Vec::new();
        for t in tensors {
            offsets.push(offset);
            offset += (t.data.len() as u64).div_ceil(32) * 32;
        }
        for (t, off) in tensors.iter().zip(&offsets) {
            string(&mut out, &t.name);
            out.extend((t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(t.kind.to_le_bytes());
            out.extend(off.to_le_bytes());
        }
        while !out.len().is_multiple_of(32) {
            out.push(0);
        }
        for t in tensors {
            out.extend(&t.data);
            while !out.len().is_multiple_of(32) {
                out.push(0);
            }
        }
        out
    }
}

//! Transformer families for Cinder. Each family implements the engine's
//! [`CausalLm`](cinder_engine::lm::CausalLm) and reads and writes its upstream checkpoint layout.

pub mod auto;
pub mod blocks;
pub mod gpt2;
pub mod llama;
pub mod projection;
pub mod recipe;

/// Parses a `config.json` into a family's config, taking the value of every key the file leaves
/// out from `defaults` (Hugging Face omits keys that have their default value; Burn's config
/// derive would otherwise demand them all). A missing `required` key is reported by name.
pub(crate) fn parse_config<C: serde::de::DeserializeOwned + serde::Serialize>(
    path: &std::path::Path,
    text: &str,
    defaults: &C,
    required: &[&str],
    family: &str,
) -> cinder_engine::Result<C> {
    use cinder_engine::Error;
    let mut value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| Error::format(path, format!("not valid JSON: {e}")))?;
    let map = value
        .as_object_mut()
        .ok_or_else(|| Error::format(path, "not a JSON object"))?;
    if let Some(key) = required.iter().find(|k| !map.contains_key(**k)) {
        return Err(Error::format(
            path,
            format!("not a valid {family} config: missing required key '{key}'"),
        ));
    }
    if let Ok(serde_json::Value::Object(defaults)) = serde_json::to_value(defaults) {
        for (key, default) in defaults {
            if !default.is_null() {
                map.entry(key).or_insert(default);
            }
        }
    }
    serde_json::from_value(value)
        .map_err(|e| Error::format(path, format!("not a valid {family} config: {e}")))
}

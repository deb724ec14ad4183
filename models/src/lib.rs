//! Model families for Cinder. Each implements the engine's
//! [`LanguageModel`](cinder_engine::lm::LanguageModel) (the decoder-only ones also
//! [`Decoder`](cinder_engine::lm::Decoder); T5 hands out a decoder over its encoded prompt) and
//! reads and writes its upstream checkpoint layout.

pub mod auto;
pub mod bert;
pub mod blocks;
pub mod gpt2;
pub mod gpt2_ml;
pub mod llama;
pub mod poetry_vae;
pub mod projection;
pub mod recipe;
pub mod t5;

/// A family's config as Hugging Face writes its `config.json`: the fields, the `model_type` and
/// the `architectures` list; `drop_nulls` leaves out unset optional keys.
pub(crate) fn hf_config_json<C: serde::Serialize>(
    config: &C,
    model_type: &str,
    architecture: &str,
    drop_nulls: bool,
) -> cinder_engine::Result<serde_json::Value> {
    let mut value = serde_json::to_value(config)
        .map_err(|e| cinder_engine::Error::serialize(format!("the {model_type} config"), e))?;
    let map = value.as_object_mut().ok_or_else(|| {
        cinder_engine::Error::Internal(format!("the {model_type} config is not a JSON object"))
    })?;
    if drop_nulls {
        map.retain(|_, v| !v.is_null());
    }
    map.insert("model_type".into(), model_type.into());
    map.insert("architectures".into(), serde_json::json!([architecture]));
    Ok(value)
}

/// [`parse_config`], then the family's `check` of the values (its error named after `path`).
pub(crate) fn parse_checked<C: serde::de::DeserializeOwned + serde::Serialize>(
    path: &std::path::Path,
    text: &str,
    defaults: &C,
    required: &[&str],
    family: &str,
    check: impl FnOnce(&mut C) -> cinder_engine::Result<()>,
) -> cinder_engine::Result<C> {
    let mut config = parse_config(path, text, defaults, required, family)?;
    check(&mut config).map_err(|e| cinder_engine::Error::format(path, e.to_string()))?;
    Ok(config)
}

/// Reads the `config.json` at `path` and parses it with the family's `from_json`.
pub(crate) fn read_config_file<C>(
    path: &std::path::Path,
    from_json: fn(&std::path::Path, &str) -> cinder_engine::Result<C>,
) -> cinder_engine::Result<C> {
    let text = std::fs::read_to_string(path).map_err(|e| cinder_engine::Error::io(path, e))?;
    from_json(path, &text)
}

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

/// Checks that each of `values` (a config key and its value: a norm's epsilon, a rotary base)
/// is a positive finite number, naming the first that is not.
pub(crate) fn check_positive(values: &[(&str, f64)]) -> cinder_engine::Result<()> {
    match values.iter().find(|(_, v)| !(v.is_finite() && *v > 0.0)) {
        Some((key, v)) => Err(cinder_engine::Error::Config(format!(
            "{key} {v} must be a positive number"
        ))),
        None => Ok(()),
    }
}

/// Checks that a family's config can be built: `width` divides among `heads`, no size in `sizes`
/// is zero, every probability in `dropouts` is in [0, 1), and `activation` (the config key and
/// its value) names a GELU. Each problem is named by its `config.json` key.
pub(crate) fn check_shape(
    width: (&str, usize),
    heads: (&str, usize),
    sizes: &[(&str, usize)],
    dropouts: &[(&str, f64)],
    activation: (&str, &str),
) -> cinder_engine::Result<()> {
    let bad = |m: String| Err(cinder_engine::Error::Config(m));
    if heads.1 == 0 || !width.1.is_multiple_of(heads.1) {
        return bad(format!(
            "{} {} is not a multiple of {} {}",
            width.0, width.1, heads.0, heads.1
        ));
    }
    if let Some((name, _)) = sizes.iter().find(|(_, n)| *n == 0) {
        return bad(format!("{name} must be positive"));
    }
    if let Some((name, p)) = dropouts.iter().find(|(_, p)| !(0.0..1.0).contains(p)) {
        return bad(format!("{name} {p} is not in [0, 1)"));
    }
    if !matches!(activation.1, "gelu" | "gelu_new" | "gelu_pytorch_tanh") {
        return bad(format!("unsupported {} '{}'", activation.0, activation.1));
    }
    Ok(())
}

//! How settings are defined: once. Every setting is a field of a typed struct (an enum where it
//! picks among choices) with one doc line and one default, written as a clap attribute. The
//! struct's `Default` is what clap makes of an empty command line, so the command line, the
//! desktop and browser forms (which start from `Default`) and the JSON a run saves cannot
//! disagree.

use clap::{Args, Command, FromArgMatches, ValueEnum};

/// The defaults of a settings struct: what its flags parse to when none is given.
///
/// # Panics
/// Only if a settings struct declares a flag that is required and has no default, which the
/// unit tests of every settings struct would catch.
pub fn defaults<T: Args + FromArgMatches>() -> T {
    let command = T::augment_args(Command::new("defaults").no_binary_name(true));
    let parsed = command
        .try_get_matches_from(std::iter::empty::<String>())
        .and_then(|m| T::from_arg_matches(&m));
    match parsed {
        Ok(value) => value,
        Err(e) => panic!("a settings struct has a flag without a default: {e}"),
    }
}

/// Writes a choice the way the command line spells it (`cpu`, `bf16`).
pub fn fmt_value_enum<T: ValueEnum>(
    value: &T,
    f: &mut std::fmt::Formatter<'_>,
) -> std::fmt::Result {
    match value.to_possible_value() {
        Some(v) => f.pad(v.get_name()),
        None => Ok(()),
    }
}

/// Serialises a type as the string its `Display` writes and reads it back with `FromStr`, so a
/// setting looks the same in JSON as on the command line (`"bpe:2048"`, `"tang"`).
#[macro_export]
macro_rules! serde_as_string {
    ($t:ty) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(
                &self,
                s: S,
            ) -> std::result::Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(
                d: D,
            ) -> std::result::Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

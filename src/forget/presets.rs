//! Named presets: a method, its layers and its settings, chosen on a validation protocol and
//! stored with where and on what they were chosen (`presets/*.toml`, each file built into the
//! binary).
//! A preset expands into the flags it stands for: `--preset NAME` gives the method (unless
//! `--method` names the same one), the layers (unless `--layers` or `--localization` is given)
//! and `--set` entries placed before the user's own, so an explicit `--set` wins.

use crate::forget::config::{ForgetConfig, Method};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

// `BUILT_IN`: every `presets/NAME.toml`, collected by the build script.
include!(concat!(env!("OUT_DIR"), "/presets.rs"));

/// One preset.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    #[serde(default)]
    pub name: String,
    /// What it is for, in a sentence.
    pub description: String,
    /// The validation runs it was chosen on and what they measured (never test facts).
    pub chosen_on: String,
    pub method: String,
    /// MLP layers (`3-5`), for the model it was chosen on; absent when it takes a
    /// localization or the method's default.
    #[serde(default)]
    pub layers: Option<String>,
    /// Settings as `key=value`, as `--set` takes them.
    #[serde(default)]
    pub set: Vec<String>,
}

/// Every built-in preset, in name order.
pub fn all() -> Result<Vec<Preset>> {
    BUILT_IN.iter().map(|(n, t)| parse(n, t)).collect()
}

/// The preset called `name`; the error lists the ones there are.
pub fn find(name: &str) -> Result<Preset> {
    match BUILT_IN.iter().find(|(n, _)| *n == name) {
        Some((n, t)) => parse(n, t),
        None => bail!(
            "no preset `{name}`; the presets are: {} (see `unlearn presets`)",
            BUILT_IN
                .iter()
                .map(|(n, _)| *n)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A preset file's text, checked as a built-in one is (its method and settings resolve).
pub fn parse(name: &str, text: &str) -> Result<Preset> {
    let mut p: Preset =
        toml::from_str(text).with_context(|| format!("preset `{name}` (presets/{name}.toml)"))?;
    p.name = name.to_string();
    let m: Method = p
        .method
        .parse()
        .with_context(|| format!("preset `{name}`: method"))?;
    ForgetConfig::resolve(m, None, &p.set).with_context(|| format!("preset `{name}`: set"))?;
    Ok(p)
}

/// What a run's method, layers and settings become under a preset.
#[derive(Clone, Debug, PartialEq)]
pub struct Expanded {
    pub method: String,
    pub layers: Option<String>,
    pub sets: Vec<String>,
}

impl Expanded {
    /// A run's method, layers and settings: under `preset` when one is named (see
    /// [`Preset::expand`]), else its own `method`, which must then be given.
    pub fn resolve(
        preset: Option<&str>,
        method: Option<&str>,
        layers: Option<&str>,
        localized: bool,
        sets: &[String],
    ) -> Result<Expanded> {
        match (preset, method) {
            (Some(p), m) => find(p)?.expand(m, layers, localized, sets),
            (None, Some(m)) => {
                m.parse::<Method>()?;
                Ok(Expanded {
                    method: m.to_string(),
                    layers: layers.map(String::from),
                    sets: sets.to_vec(),
                })
            }
            (None, None) => bail!("give a method (or a preset)"),
        }
    }
}

impl Preset {
    /// Apply to a run's own choices: `method` (None when not given), `layers`, whether it has
    /// a localization, and its `--set` entries (which come after the preset's and so win).
    pub fn expand(
        &self,
        method: Option<&str>,
        layers: Option<&str>,
        localized: bool,
        sets: &[String],
    ) -> Result<Expanded> {
        if let Some(m) = method {
            let (a, b): (Method, Method) = (m.parse()?, self.method.parse()?);
            if a != b {
                bail!(
                    "--preset {} is a {} preset; --method {m} asks for another method (drop one of them)",
                    self.name,
                    self.method
                );
            }
        }
        Ok(Expanded {
            method: self.method.clone(),
            layers: match layers {
                Some(l) => Some(l.to_string()),
                None if localized => None,
                None => self.layers.clone(),
            },
            sets: self.set.iter().chain(sets).cloned().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_preset_parses_resolves_and_says_where_it_was_chosen() {
        let all = all().unwrap();
        assert_eq!(all.len(), BUILT_IN.len());
        for p in &all {
            // A preset changes something: its settings, or (the rule chose the method's
            // defaults) the layers they run on.
            assert!(
                !p.description.is_empty() && (!p.set.is_empty() || p.layers.is_some()),
                "{}",
                p.name
            );
            assert!(
                p.chosen_on.contains("validation"),
                "{}: a preset is chosen on validation runs and says so",
                p.name
            );
            assert!(
                !p.chosen_on.contains("test:"),
                "{}: chosen on test facts",
                p.name
            );
        }
    }

    #[test]
    fn a_preset_expands_under_the_users_own_flags() {
        let p = find("kuda-sports").unwrap();
        let e = p.expand(None, None, false, &[]).unwrap();
        assert_eq!(e.method, "kuda");
        assert_eq!(e.sets, p.set);
        assert_eq!(e.layers, p.layers);
        // The user's --set comes last (it wins), --layers and a localization replace the
        // preset's layers, the same method is accepted and another refused.
        let e = p
            .expand(Some("kuda"), Some("7-9"), false, &["steps=3".into()])
            .unwrap();
        assert_eq!(e.sets.last().unwrap(), "steps=3");
        assert_eq!(e.layers.as_deref(), Some("7-9"));
        assert_eq!(p.expand(None, None, true, &[]).unwrap().layers, None);
        let err = p.expand(Some("npo"), None, false, &[]).unwrap_err();
        assert!(err.to_string().contains("--preset kuda-sports"), "{err}");
        let err = find("nope").unwrap_err().to_string();
        assert!(err.contains("kuda-sports") && err.contains("nope"), "{err}");
    }
}

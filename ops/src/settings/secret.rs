//! A setting that must never be printed: bearer tokens.

use serde::{Deserialize, Serialize};

/// What masked secrets look like wherever settings are shown (WIRE.md §5.10).
pub const MASK: &str = "**********";

/// A secret string. `Debug` prints [`MASK`], so a logged `Settings` never shows it;
/// only [`Secret::expose`] gives the value, for the one comparison that needs it.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// A secret holding `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// Whether a value is configured (empty = not).
    pub fn is_set(&self) -> bool {
        !self.0.is_empty()
    }

    /// The value itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_set() {
            f.write_str(MASK)
        } else {
            f.write_str("\"\"")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), MASK);
        assert_eq!(format!("{:?}", Secret::default()), "\"\"");
        assert_eq!(s.expose(), "hunter2");
    }
}

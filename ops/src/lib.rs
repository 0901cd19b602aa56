//! Flotilla's operational leaf crate: settings (file + environment + flags), tracing
//! setup, and the Prometheus registry every crate registers its metrics in.

pub mod settings;
pub mod telemetry;

pub use settings::{Settings, SettingsError};

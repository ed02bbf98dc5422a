//! Hyperparameters: the trait `#[derive(Hyperparameters)]` implements, and the conversions
//! between field types and the [`Value`] tree.

use crate::value::Value;

/// Errors reading, building or overriding hyperparameters. Each names the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HparamError {
    /// A field without a default was not given.
    #[error("missing hyperparameter `{field}` (it has no default)")]
    Missing {
        /// Dotted field name.
        field: String,
    },
    /// A value had the wrong type.
    #[error("hyperparameter `{field}`: expected {expected}, found {found}")]
    Type {
        /// Dotted field name.
        field: String,
        /// The Rust/Python type that was expected.
        expected: String,
        /// What was found.
        found: String,
    },
    /// A `key=value` override named no field.
    #[error("unknown hyperparameter `{field}`; valid names: {}", valid.join(", "))]
    Unknown {
        /// The name given.
        field: String,
        /// Every valid dotted name.
        valid: Vec<String>,
    },
    /// A `key=value` override string could not be parsed.
    #[error("hyperparameter `{field}`: cannot parse {value:?} as {expected}")]
    Parse {
        /// Dotted field name.
        field: String,
        /// The string given.
        value: String,
        /// The type expected.
        expected: String,
    },
    /// An override was not of the form `key=value`.
    #[error("override {0:?} is not of the form key=value")]
    Syntax(String),
}

/// Description of one hyperparameter field, for `--help`-style listings.
#[derive(Debug, Clone, PartialEq)]
pub struct HparamField {
    /// The saved (possibly renamed) dotted name.
    pub name: String,
    /// The Rust type, as written.
    pub ty: &'static str,
    /// The doc comment.
    pub doc: &'static str,
    /// The default, rendered, if any.
    pub default: Option<String>,
}

/// A config struct whose fields are saved as a checkpoint's `hyper_parameters`.
/// Derive it with `#[derive(Hyperparameters)]`.
pub trait Hyperparameters: Sized + Clone + 'static {
    /// The fields as a `dict` (skipped fields left out).
    fn to_value(&self) -> Value;
    /// Builds from a (possibly partial) dict; missing fields take their defaults.
    fn from_value(value: &Value) -> Result<Self, HparamError>;
    /// Applies one string override to the field at `key` (dotted for nested structs).
    fn set_str(&mut self, key: &str, value: &str) -> Result<(), HparamError>;
    /// Every field, in declaration order (nested ones dotted).
    fn fields() -> Vec<HparamField>;
}

/// A type that can be a hyperparameter field (implemented for scalars, strings, paths,
/// `Option`, `Vec`, nested [`Hyperparameters`] and unit enums by the derive).
pub trait HparamValue: Sized {
    /// The type's name for error messages (`"i64"`, `"list of f64"`).
    fn type_name() -> String;
    /// Converts to the value tree.
    fn to_value(&self) -> Value;
    /// Converts from the value tree; `field` names the field for errors.
    fn from_value(value: &Value, field: &str) -> Result<Self, HparamError>;
    /// Parses an override string; `field` names the field for errors.
    fn parse_str(s: &str, field: &str) -> Result<Self, HparamError>;
}

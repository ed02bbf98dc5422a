//! Validation that needs the whole model: defaults for skipped fields, unique names, one
//! `#[hparams]` field, consistent `#[state]` keys.

use crate::ast::{HparamsInput, ModuleInput, Role};
use crate::ctxt::Ctxt;
use proc_macro2::TokenStream;
use std::collections::HashSet;

/// Reports the second and later uses of a name, at the tokens that produced it.
fn unique_names<'a>(
    cx: &Ctxt,
    what: &str,
    names: impl Iterator<Item = (&'a str, &'a TokenStream)>,
) {
    let mut seen = HashSet::new();
    for (name, tokens) in names {
        if !seen.insert(name) {
            cx.error_spanned(tokens, format!("duplicate {what} name `{name}`"));
        }
    }
}

/// Checks a config or unit enum.
pub fn hparams(cx: &Ctxt, input: &HparamsInput) {
    match input {
        HparamsInput::Struct { fields, .. } => {
            for f in fields {
                if let (Some(skip), None) = (&f.attrs.skip, &f.attrs.default) {
                    cx.error_spanned(
                        skip,
                        "`skip` needs a `default`: a skipped field is never saved, so loading must build it \
                         (`#[hparam(skip, default = ...)]`)",
                    );
                }
            }
            unique_names(
                cx,
                "hyperparameter",
                fields.iter().map(|f| (f.name.as_str(), &f.name_tokens)),
            );
        }
        HparamsInput::Enum { variants, .. } => unique_names(
            cx,
            "variant",
            variants.iter().map(|v| (v.name.as_str(), &v.name_tokens)),
        ),
    }
}

/// Checks a module.
pub fn module(cx: &Ctxt, input: &ModuleInput) {
    let mut hparams_seen = false;
    for f in &input.fields {
        let a = &f.attrs;
        match &f.role {
            Role::Hparams(marker) => {
                if hparams_seen {
                    cx.error_spanned(marker, "only one field can be `#[hparams]`");
                }
                hparams_seen = true;
                for p in [&a.skip, &a.buffer].into_iter().flatten() {
                    cx.error_spanned(
                        p,
                        "`#[state(...)]` does not apply to the `#[hparams]` field",
                    );
                }
                if let Some(r) = &a.rename {
                    cx.error_spanned(
                        r,
                        "`#[state(...)]` does not apply to the `#[hparams]` field",
                    );
                }
            }
            Role::Skip => {
                for p in a.buffer.iter() {
                    cx.error_spanned(p, "`buffer` cannot be combined with `skip`");
                }
                if let Some(r) = &a.rename {
                    cx.error_spanned(r, "`rename` cannot be combined with `skip`");
                }
            }
            Role::State { buffer } => {
                if let (None, Some(p)) = (buffer, &a.persistent) {
                    cx.error_spanned(p, "`persistent` applies to buffers: write `#[state(buffer, persistent = false)]`");
                }
            }
        }
    }
    unique_names(
        cx,
        "state",
        input
            .fields
            .iter()
            .filter(|f| matches!(f.role, Role::State { .. }))
            .map(|f| (f.name.as_str(), &f.name_tokens)),
    );
}

//! Procedural macros for `lightning-core`; use them through `lightning_core::prelude`.
//!
//! Each macro runs three stages: [`ast`] parses the input into a model (with [`attr`] reading
//! the helper attributes), [`check`] validates what needs the whole model, and `expand_*`
//! generates code that calls the runtime through `::lightning_core::__private`. Every
//! misuse found is reported at once, each on the offending token.
use proc_macro::TokenStream;

mod ast;
mod attr;
mod bounds;
mod check;
mod ctxt;
mod expand_hparams;
mod expand_module;

/// Derives `lightning_core::Hyperparameters` for a struct with named fields, or
/// `HparamValue` for an enum of unit variants (stored as the variant's name string).
///
/// Field attributes: `#[hparam(default = <expr>)]`, `#[hparam(skip)]` (never saved; needs a
/// default), `#[hparam(rename = "name")]`. Doc comments become field descriptions. See
/// `lightning_core::hparams` for the runtime side.
#[proc_macro_derive(Hyperparameters, attributes(hparam))]
pub fn derive_hyperparameters(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as syn::DeriveInput);
    expand_hparams::derive(&input).into()
}

/// Implements `HasHparams` and `Traverse` for a model struct with named fields.
///
/// Field attributes: `#[hparams]` (at most one: the config), `#[state(skip)]`,
/// `#[state(rename = "name")]`, `#[state(buffer)]` and `#[state(buffer, persistent = false)]`.
#[proc_macro_attribute]
pub fn lightning_module(args: TokenStream, input: TokenStream) -> TokenStream {
    expand_module::expand(args.into(), input.into()).into()
}

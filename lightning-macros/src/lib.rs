//! Procedural macros for `lightning-core`. Use them through `lightning_core::prelude`.
//! (Skeleton: the macros helper fills in `#[derive(Hyperparameters)]` and `#[lightning_module]`.)
use proc_macro::TokenStream;

/// Derives `lightning_core::Hyperparameters` for a struct with named fields.
#[proc_macro_derive(Hyperparameters, attributes(hparam))]
pub fn derive_hyperparameters(_input: TokenStream) -> TokenStream {
    TokenStream::new()
}

/// Implements state traversal and hyperparameter access for a model struct.
#[proc_macro_attribute]
pub fn lightning_module(_args: TokenStream, input: TokenStream) -> TokenStream {
    input
}

//! Where-clauses on the fields' types, shared by both macros.

use proc_macro2::Span;
use quote::ToTokens;
use syn::spanned::Spanned;
use syn::{Generics, Ident, Type};

/// `generics` plus `Field: ::lightning_core::__private::<bound>` for every field type. A type
/// without the trait is then reported once, on its field, however many generated calls use
/// it (rustc checks the impl's where-clause, and the bodies assume it). The bound's tokens
/// carry the span of the type's last token, so the error underlines the whole type.
pub fn per_field<'a>(
    generics: &Generics,
    types: impl IntoIterator<Item = &'a Type>,
    bound: &str,
) -> Generics {
    let mut g = generics.clone();
    let wc = g.make_where_clause();
    for ty in types {
        let end: Span = ty
            .to_token_stream()
            .into_iter()
            .last()
            .map_or_else(|| ty.span(), |t| t.span());
        let bound = Ident::new(bound, end);
        wc.predicates.push(syn::parse_quote_spanned!(end=>
            #ty: ::lightning_core::__private::#bound
        ));
    }
    g
}

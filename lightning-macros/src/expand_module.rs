//! Code generation for `#[lightning_module]`: `HasHparams` and `Traverse`.

use crate::ast::{ModuleInput, Role};
use crate::bounds;
use crate::check;
use crate::ctxt::Ctxt;
use proc_macro2::{TokenStream, TokenTree};
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, Generics, Type};

const HELPERS: [&str; 2] = ["hparams", "state"];

/// Entry point: the struct re-emitted without our helper attributes, plus the impls (or the
/// errors and placeholder impls).
pub fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let input: DeriveInput = match syn::parse2(item.clone()) {
        Ok(i) => i,
        Err(e) => {
            let mut out = item;
            out.extend(e.into_compile_error());
            return out;
        }
    };
    let cx = Ctxt::default();
    if !args.is_empty() {
        cx.error_spanned(&args, "`#[lightning_module]` takes no arguments");
    }
    let parsed = ModuleInput::parse(&cx, &input);
    if let Some(m) = &parsed {
        check::module(&cx, m);
    }
    let mut out = strip_helpers(&input).into_token_stream();
    match (cx.check(), parsed) {
        (Ok(()), Some(m)) => out.extend(impls(&m)),
        (Err(e), m) => {
            out.extend(e.into_compile_error());
            if let Some(m) = m {
                out.extend(fallback(&m));
            }
        }
        (Ok(()), None) => {}
    }
    out
}

/// The input with `#[hparams]` and `#[state(...)]` removed from every field.
fn strip_helpers(input: &DeriveInput) -> DeriveInput {
    let mut out = input.clone();
    let strip = |fields: &mut Fields| {
        for f in fields.iter_mut() {
            f.attrs
                .retain(|a| !HELPERS.iter().any(|h| a.path().is_ident(h)));
        }
    };
    match &mut out.data {
        Data::Struct(s) => strip(&mut s.fields),
        Data::Enum(e) => e.variants.iter_mut().for_each(|v| strip(&mut v.fields)),
        Data::Union(u) => {
            for f in u.fields.named.iter_mut() {
                f.attrs
                    .retain(|a| !HELPERS.iter().any(|h| a.path().is_ident(h)));
            }
        }
    }
    out
}

/// Whether `ty` mentions one of the struct's type parameters.
fn mentions_param(ty: &Type, generics: &Generics) -> bool {
    fn walk(ts: TokenStream, names: &[String]) -> bool {
        ts.into_iter().any(|t| match t {
            TokenTree::Ident(i) => names.contains(&i.to_string()),
            TokenTree::Group(g) => walk(g.stream(), names),
            _ => false,
        })
    }
    let names: Vec<String> = generics
        .type_params()
        .map(|p| p.ident.to_string())
        .collect();
    !names.is_empty() && walk(ty.to_token_stream(), &names)
}

/// `generics` plus `where Ty: Bound` for each given type that mentions a type parameter.
fn with_bounds<'a>(
    generics: &Generics,
    types: impl Iterator<Item = &'a Type>,
    bound: TokenStream,
) -> Generics {
    let mut g = generics.clone();
    let wc = g.make_where_clause();
    for ty in types.filter(|t| mentions_param(t, generics)) {
        wc.predicates.push(syn::parse_quote!(#ty: #bound));
    }
    g
}

fn impls(m: &ModuleInput) -> TokenStream {
    let p = quote!(::lightning_core::__private);
    let ident = m.ident;

    let hp_field = m.fields.iter().find(|f| matches!(f.role, Role::Hparams(_)));
    let hp_generics = with_bounds(
        m.generics,
        hp_field.map(|f| f.ty).into_iter(),
        quote!(#p::Hyperparameters),
    );
    let has_hparams = {
        let (impl_g, ty_g, where_c) = hp_generics.split_for_impl();
        let (ty, body) = match hp_field {
            Some(f) => {
                let (ty, member) = (f.ty, f.member);
                (quote_spanned!(ty.span()=> #ty), quote!(&self.#member))
            }
            None => (quote!(#p::NoHparams), quote!(&#p::NoHparams)),
        };
        quote! {
            #[automatically_derived]
            impl #impl_g #p::HasHparams for #ident #ty_g #where_c {
                type Hparams = #ty;
                fn hparams(&self) -> &Self::Hparams {
                    #body
                }
            }
        }
    };

    let traversed: Vec<_> = m
        .fields
        .iter()
        .filter_map(|f| match f.role {
            Role::State { buffer } => Some((f, buffer)),
            _ => None,
        })
        .collect();
    // One error per field whose type has no tensors, on the field.
    let tr_generics =
        bounds::per_field(m.generics, traversed.iter().map(|(f, _)| f.ty), "Traverse");
    let (impl_g, ty_g, where_c) = tr_generics.split_for_impl();
    let (probe_g, _, probe_where) = m.generics.split_for_impl();
    let role = |b: &Option<bool>| match b {
        Some(persistent) => quote!(#p::FieldRole::Buffer { persistent: #persistent }),
        None => quote!(#p::FieldRole::AsReported),
    };
    // Spanned at the field type, so a type without `Traverse` is reported on the field.
    let visits = traversed.iter().map(|(f, b)| {
        let (ty, member, name, role) = (f.ty, f.member, &f.name, role(b));
        quote_spanned! {ty.span()=>
            <#ty as #p::Traverse>::visit_field(&self.#member, &#p::join_name(__prefix, #name), #role, __pass, __f);
        }
    });
    let visits_mut = traversed.iter().map(|(f, b)| {
        let (ty, member, name, role) = (f.ty, f.member, &f.name, role(b));
        quote_spanned! {ty.span()=>
            <#ty as #p::Traverse>::visit_field_mut(&mut self.#member, &#p::join_name(__prefix, #name), #role, __pass, __f);
        }
    });
    // Without an `#[hparams]` field, a config among the traversed fields was most likely
    // meant to be it: say so on that field (the probe compiles for every other type).
    let probes = traversed
        .iter()
        .filter(|_| hp_field.is_none())
        .map(|(f, _)| {
            let ty = f.ty;
            // Every token at the field type, so the error is reported there.
            quote_spanned! {ty.span()=>
                ::lightning_core::__private::assert_not_config(
                    ::lightning_core::__private::Probe::<#ty>::NEW.kind(),
                );
            }
        });
    let probe_fn = hp_field.is_none().then(|| {
        quote! {
            #[allow(dead_code, unused_imports, clippy::all)]
            fn __lightning_hparams_probe #probe_g () #probe_where {
                use #p::ProbeFallback as _;
                #(#probes)*
            }
        }
    });
    let children = traversed.iter().map(|(f, _)| {
        let (member, name) = (f.member, &f.name);
        quote!(__f(#name, &self.#member);)
    });
    quote! {
        #[allow(non_local_definitions, clippy::all)]
        const _: () = {
            #has_hparams

            #probe_fn

            #[automatically_derived]
            #[allow(private_bounds)]
            impl #impl_g #p::Traverse for #ident #ty_g #where_c {
                fn visit(
                    &self,
                    __prefix: &str,
                    __f: &mut dyn ::core::ops::FnMut(&str, &#p::tch::Tensor, #p::TensorKind),
                ) {
                    // PyTorch's order: own parameters, own buffers, then submodules.
                    for __pass in #p::Pass::IN_ORDER {
                        #(#visits)*
                    }
                }
                fn visit_mut(
                    &mut self,
                    __prefix: &str,
                    __f: &mut dyn ::core::ops::FnMut(&str, &mut #p::tch::Tensor, #p::TensorKind),
                ) {
                    for __pass in #p::Pass::IN_ORDER {
                        #(#visits_mut)*
                    }
                }
                fn visit_children(
                    &self,
                    __f: &mut dyn ::core::ops::FnMut(&str, &dyn #p::Traverse),
                ) {
                    #(#children)*
                }
            }
        };
    }
}

/// Placeholder impls after an error, so uses of the module do not add more errors.
fn fallback(m: &ModuleInput) -> TokenStream {
    let p = quote!(::lightning_core::__private);
    let ident = m.ident;
    let (impl_g, ty_g, where_c) = m.generics.split_for_impl();
    quote! {
        #[allow(non_local_definitions, clippy::all)]
        const _: () = {
            impl #impl_g #p::HasHparams for #ident #ty_g #where_c {
                type Hparams = #p::NoHparams;
                fn hparams(&self) -> &Self::Hparams { ::core::unreachable!() }
            }
            impl #impl_g #p::Traverse for #ident #ty_g #where_c {
                fn visit(&self, _: &str, _: &mut dyn ::core::ops::FnMut(&str, &#p::tch::Tensor, #p::TensorKind)) {}
                fn visit_mut(&mut self, _: &str, _: &mut dyn ::core::ops::FnMut(&str, &mut #p::tch::Tensor, #p::TensorKind)) {}
            }
        };
    }
}

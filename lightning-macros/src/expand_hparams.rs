//! Code generation for `#[derive(Hyperparameters)]`.

use crate::ast::{HField, HVariant, HparamsInput};
use crate::check;
use crate::ctxt::Ctxt;
use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::{DeriveInput, Generics, Ident};

/// Entry point: parse, check, expand; on error, the errors plus a stub impl.
pub fn derive(input: &DeriveInput) -> TokenStream {
    let cx = Ctxt::default();
    let parsed = HparamsInput::parse(&cx, input);
    if let Some(p) = &parsed {
        check::hparams(&cx, p);
    }
    match (cx.check(), parsed) {
        (Ok(()), Some(p)) => expand(&p),
        (Err(e), p) => {
            let mut out = e.into_compile_error();
            if let Some(p) = p {
                out.extend(fallback(&p));
            }
            out
        }
        (Ok(()), None) => TokenStream::new(),
    }
}

/// The `Type` in a form fit for messages: `Vec<i64>`, not `Vec < i64 >`.
pub fn type_string(ty: &impl ToTokens) -> String {
    let s = ty.to_token_stream().to_string();
    s.replace(" < ", "<")
        .replace("< ", "<")
        .replace(" <", "<")
        .replace(" >", ">")
        .replace(" ,", ",")
        .replace(" :: ", "::")
        .replace(":: ", "::")
        .replace("& ", "&")
}

/// Adds `T: HparamValue + Clone + 'static` to every type parameter (a config is `Clone`).
fn bounded(generics: &Generics) -> Generics {
    let mut g = generics.clone();
    for p in g.type_params_mut() {
        p.bounds
            .push(syn::parse_quote!(::lightning_core::__private::HparamValue));
        p.bounds.push(syn::parse_quote!(::core::clone::Clone));
        p.bounds.push(syn::parse_quote!('static));
    }
    g
}

fn wrap(body: TokenStream) -> TokenStream {
    quote! {
        #[allow(non_local_definitions, clippy::all)]
        const _: () = {
            #body
        };
    }
}

fn expand(input: &HparamsInput) -> TokenStream {
    match input {
        HparamsInput::Struct {
            ident,
            generics,
            fields,
        } => wrap(expand_struct(ident, generics, fields)),
        HparamsInput::Enum {
            ident,
            generics,
            variants,
        } => wrap(expand_enum(ident, generics, variants)),
    }
}

/// The expression giving a field's value when it is absent.
fn absent(f: &HField) -> TokenStream {
    let ty = f.ty;
    let name = &f.name;
    match &f.attrs.default {
        Some(syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(s),
            ..
        })) => quote_spanned! {s.span()=>
            { let __d: #ty = ::core::convert::From::from(#s); __d }
        },
        Some(e) => quote_spanned! {e.span()=> { let __d: #ty = #e; __d } },
        None => quote_spanned! {ty.span()=>
            <#ty as ::lightning_core::__private::HparamValue>::from_missing(#name)?
        },
    }
}

fn expand_struct(ident: &Ident, generics: &Generics, fields: &[HField]) -> TokenStream {
    let p = quote!(::lightning_core::__private);
    let g = bounded(generics);
    let (impl_g, ty_g, where_c) = g.split_for_impl();
    let all_names: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();

    let to_value = fields.iter().filter(|f| f.attrs.skip.is_none()).map(|f| {
        let (m, ty, name) = (f.member, f.ty, &f.name);
        quote_spanned! {ty.span()=>
            __d.insert(#p::Key::Str(#p::String::from(#name)),
                <#ty as #p::HparamValue>::to_value(&self.#m));
        }
    });
    let from_value = fields.iter().map(|f| {
        let (m, ty, name) = (f.member, f.ty, &f.name);
        let absent = absent(f);
        quote_spanned! {ty.span()=>
            #m: match __r.get(#name) {
                #p::Option::Some(__x) => <#ty as #p::HparamValue>::from_value(__x, #name)?,
                #p::Option::None => #absent,
            },
        }
    });
    let set_arms = fields.iter().map(|f| {
        let (m, ty, name) = (f.member, f.ty, &f.name);
        quote_spanned! {ty.span()=>
            (#name, #p::Option::None) => {
                self.#m = <#ty as #p::HparamValue>::parse_str(__value, #name)?;
                #p::Result::Ok(())
            }
            (#name, #p::Option::Some(__rest)) => {
                <#ty as #p::HparamValue>::set_nested(&mut self.#m, __rest, __value, #name)
            }
        }
    });
    let field_list = fields.iter().map(|f| {
        let (ty, name, doc) = (f.ty, &f.name, &f.doc);
        let ty_s = type_string(ty);
        let default = match &f.attrs.default {
            Some(e) => {
                let s = type_string(e);
                quote!(#p::Option::Some(#p::String::from(#s)))
            }
            None => quote!(#p::Option::None),
        };
        quote! {
            let __sub = <#ty as #p::HparamValue>::nested_fields();
            if __sub.is_empty() {
                __f.push(#p::HparamField {
                    name: #p::String::from(#name),
                    ty: #ty_s,
                    doc: #doc,
                    default: #default,
                });
            } else {
                for mut __s in __sub {
                    __s.name = #p::join_name(#name, &__s.name);
                    __f.push(__s);
                }
            }
        }
    });

    quote! {
        #[automatically_derived]
        impl #impl_g #p::Hyperparameters for #ident #ty_g #where_c {
            fn to_value(&self) -> #p::Value {
                let mut __d = #p::Dict::new();
                #(#to_value)*
                #p::Value::Dict(__d)
            }
            fn from_value(__v: &#p::Value) -> #p::Result<Self, #p::HparamError> {
                let __r = #p::DictReader::new::<Self>(__v, &[#(#all_names),*])?;
                #p::Result::Ok(Self { #(#from_value)* })
            }
            fn set_str(&mut self, __key: &str, __value: &str) -> #p::Result<(), #p::HparamError> {
                let (__head, __rest) = match __key.split_once('.') {
                    #p::Option::Some((__h, __r)) => (__h, #p::Option::Some(__r)),
                    #p::Option::None => (__key, #p::Option::None),
                };
                match (__head, __rest) {
                    #(#set_arms)*
                    _ => #p::Result::Err(#p::HparamError::Unknown {
                        field: #p::String::from(__key),
                        valid: <Self as #p::Hyperparameters>::fields()
                            .into_iter()
                            .map(|__f| __f.name)
                            .collect(),
                    }),
                }
            }
            fn fields() -> #p::Vec<#p::HparamField> {
                let mut __f = #p::Vec::new();
                #({ #field_list })*
                __f
            }
        }
    }
}

fn expand_enum(ident: &Ident, generics: &Generics, variants: &[HVariant]) -> TokenStream {
    let p = quote!(::lightning_core::__private);
    let (impl_g, ty_g, where_c) = generics.split_for_impl();
    let idents: Vec<&Ident> = variants.iter().map(|v| v.ident).collect();
    let names: Vec<&str> = variants.iter().map(|v| v.name.as_str()).collect();
    let type_name = format!(
        "one of {}",
        names
            .iter()
            .map(|n| format!("{n:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    quote! {
        #[automatically_derived]
        impl #impl_g #p::HparamValue for #ident #ty_g #where_c {
            fn type_name() -> #p::String {
                #p::String::from(#type_name)
            }
            fn to_value(&self) -> #p::Value {
                #p::Value::Str(#p::String::from(match self { #(Self::#idents => #names,)* }))
            }
            fn from_value(__v: &#p::Value, __field: &str) -> #p::Result<Self, #p::HparamError> {
                match __v.as_str() {
                    #(#p::Option::Some(#names) => #p::Result::Ok(Self::#idents),)*
                    _ => #p::Result::Err(#p::type_error::<Self>(__field, __v)),
                }
            }
            fn parse_str(__s: &str, __field: &str) -> #p::Result<Self, #p::HparamError> {
                match __s.trim() {
                    #(#names => #p::Result::Ok(Self::#idents),)*
                    _ => #p::Result::Err(#p::parse_error::<Self>(__field, __s)),
                }
            }
        }
    }
}

/// A stub impl so that one misuse gives one error, not a cascade at every use site.
fn fallback(input: &HparamsInput) -> TokenStream {
    let p = quote!(::lightning_core::__private);
    let span = Span::call_site();
    let body = match input {
        HparamsInput::Struct {
            ident, generics, ..
        } => {
            let g = bounded(generics);
            let (impl_g, ty_g, where_c) = g.split_for_impl();
            quote_spanned! {span=>
                impl #impl_g #p::Hyperparameters for #ident #ty_g #where_c {
                    fn to_value(&self) -> #p::Value { ::core::unreachable!() }
                    fn from_value(_: &#p::Value) -> #p::Result<Self, #p::HparamError> { ::core::unreachable!() }
                    fn set_str(&mut self, _: &str, _: &str) -> #p::Result<(), #p::HparamError> { ::core::unreachable!() }
                    fn fields() -> #p::Vec<#p::HparamField> { ::core::unreachable!() }
                }
            }
        }
        HparamsInput::Enum {
            ident, generics, ..
        } => {
            let (impl_g, ty_g, where_c) = generics.split_for_impl();
            quote_spanned! {span=>
                impl #impl_g #p::HparamValue for #ident #ty_g #where_c {
                    fn type_name() -> #p::String { ::core::unreachable!() }
                    fn to_value(&self) -> #p::Value { ::core::unreachable!() }
                    fn from_value(_: &#p::Value, _: &str) -> #p::Result<Self, #p::HparamError> { ::core::unreachable!() }
                    fn parse_str(_: &str, _: &str) -> #p::Result<Self, #p::HparamError> { ::core::unreachable!() }
                }
            }
        }
    };
    wrap(body)
}

//! Code generation for `#[derive(Hyperparameters)]`.

use crate::ast::{HField, HVariant, HparamsInput};
use crate::bounds;
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
            no_default,
        } => {
            let mut out = expand_struct(ident, generics, fields);
            if !no_default {
                out.extend(expand_default(ident, generics, fields));
            }
            wrap(out)
        }
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

/// `Default` with every field's `default`, when all fields have one.
fn expand_default(ident: &Ident, generics: &Generics, fields: &[HField]) -> TokenStream {
    if fields.iter().any(|f| f.attrs.default.is_none()) {
        return TokenStream::new();
    }
    let g = bounded(generics);
    let (impl_g, ty_g, where_c) = g.split_for_impl();
    let inits = fields.iter().map(|f| {
        let (m, value) = (f.member, absent(f));
        quote!(#m: #value,)
    });
    quote! {
        #[automatically_derived]
        impl #impl_g ::core::default::Default for #ident #ty_g #where_c {
            fn default() -> Self {
                Self { #(#inits)* }
            }
        }
    }
}

/// The range as written, for messages: `0.0..=1.0`.
fn range_string(r: &syn::ExprRange) -> String {
    type_string(r)
        .replace(" ..= ", "..=")
        .replace(" .. ", "..")
        .replace(" ..", "..")
        .replace(".. ", "..")
}

/// The checks of one field's rules on `__h.member`, run when `__only` is `None` or names it.
fn field_checks(f: &HField) -> TokenStream {
    let p = quote!(::lightning_core::__private);
    let (m, ty, name) = (f.member, f.ty, &f.name);
    // The field respanned to the rule, so a rule that does not fit the type is reported on
    // the rule alone.
    let at = |span: Span| {
        let mut m = m.clone();
        m.set_span(span);
        m
    };
    let range = f.attrs.range.as_ref().map(|r| {
        let rule = range_string(r);
        let m = at(r.span());
        quote_spanned! {r.span()=>
            ::lightning_core::__private::check_range(#name, &__h.#m, #r, #rule)?;
        }
    });
    let validate = f.attrs.validate.as_ref().map(|path| {
        let path_s = type_string(path);
        let m = at(path.span());
        quote_spanned! {path.span()=>
            ::lightning_core::__private::check_with(#name, &__h.#m, #path(&__h.#m), #path_s)?;
        }
    });
    quote! {
        if __only.is_none_or(|__n| __n == #name) {
            #range
            #validate
            <#ty as #p::HparamValue>::validate_field(&__h.#m, #name)?;
        }
    }
}

fn expand_struct(ident: &Ident, generics: &Generics, fields: &[HField]) -> TokenStream {
    let p = quote!(::lightning_core::__private);
    let g = bounded(generics);

    // One error per unsupported field type, on the field.
    let field_bounds = bounds::per_field(&g, fields.iter().map(|f| f.ty), "HparamValue");
    let (impl_g, ty_g, where_c) = field_bounds.split_for_impl();
    let (check_g, check_where) = (&impl_g, &where_c);
    let all_names: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
    let checks = fields.iter().map(field_checks);

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
    // The parsed value replaces the field only if it keeps the field's rules.
    let set_arms = fields.iter().map(|f| {
        let (m, ty, name) = (f.member, f.ty, &f.name);
        quote_spanned! {ty.span()=>
            (#name, #p::Option::None) => {
                let __new = <#ty as #p::HparamValue>::parse_str(__value, #name)?;
                let __old = ::core::mem::replace(&mut self.#m, __new);
                __check_fields(self, #p::Option::Some(#name)).map_err(|__e| {
                    self.#m = __old;
                    __e
                })
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
        /// The rules of every field (`__only: None`) or of the one named.
        #[allow(private_bounds)]
        fn __check_fields #check_g (
            __h: &#ident #ty_g,
            __only: #p::Option<&str>,
        ) -> #p::Result<(), #p::HparamError> #check_where {
            #(#checks)*
            #p::Result::Ok(())
        }

        #[automatically_derived]
        #[allow(private_bounds)]
        impl #impl_g #p::Hyperparameters for #ident #ty_g #where_c {
            fn to_value(&self) -> #p::Value {
                let mut __d = #p::Dict::new();
                #(#to_value)*
                #p::Value::Dict(__d)
            }
            fn from_value(__v: &#p::Value) -> #p::Result<Self, #p::HparamError> {
                let __r = #p::DictReader::new::<Self>(__v, &[#(#all_names),*])?;
                let __h = Self { #(#from_value)* };
                __check_fields(&__h, #p::Option::None)?;
                #p::Result::Ok(__h)
            }
            fn validate(&self) -> #p::Result<(), #p::HparamError> {
                __check_fields(self, #p::Option::None)
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
    let indices: Vec<usize> = (0..variants.len()).collect();
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
            /// The variant's name in any case (a hand-written YAML file may say `gelu`).
            fn from_value(__v: &#p::Value, __field: &str) -> #p::Result<Self, #p::HparamError> {
                match __v.as_str().and_then(|__s| #p::match_variant(__s, &[#(#names),*])) {
                    #(#p::Option::Some(#indices) => #p::Result::Ok(Self::#idents),)*
                    _ => #p::Result::Err(#p::type_error::<Self>(__field, __v)),
                }
            }
            /// The variant's name in any case; saved with its canonical spelling.
            fn parse_str(__s: &str, __field: &str) -> #p::Result<Self, #p::HparamError> {
                match #p::match_variant(__s.trim(), &[#(#names),*]) {
                    #(#p::Option::Some(#indices) => #p::Result::Ok(Self::#idents),)*
                    _ => #p::Result::Err(#p::variant_error(__field, __s, &[#(#names),*])),
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

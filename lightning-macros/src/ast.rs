//! The models the macros work on, parsed from `syn` input; each keeps the original nodes
//! for spans.

use crate::attr::{self, HparamAttrs, StateAttrs};
use crate::ctxt::Ctxt;
use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::{Attribute, Data, DeriveInput, Fields, Generics, Ident, Type};

/// A `#[derive(Hyperparameters)]` target.
pub enum HparamsInput<'a> {
    /// A struct with named fields: a config.
    Struct {
        ident: &'a Ident,
        generics: &'a Generics,
        fields: Vec<HField<'a>>,
        /// `#[hparam(no_default)]` on the struct: no generated `Default`.
        no_default: bool,
    },
    /// An enum of unit variants: a field type stored as the variant name.
    Enum {
        ident: &'a Ident,
        generics: &'a Generics,
        variants: Vec<HVariant<'a>>,
    },
}

/// One config field.
pub struct HField<'a> {
    /// The Rust field name.
    pub member: &'a Ident,
    /// The field type.
    pub ty: &'a Type,
    /// The saved name (`rename` or the field name).
    pub name: String,
    /// Tokens the saved name came from (for duplicate errors).
    pub name_tokens: TokenStream,
    /// `#[hparam(...)]`.
    pub attrs: HparamAttrs,
    /// The doc comment.
    pub doc: String,
}

/// One unit variant.
pub struct HVariant<'a> {
    /// The variant.
    pub ident: &'a Ident,
    /// The saved string.
    pub name: String,
    /// Tokens the name came from.
    pub name_tokens: TokenStream,
}

const TARGET_MSG: &str =
    "`Hyperparameters` can only be derived for structs with named fields or enums of unit variants";

impl<'a> HparamsInput<'a> {
    /// Parses the input; `None` when its shape is unsupported (the error is in `cx`).
    pub fn parse(cx: &Ctxt, input: &'a DeriveInput) -> Option<Self> {
        if !matches!(input.data, Data::Struct(_)) {
            reject_container_attr(cx, &input.attrs, "hparam");
        }
        match &input.data {
            Data::Struct(s) => match &s.fields {
                Fields::Named(named) => Some(HparamsInput::Struct {
                    ident: &input.ident,
                    generics: &input.generics,
                    fields: named
                        .named
                        .iter()
                        .filter_map(|f| HField::parse(cx, f))
                        .collect(),
                    no_default: attr::hparam_container_attrs(cx, &input.attrs).is_some(),
                }),
                Fields::Unnamed(f) => {
                    cx.error_spanned(
                        f,
                        format!("{TARGET_MSG}; tuple structs have no field names"),
                    );
                    None
                }
                Fields::Unit => {
                    cx.error_spanned(&input.ident, format!("{TARGET_MSG}; this is a unit struct"));
                    None
                }
            },
            Data::Enum(e) => {
                if e.variants.is_empty() {
                    cx.error_spanned(
                        &input.ident,
                        "an enum hyperparameter needs at least one variant",
                    );
                    return None;
                }
                let variants = e
                    .variants
                    .iter()
                    .filter_map(|v| {
                        if !matches!(v.fields, Fields::Unit) {
                            cx.error_spanned(
                                &v.fields,
                                format!(
                                    "enum hyperparameters are stored by variant name; variant `{}` carries data",
                                    v.ident
                                ),
                            );
                            return None;
                        }
                        let a = attr::hparam_attrs(cx, &v.attrs, true);
                        let (name, name_tokens) = saved_name(&v.ident, a.rename.as_ref());
                        Some(HVariant {
                            ident: &v.ident,
                            name,
                            name_tokens,
                        })
                    })
                    .collect();
                Some(HparamsInput::Enum {
                    ident: &input.ident,
                    generics: &input.generics,
                    variants,
                })
            }
            Data::Union(u) => {
                cx.error_spanned(u.union_token, TARGET_MSG);
                None
            }
        }
    }
}

fn saved_name(ident: &Ident, rename: Option<&syn::LitStr>) -> (String, TokenStream) {
    match rename {
        Some(lit) => (lit.value(), lit.to_token_stream()),
        // `r#type` is saved as `type`, as Python would name it.
        None => (
            ident.to_string().trim_start_matches("r#").to_owned(),
            ident.to_token_stream(),
        ),
    }
}

/// A helper attribute on the container itself is a misuse (it belongs on fields).
fn reject_container_attr(cx: &Ctxt, attrs: &[Attribute], name: &str) {
    for a in attrs.iter().filter(|a| a.path().is_ident(name)) {
        cx.error_spanned(
            a,
            format!("`#[{name}(...)]` goes on fields, not on the type"),
        );
    }
}

impl<'a> HField<'a> {
    /// `None` only for a field without a name, which `Fields::Named` never holds.
    fn parse(cx: &Ctxt, f: &'a syn::Field) -> Option<Self> {
        let attrs = attr::hparam_attrs(cx, &f.attrs, false);
        let member = f.ident.as_ref()?;
        let (name, name_tokens) = saved_name(member, attrs.rename.as_ref());
        Some(HField {
            member,
            ty: &f.ty,
            name,
            name_tokens,
            doc: attr::docs(&f.attrs),
            attrs,
        })
    }
}

/// A `#[lightning_module]` target.
pub struct ModuleInput<'a> {
    /// The struct name.
    pub ident: &'a Ident,
    /// Its generics.
    pub generics: &'a Generics,
    /// Its fields in declaration order.
    pub fields: Vec<MField<'a>>,
}

/// What a module field is.
pub enum Role<'a> {
    /// The `#[hparams]` config, with the marker for spans.
    Hparams(&'a Attribute),
    /// `#[state(skip)]`: not traversed.
    Skip,
    /// Traversed under `name`; `Some(persistent)` for `#[state(buffer)]`.
    State { buffer: Option<bool> },
}

/// One module field.
pub struct MField<'a> {
    /// The Rust field name.
    pub member: &'a Ident,
    /// The field type.
    pub ty: &'a Type,
    /// The state_dict name.
    pub name: String,
    /// Tokens the name came from.
    pub name_tokens: TokenStream,
    /// The field's role.
    pub role: Role<'a>,
    /// `#[state(...)]`.
    pub attrs: StateAttrs,
}

impl<'a> ModuleInput<'a> {
    /// Parses the struct; `None` when it is not a struct with named fields.
    pub fn parse(cx: &Ctxt, input: &'a DeriveInput) -> Option<Self> {
        const MSG: &str = "`#[lightning_module]` goes on a struct with named fields";
        let fields = match &input.data {
            Data::Struct(s) => match &s.fields {
                Fields::Named(n) => &n.named,
                Fields::Unnamed(f) => {
                    cx.error_spanned(f, format!("{MSG}; tuple structs have no field names"));
                    return None;
                }
                Fields::Unit => {
                    cx.error_spanned(&input.ident, format!("{MSG}; this is a unit struct"));
                    return None;
                }
            },
            Data::Enum(e) => {
                cx.error_spanned(e.enum_token, format!("{MSG}, not an enum"));
                return None;
            }
            Data::Union(u) => {
                cx.error_spanned(u.union_token, format!("{MSG}, not a union"));
                return None;
            }
        };
        reject_container_attr(cx, &input.attrs, "state");
        let fields = fields
            .iter()
            .filter_map(|f| {
                let attrs = attr::state_attrs(cx, &f.attrs);
                // Named fields always have an ident.
                let member = f.ident.as_ref()?;
                let (name, name_tokens) = saved_name(member, attrs.rename.as_ref());
                let role = match attr::hparams_marker(cx, &f.attrs) {
                    Some(m) => Role::Hparams(m),
                    None if attrs.skip.is_some() => Role::Skip,
                    None => Role::State {
                        buffer: attrs
                            .buffer
                            .as_ref()
                            .map(|_| attrs.persistent.as_ref().is_none_or(|b| b.value)),
                    },
                };
                Some(MField {
                    member,
                    ty: &f.ty,
                    name,
                    name_tokens,
                    role,
                    attrs,
                })
            })
            .collect();
        Some(ModuleInput {
            ident: &input.ident,
            generics: &input.generics,
            fields,
        })
    }
}

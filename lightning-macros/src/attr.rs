//! Reading the helper attributes: `#[hparam(...)]` on config fields and enum variants,
//! `#[hparams]` and `#[state(...)]` on module fields, and doc comments.

use crate::ctxt::Ctxt;
use syn::meta::ParseNestedMeta;
use syn::{Attribute, Expr, LitBool, LitStr};

/// A value given once, remembering where (for "duplicate" errors and spans).
pub struct Once<T> {
    name: &'static str,
    what: &'static str,
    value: Option<T>,
}

impl<T> Once<T> {
    fn new(what: &'static str, name: &'static str) -> Self {
        Once {
            name,
            what,
            value: None,
        }
    }

    /// Sets the value, or reports a duplicate on the key's span.
    fn set(&mut self, cx: &Ctxt, meta: &ParseNestedMeta, value: T) {
        if self.value.is_some() {
            cx.push(meta.error(format!("duplicate {} attribute `{}`", self.what, self.name)));
        } else {
            self.value = Some(value);
        }
    }

    /// The value, if given.
    pub fn get(self) -> Option<T> {
        self.value
    }
}

/// `#[hparam(...)]` on a config field.
pub struct HparamAttrs {
    /// `default = <expr>`.
    pub default: Option<Expr>,
    /// `skip`, with the key's path for spans.
    pub skip: Option<syn::Path>,
    /// `rename = "name"`.
    pub rename: Option<LitStr>,
    /// `range = <range expression>`.
    pub range: Option<syn::ExprRange>,
    /// `validate = path`.
    pub validate: Option<syn::Path>,
}

/// Parses `range = lo..=hi` (any range expression).
fn range_value(cx: &Ctxt, meta: &ParseNestedMeta) -> syn::Result<Option<syn::ExprRange>> {
    let expr: Expr = meta.value()?.parse()?;
    match expr {
        Expr::Range(r) => Ok(Some(r)),
        other => {
            cx.error_spanned(
                other,
                "expected a range: `range = 0.0..=1.0` (or `1..`, `..=10`)",
            );
            Ok(None)
        }
    }
}

/// Parses `rename = "..."`: a string literal that is a valid (dot-free, non-empty) key.
fn rename_value(cx: &Ctxt, meta: &ParseNestedMeta) -> syn::Result<Option<LitStr>> {
    let expr: Expr = meta.value()?.parse()?;
    match &expr {
        Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(s),
            ..
        }) => {
            let v = s.value();
            if v.is_empty() || v.contains('.') {
                cx.error_spanned(s, "`rename` must be a non-empty name without dots");
                Ok(None)
            } else {
                Ok(Some(s.clone()))
            }
        }
        other => {
            cx.error_spanned(other, "expected a string literal: `rename = \"name\"`");
            Ok(None)
        }
    }
}

/// Reads every `#[hparam(...)]` of a field; with `variant`, only `rename` is allowed.
pub fn hparam_attrs(cx: &Ctxt, attrs: &[Attribute], variant: bool) -> HparamAttrs {
    let mut default = Once::new("hparam", "default");
    let mut skip = Once::new("hparam", "skip");
    let mut rename = Once::new("hparam", "rename");
    let mut range = Once::new("hparam", "range");
    let mut validate = Once::new("hparam", "validate");
    for attr in attrs.iter().filter(|a| a.path().is_ident("hparam")) {
        let res = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("rename") {
                if let Some(v) = rename_value(cx, &meta)? {
                    rename.set(cx, &meta, v);
                }
            } else if meta.path.is_ident("range") && !variant {
                if let Some(r) = range_value(cx, &meta)? {
                    range.set(cx, &meta, r);
                }
            } else if meta.path.is_ident("validate") && !variant {
                let path: syn::Path = meta.value()?.parse()?;
                validate.set(cx, &meta, path);
            } else if meta.path.is_ident("default") && !variant {
                let e: Expr = meta.value()?.parse()?;
                default.set(cx, &meta, e);
            } else if meta.path.is_ident("skip") && !variant {
                skip.set(cx, &meta, meta.path.clone());
            } else {
                let key = meta
                    .path
                    .get_ident()
                    .map_or_else(|| "?".to_owned(), |i| i.to_string());
                let valid = if variant {
                    "`rename`"
                } else {
                    "`default`, `skip`, `rename`, `range`, `validate`"
                };
                return Err(meta.error(format!(
                    "unknown hparam attribute `{key}` (expected one of {valid})"
                )));
            }
            Ok(())
        });
        if let Err(e) = res {
            cx.push(e);
        }
    }
    HparamAttrs {
        default: default.get(),
        skip: skip.get(),
        rename: rename.get(),
        range: range.get(),
        validate: validate.get(),
    }
}

/// Reads `#[hparam(...)]` on a config struct itself: only `no_default` (do not generate
/// `Default`) is allowed there.
pub fn hparam_container_attrs(cx: &Ctxt, attrs: &[Attribute]) -> Option<syn::Path> {
    let mut no_default = Once::new("hparam", "no_default");
    for attr in attrs.iter().filter(|a| a.path().is_ident("hparam")) {
        let res = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("no_default") {
                no_default.set(cx, &meta, meta.path.clone());
                Ok(())
            } else {
                Err(meta.error(
                    "on the type, `#[hparam(...)]` takes only `no_default`; field attributes go on fields",
                ))
            }
        });
        if let Err(e) = res {
            cx.push(e);
        }
    }
    no_default.get()
}

/// `#[state(...)]` on a module field.
pub struct StateAttrs {
    /// `skip`.
    pub skip: Option<syn::Path>,
    /// `rename = "name"`.
    pub rename: Option<LitStr>,
    /// `buffer`.
    pub buffer: Option<syn::Path>,
    /// `persistent = <bool>` (default true).
    pub persistent: Option<LitBool>,
}

/// Reads every `#[state(...)]` of a field.
pub fn state_attrs(cx: &Ctxt, attrs: &[Attribute]) -> StateAttrs {
    let mut skip = Once::new("state", "skip");
    let mut rename = Once::new("state", "rename");
    let mut buffer = Once::new("state", "buffer");
    let mut persistent = Once::new("state", "persistent");
    for attr in attrs.iter().filter(|a| a.path().is_ident("state")) {
        let res = attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("skip") {
                skip.set(cx, &meta, meta.path.clone());
            } else if meta.path.is_ident("buffer") {
                buffer.set(cx, &meta, meta.path.clone());
            } else if meta.path.is_ident("rename") {
                if let Some(v) = rename_value(cx, &meta)? {
                    rename.set(cx, &meta, v);
                }
            } else if meta.path.is_ident("persistent") {
                let expr: Expr = meta.value()?.parse()?;
                match expr {
                    Expr::Lit(syn::ExprLit {
                        lit: syn::Lit::Bool(b),
                        ..
                    }) => persistent.set(cx, &meta, b),
                    other => cx.error_spanned(other, "expected `true` or `false`"),
                }
            } else {
                let key = meta.path.get_ident().map_or_else(|| "?".to_owned(), |i| i.to_string());
                return Err(meta.error(format!(
                    "unknown state attribute `{key}` (expected one of `skip`, `rename`, `buffer`, `persistent`)"
                )));
            }
            Ok(())
        });
        if let Err(e) = res {
            cx.push(e);
        }
    }
    StateAttrs {
        skip: skip.get(),
        rename: rename.get(),
        buffer: buffer.get(),
        persistent: persistent.get(),
    }
}

/// The `#[hparams]` marker, if present; arguments are an error.
pub fn hparams_marker<'a>(cx: &Ctxt, attrs: &'a [Attribute]) -> Option<&'a Attribute> {
    let mut found: Option<&Attribute> = None;
    for attr in attrs.iter().filter(|a| a.path().is_ident("hparams")) {
        if let Err(e) = attr.meta.require_path_only() {
            cx.push(syn::Error::new(e.span(), "`#[hparams]` takes no arguments"));
        }
        if found.is_some() {
            cx.error_spanned(attr, "duplicate `#[hparams]` attribute");
        }
        found = found.or(Some(attr));
    }
    found
}

/// The doc comment's lines, trimmed and joined with newlines.
pub fn docs(attrs: &[Attribute]) -> String {
    let lines: Vec<String> = attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .filter_map(|a| match &a.meta {
            syn::Meta::NameValue(nv) => match &nv.value {
                Expr::Lit(syn::ExprLit {
                    lit: syn::Lit::Str(s),
                    ..
                }) => Some(s.value().trim().to_owned()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    lines.join("\n").trim().to_owned()
}

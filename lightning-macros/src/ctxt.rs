//! Collects every error found while parsing and checking, so a user fixes them all in one
//! compile (as serde_derive's `Ctxt`).

use std::cell::RefCell;

/// An error sink; [`Ctxt::check`] combines what was pushed into one `syn::Error`.
#[derive(Default)]
pub struct Ctxt {
    errors: RefCell<Option<syn::Error>>,
}

impl Ctxt {
    /// Records an error.
    pub fn push(&self, e: syn::Error) {
        let mut slot = self.errors.borrow_mut();
        match slot.as_mut() {
            Some(all) => all.combine(e),
            None => *slot = Some(e),
        }
    }

    /// Records an error at the tokens of `at`.
    pub fn error_spanned(&self, at: impl quote::ToTokens, msg: impl std::fmt::Display) {
        self.push(syn::Error::new_spanned(at, msg));
    }

    /// Every error pushed, combined, or `Ok` when there was none.
    pub fn check(self) -> syn::Result<()> {
        match self.errors.into_inner() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

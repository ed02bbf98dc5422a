//! The value rules of `#[derive(Hyperparameters)]` (`range`, `validate`) and the lookup of
//! enum variant names; called by generated code.

use super::HparamError;
use std::fmt::{Debug, Display};
use std::ops::RangeBounds;

/// A field type `#[hparam(range = ..)]` applies to: a number, or an `Option` or `Vec` of
/// them (each number must lie in the range).
#[diagnostic::on_unimplemented(
    message = "`range` applies to numbers, and `Option`/`Vec` of numbers; `{Self}` is not one",
    label = "`range` needs a number field",
    note = "use `#[hparam(validate = path)]` for other rules"
)]
pub trait Bounded {
    /// The number type the range is over.
    type Scalar: PartialOrd + Debug;
    /// Calls `f` on every number held, stopping at the first error.
    fn try_each(
        &self,
        f: &mut dyn FnMut(&Self::Scalar) -> Result<(), HparamError>,
    ) -> Result<(), HparamError>;
}

macro_rules! bounded_scalar {
    ($($t:ty),*) => {$(
        impl Bounded for $t {
            type Scalar = $t;
            fn try_each(
                &self,
                f: &mut dyn FnMut(&$t) -> Result<(), HparamError>,
            ) -> Result<(), HparamError> {
                f(self)
            }
        }
    )*};
}
bounded_scalar!(i8, i16, i32, i64, isize, u8, u16, u32, u64, usize, f32, f64);

impl<T: Bounded> Bounded for Option<T> {
    type Scalar = T::Scalar;
    fn try_each(
        &self,
        f: &mut dyn FnMut(&T::Scalar) -> Result<(), HparamError>,
    ) -> Result<(), HparamError> {
        self.as_ref().map_or(Ok(()), |v| v.try_each(f))
    }
}

impl<T: Bounded> Bounded for Vec<T> {
    type Scalar = T::Scalar;
    fn try_each(
        &self,
        f: &mut dyn FnMut(&T::Scalar) -> Result<(), HparamError>,
    ) -> Result<(), HparamError> {
        self.iter().try_for_each(|v| v.try_each(f))
    }
}

/// `#[hparam(range = ..)]`: every number of `value` must lie in `range` (NaN never does).
/// `rule` is the range as written, for the message.
pub fn check_range<T: Bounded, R: RangeBounds<T::Scalar>>(
    field: &str,
    value: &T,
    range: R,
    rule: &str,
) -> Result<(), HparamError> {
    value.try_each(&mut |x| {
        if range.contains(x) {
            Ok(())
        } else {
            Err(HparamError::Invalid {
                field: field.to_owned(),
                value: format!("{x:?}"),
                rule: format!("must be in {rule}"),
            })
        }
    })
}

/// `#[hparam(validate = path)]`: the validator's verdict on `value`; its error message becomes
/// the rule, with the validator's name.
pub fn check_with<T: Debug, E: Display>(
    field: &str,
    value: &T,
    verdict: Result<(), E>,
    validator: &str,
) -> Result<(), HparamError> {
    verdict.map_err(|e| HparamError::Invalid {
        field: field.to_owned(),
        value: format!("{value:?}"),
        rule: format!("{e} (checked by `{validator}`)"),
    })
}

/// The index of the variant `s` names: the exact name, else the one name equal to it
/// ignoring ASCII case (`gelu` for `Gelu`); `None` when there is none or the case-insensitive
/// match is ambiguous.
pub fn match_variant(s: &str, names: &[&str]) -> Option<usize> {
    if let Some(i) = names.iter().position(|n| *n == s) {
        return Some(i);
    }
    let mut found = names
        .iter()
        .enumerate()
        .filter(|(_, n)| n.eq_ignore_ascii_case(s))
        .map(|(i, _)| i);
    match (found.next(), found.next()) {
        (Some(i), None) => Some(i),
        _ => None,
    }
}

/// The error for a string that names no variant: it lists the names and says that any case
/// is accepted.
pub fn variant_error(field: &str, s: &str, names: &[&str]) -> HparamError {
    let list = names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    HparamError::Parse {
        field: field.to_owned(),
        value: s.to_owned(),
        expected: format!("one of {list} (in any case)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_check_every_number_and_name_field_value_rule() {
        assert_eq!(check_range("p", &0.5f64, 0.0..=1.0, "0.0..=1.0"), Ok(()));
        let e = check_range("p", &-0.5f64, 0.0..=1.0, "0.0..=1.0").unwrap_err();
        assert_eq!(
            e.to_string(),
            "hyperparameter `p` = -0.5 is invalid: must be in 0.0..=1.0"
        );
        assert!(check_range("p", &f64::NAN, 0.0..=1.0, "0.0..=1.0").is_err());
        assert_eq!(check_range("n", &None::<i64>, 1.., "1.."), Ok(()));
        let e = check_range("n", &vec![3i64, 0], 1.., "1..").unwrap_err();
        assert!(e.to_string().contains("= 0 is invalid"), "{e}");
    }

    #[test]
    fn validators_give_their_message() {
        let e = check_with("s", &"x", Err("must not be x"), "no_x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "hyperparameter `s` = \"x\" is invalid: must not be x (checked by `no_x`)"
        );
    }

    #[test]
    fn variants_match_exactly_then_in_any_case() {
        let names = ["Relu", "Gelu", "gelu2", "A", "a"];
        assert_eq!(match_variant("Gelu", &names), Some(1));
        assert_eq!(match_variant("GELU", &names), Some(1));
        assert_eq!(match_variant("a", &names), Some(4));
        assert_eq!(match_variant("A", &names), Some(3));
        // Two names equal ignoring case: only the exact spelling selects one.
        let names = ["Ab", "aB"];
        assert_eq!(match_variant("ab", &names), None);
        assert_eq!(match_variant("tanh", &names), None);
        let e = variant_error("act", "tanh", &["Relu", "Gelu"]);
        assert_eq!(
            e.to_string(),
            "hyperparameter `act`: cannot parse \"tanh\" as one of \"Relu\", \"Gelu\" (in any case)"
        );
    }
}

//! `#[hparam(no_default)]` on the struct: no generated `Default`, so the user's own compiles
//! (here a derived one, whose values differ from the hparam defaults).
use lightning_core::prelude::*;

#[derive(Hyperparameters, Clone, Debug, Default)]
#[hparam(no_default)]
pub struct Config {
    #[hparam(default = 2, range = 0..)]
    pub width: i64,
}

#[test]
fn expands_and_runs() {
    assert_eq!(Config::default().width, 0);
    let from_defaults = <Config as Hyperparameters>::from_value(&Value::dict()).unwrap();
    assert_eq!(from_defaults.width, 2);
}

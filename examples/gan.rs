//! A small GAN on the digits images (`data/digits.csv.gz`): a generator and a discriminator
//! (two MLPs), two Adam optimizers, and manual optimization (`automatic_optimization` false):
//! each training step toggles one network's parameters on, back-propagates through
//! `ctx.manual_backward` and steps that network's optimizer itself, as Lightning's GAN
//! example does. A checkpoint every epoch and `last.ckpt`; `--resume last` continues exactly.
//!
//! ```text
//! cargo run --release --example gan -- --max-epochs 4 --root runs/gan
//! cargo run --release --example gan -- --max-epochs 8 --resume last --root runs/gan
//! ```

use clap::Parser;
use lightning_rs::gan::{train, Args};

fn main() {
    if let Err(e) = train(&Args::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

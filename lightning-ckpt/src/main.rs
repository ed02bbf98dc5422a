//! `lightning-ckpt`: inspect, convert and diff checkpoint files (filled in by the checkpoint work).
fn main() {
    eprintln!("lightning-ckpt: not built yet");
    std::process::exit(2);
}

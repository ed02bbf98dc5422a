//! The main example (grown by the trainer work).
fn main() {
    println!("digits: not built yet");
}

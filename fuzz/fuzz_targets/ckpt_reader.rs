//! libFuzzer target: any bytes as a `.ckpt` file.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    lightning_core_fuzz::check(data);
});

//! Compile-time behaviour of the macros (run with `cargo test -p lightning-macros --test ui`;
//! scripts/test.sh does): every misuse in `tests/ui/` fails with the reviewed
//! message at the offending token (`*.stderr`). One test function, so trybuild checks the
//! dependencies once. What correct input expands to is compiled and run with the workspace's
//! tests (`tests/module/expansion/`), which need no second build of the dependencies.

#[test]
fn ui() {
    // trybuild's `cargo check` of the cases needs no debug info; without it the dependencies'
    // metadata builds faster.
    // SAFETY: set before trybuild starts any thread; this test binary runs this one test.
    unsafe { std::env::set_var("CARGO_PROFILE_DEV_DEBUG", "false") };
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}

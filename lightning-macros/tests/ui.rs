//! Compile-time behaviour of the macros: every misuse in `tests/ui/` fails with the reviewed
//! message at the offending token (`*.stderr`), every program in `tests/ui_pass/` compiles and
//! runs. One test function, so trybuild builds the dependencies once.

#[test]
fn ui() {
    // trybuild's programs are another package, so our build script's rpath to libtorch does
    // not reach them: point the loader at libtorch for the `pass` programs it runs.
    if let Some(lib) = std::env::var_os("LIBTORCH").map(|p| std::path::PathBuf::from(p).join("lib"))
    {
        let mut paths = vec![lib];
        paths.extend(std::env::split_paths(
            &std::env::var_os("LD_LIBRARY_PATH").unwrap_or_default(),
        ));
        std::env::set_var(
            "LD_LIBRARY_PATH",
            std::env::join_paths(paths).expect("valid paths"),
        );
    }
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
    t.pass("tests/ui_pass/*.rs");
}

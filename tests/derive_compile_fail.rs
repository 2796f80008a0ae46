//! Compile-time checks of `#[derive(Region)]`: what a region cannot hold fails to compile with
//! a clear message at the offending field; supported shapes compile.
//!
//! Regenerate the expected messages with `TRYBUILD=overwrite cargo test --test
//! derive_compile_fail` and review the `.stderr` files.

#[test]
fn derive_region_ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass_*.rs");
    t.compile_fail("tests/ui/fail_*.rs");
}

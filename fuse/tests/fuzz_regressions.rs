//! Inputs the fuzzer (`scripts/fuzz.sh`, overflow checks on) found crashing, kept as
//! regressions: each must be refused with an error, never a panic.

use overparam_fuse::AnySpec;

#[test]
fn spec_json_with_overflowing_sizes_is_refused() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let bytes = std::fs::read(&p).unwrap();
        // The same steps as the fuzz target: parse, layout, per-layer summary.
        let r = serde_json::from_slice::<AnySpec>(&bytes)
            .map_err(|e| e.to_string())
            .and_then(|s| s.layout().map(|_| s).map_err(|e| e.to_string()))
            .and_then(|s| overparam_fuse::inspect::summarize(&s).map_err(|e| e.to_string()));
        let e = r.expect_err("accepted");
        // Refused by the declared-size bounds (before them: an overflow panic).
        assert!(e.contains("≤") || e.contains("..="), "{}: {e}", p.display());
        n += 1;
    }
    assert!(n >= 3);
}

//! A short, deterministic fuzz run of every reader (`apigen_mt::fuzz`) from the checked-in
//! corpora in `tests/fuzz/<target>/`. The long runs are `scripts/fuzz.sh`.

use crate::util;
use apigen_mt::fuzz::{self, Budget};

#[test]
fn every_reader_survives_a_short_fuzz_run() {
    let targets = fuzz::targets(&util::root().join("domains")).unwrap();
    assert!(targets.len() >= 11);
    let mut panics = Vec::new();
    for target in &targets {
        let dir = util::root().join("tests/fuzz").join(target.name);
        let seeds = fuzz::seeds(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        assert!(!seeds.is_empty(), "{}: no seeds", dir.display());
        let report = fuzz::fuzz(target, &seeds, Budget::Execs(4000), 7);
        assert_eq!(report.execs, 4000);
        assert!(report.signatures > 1, "{}: one behaviour only", target.name);
        for f in report.findings {
            panics.push(format!(
                "{}: {} on input {:?}",
                target.name,
                f.message,
                String::from_utf8_lossy(&f.input)
            ));
        }
    }
    assert!(panics.is_empty(), "{}", panics.join("\n"));
}

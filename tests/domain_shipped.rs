//! The shipped domains: each passes `domain check` on its own data, and its data is exactly what
//! its generator makes from seed 0 (so the files in git can always be rebuilt).

use crate::util;

#[test]
fn shipped_domains_pass_check() {
    for domain in ["retail", "airline", "mock"] {
        let (code, _, stderr) = util::run(&["domain", "check", &format!("domains/{domain}")], "");
        assert_eq!(code, 0, "{domain}: {stderr}");
        assert!(stderr.contains(" 0 problems"), "{stderr}");
    }
}

#[test]
fn shipped_data_is_the_generators_seed_0_output() {
    for (domain, tables) in [
        ("retail", ["orders", "products", "users"]),
        ("airline", ["flights", "reservations", "users"]),
    ] {
        let out = tempfile::tempdir().unwrap();
        let dir = format!("domains/{domain}");
        let (code, _, stderr) = util::run(
            &[
                "domain",
                "generate",
                &dir,
                "--seed",
                "0",
                "--out",
                out.path().to_str().unwrap(),
            ],
            "",
        );
        assert_eq!(code, 0, "{stderr}");
        for t in tables {
            let shipped =
                std::fs::read(util::root().join(&dir).join(format!("data/{t}.json"))).unwrap();
            let made = std::fs::read(out.path().join(format!("{t}.json"))).unwrap();
            assert!(
                shipped == made,
                "{domain}/{t}.json differs from the seed-0 generator output"
            );
        }
    }
}

#[test]
fn generators_scale_down_and_stay_consistent() {
    let out = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = util::run(
        &[
            "domain",
            "generate",
            "domains/retail",
            "--seed",
            "3",
            "--size",
            "users=20,products=10,orders=40",
            "--out",
            out.path().to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("db_hash"));
    assert!(
        stderr.contains("orders=40") && stderr.contains("users=20"),
        "{stderr}"
    );
    let (code, _, stderr) = util::run(
        &[
            "domain",
            "check",
            "domains/retail",
            "--db",
            out.path().to_str().unwrap(),
        ],
        "",
    );
    assert_eq!(code, 0, "{stderr}");
}

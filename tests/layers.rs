//! The pure core stays pure: no file under `src/domain/` names the Kubernetes client, the
//! async runtime or the HTTP client. (The compiler cannot say it while they share a crate; this
//! test does, so a decision never quietly grows IO.)

const FORBIDDEN: &[&str] = &[
    "tokio",
    "reqwest",
    "kube::Client",
    "kube::Api",
    "kube::api",
    "kube::runtime",
    "kube::client",
    "crate::shell",
    "std::fs",
    "std::net",
    "std::process",
    "std::thread",
];

#[test]
fn the_domain_does_no_io() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/domain");
    let mut checked = 0;
    let mut offences = vec![];
    let mut files = vec![];
    let mut dirs = vec![dir.clone()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        checked += 1;
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for word in FORBIDDEN {
                if code.contains(word) {
                    offences.push(format!("{}:{}: {word}", path.display(), n + 1));
                }
            }
        }
    }
    assert!(
        checked >= 10,
        "expected the domain's modules in {dir:?}, found {checked}"
    );
    assert!(
        offences.is_empty(),
        "IO in the pure core:\n{}",
        offences.join("\n")
    );
}

//! The pure core stays pure: `src/pipeline` names no I/O, clock or randomness.

use std::path::Path;

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable folder") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn pipeline_does_no_io() {
    let forbidden = [
        "tokio",
        "async_imap",
        "lettre",
        "rusqlite",
        "std::fs",
        "std::net::TcpStream",
        "std::net::UdpSocket",
        "SystemTime::now",
        "Utc::now",
        "Instant::now",
        "rand::",
        "std::env::var",
        "crate::shell",
        "crate::clock",
    ];
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/pipeline");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    files.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/pipeline.rs"));
    assert!(files.len() > 5);
    let mut hits = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable source");
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for word in forbidden {
                if line.contains(word) {
                    hits.push(format!("{}:{}: {word}", file.display(), n + 1));
                }
            }
        }
    }
    assert!(
        hits.is_empty(),
        "I/O in the pure core:\n{}",
        hits.join("\n")
    );
}

//! DKIM signing cost per message: RSA-2048 against Ed25519, 10 KB and 100 KB messages, and the
//! dual (RSA + Ed25519) setup. One signing includes the relaxed body hash, the header hash and
//! the private-key operation, as at intake.
//! Run: cargo bench --ignore-rust-version --bench dkim

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice::config::DkimConfig;
use sluice::mailauth::{DkimAlgorithm, DkimSigner, key};

fn message(size: usize) -> Vec<u8> {
    let mut m =
        b"From: News <news@example.com>\r\nTo: someone@example.org\r\nSubject: This week\r\n\
                  Date: Tue, 1 Dec 2026 12:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n\
                  MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            .to_vec();
    while m.len() < size {
        m.extend_from_slice(
            b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod\r\n",
        );
    }
    m
}

fn signer(dir: &std::path::Path, algorithms: &[DkimAlgorithm]) -> DkimSigner {
    let entries: Vec<DkimConfig> = algorithms
        .iter()
        .enumerate()
        .map(|(i, &algorithm)| {
            let path = dir.join(format!("{i}.pem"));
            std::fs::write(&path, key::generate(algorithm, 2048).unwrap()).unwrap();
            DkimConfig {
                domain: "example.com".into(),
                selector: format!("s{i}"),
                key: path,
                algorithm,
                default: false,
                expire: None,
            }
        })
        .collect();
    DkimSigner::load(&entries).unwrap()
}

fn sign(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let setups = [
        ("ed25519", signer(dir.path(), &[DkimAlgorithm::Ed25519Sha256])),
        ("rsa2048", signer(dir.path(), &[DkimAlgorithm::RsaSha256])),
        ("dual", signer(dir.path(), &[DkimAlgorithm::Ed25519Sha256, DkimAlgorithm::RsaSha256])),
    ];
    for size in [10_000, 100_000] {
        let m = message(size);
        let mut g = c.benchmark_group(format!("dkim_sign_{}kb", size / 1000));
        g.throughput(Throughput::Elements(1));
        for (name, s) in &setups {
            g.bench_function(*name, |b| b.iter(|| std::hint::black_box(s.sign(&m).unwrap())));
        }
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = sign
}
criterion_main!(benches);

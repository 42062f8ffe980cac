//! Criterion bench for the spool's group commit: the time to make a batch of B concurrent 10 KB
//! messages durable (one vectored write + one fdatasync per batch), for B = 1, 16 and 128, through
//! the portable writer and the io_uring writer, on the disk under target/ (not tmpfs).
//! Run: cargo bench --bench spool

use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice::spool::{Envelope, LogSpool, NewMessage, Recipient, Spool, SpoolOptions, WriterKind};

fn message(spool: &LogSpool, body: &Bytes) -> NewMessage {
    let id = spool.next_id();
    NewMessage {
        envelope: Envelope {
            id,
            received_at: 1,
            sender: "bulk@example.com".into(),
            recipients: vec![Recipient::queued("someone@example.org", None, None)],
            message_id: Some("<bench@example.com>".into()),
            size: body.len() as u64,
            helo: "bench.example.com".into(),
            client_ip: "127.0.0.1".parse().expect("literal"),
            body_type: None,
            smtputf8: false,
            ret: None,
            envid: None,
            tags: None,
        },
        trace: Bytes::from_static(b"Received: from bench\r\n"),
        body: body.clone(),
    }
}

fn group_commit(c: &mut Criterion) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-spool");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().expect("rt");
    let body = Bytes::from(vec![b'x'; 10 * 1024]);
    for writer in [WriterKind::Portable, WriterKind::IoUring] {
        let _ = std::fs::remove_dir_all(&root);
        let opts = SpoolOptions { min_free_space: 0, writer, ..SpoolOptions::new(&root) };
        let spool = Arc::new(LogSpool::open(opts).expect("spool"));
        if spool.writer() != writer {
            eprintln!("{writer:?} is not available here; skipping it");
            continue;
        }
        let mut g = c.benchmark_group(format!("spool_commit_{}", writer.label()));
        for batch in [1usize, 16, 128] {
            g.throughput(Throughput::Elements(batch as u64));
            g.bench_function(format!("batch_{batch}"), |b| {
                b.iter(|| {
                    rt.block_on(async {
                        let tickets: Vec<_> =
                            (0..batch).map(|_| spool.store(message(&spool, &body))).collect();
                        for t in tickets {
                            t.await.expect("stored");
                        }
                    })
                })
            });
        }
        g.finish();
        spool.close();
    }
    let _ = std::fs::remove_dir_all(&root);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = group_commit
}
criterion_main!(benches);

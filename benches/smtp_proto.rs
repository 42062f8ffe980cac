//! Criterion benches for the SMTP hot path: command parsing and the DATA receiver (MB/s).
//! Run: cargo bench --bench smtp_proto

use bytes::BytesMut;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice::proto::smtp::command;
use sluice::proto::smtp::data::{DataEvent, DataReceiver};

fn commands(c: &mut Criterion) {
    let lines: &[&[u8]] = &[
        b"EHLO client.example.com",
        b"MAIL FROM:<newsletter-bounces+1234@lists.example.com> SIZE=10240 BODY=8BITMIME",
        b"RCPT TO:<someone.with.a.long.name@mailbox.example.org> NOTIFY=FAILURE",
        b"DATA",
    ];
    let mut g = c.benchmark_group("command_parse");
    g.throughput(Throughput::Elements(lines.len() as u64));
    g.bench_function("ehlo_mail_rcpt_data", |b| {
        b.iter(|| {
            for l in lines {
                std::hint::black_box(command::parse(std::hint::black_box(l)).unwrap());
            }
        })
    });
    g.finish();
}

/// A 10 KB message of 76-column lines, some starting with a dot (stuffed).
fn message(size: usize) -> Vec<u8> {
    let mut m = Vec::with_capacity(size + 80);
    let mut i = 0;
    while m.len() < size {
        if i % 20 == 0 {
            m.extend_from_slice(b"..");
        }
        m.extend_from_slice(
            &b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod te"[..72],
        );
        m.extend_from_slice(b"\r\n");
        i += 1;
    }
    m.extend_from_slice(b".\r\n");
    m
}

fn data_reader(c: &mut Criterion) {
    let mut g = c.benchmark_group("data_reader");
    for size in [10 << 10, 1 << 20] {
        let wire = message(size);
        g.throughput(Throughput::Bytes(wire.len() as u64));
        g.bench_function(format!("unstuff_{}k", size >> 10), |b| {
            b.iter_batched_ref(
                || BytesMut::from(&wire[..]),
                |buf| {
                    let mut rx = DataReceiver::new(64 << 20, 1000);
                    match rx.ingest(buf) {
                        DataEvent::End(body) => std::hint::black_box(body),
                        other => panic!("{other:?}"),
                    }
                },
                criterion::BatchSize::SmallInput,
            )
        });
        // Baseline: the least any DATA reader must do, finding the terminator (no unstuffing).
        g.bench_function(format!("baseline_memmem_find_end_{}k", size >> 10), |b| {
            let finder = memchr::memmem::Finder::new(b"\r\n.\r\n");
            b.iter(|| std::hint::black_box(finder.find(std::hint::black_box(&wire))))
        });
        // Same input arriving in 4 KiB reads, as from a socket.
        g.bench_function(format!("unstuff_{}k_in_4k_reads", size >> 10), |b| {
            b.iter(|| {
                let mut rx = DataReceiver::new(64 << 20, 1000);
                let mut buf = BytesMut::with_capacity(wire.len());
                for chunk in wire.chunks(4096) {
                    buf.extend_from_slice(chunk);
                    if let DataEvent::End(body) = rx.ingest(&mut buf) {
                        return std::hint::black_box(body);
                    }
                }
                panic!("no end");
            })
        });
    }
    g.finish();
}

criterion_group!(benches, commands, data_reader);
criterion_main!(benches);

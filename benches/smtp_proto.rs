//! Criterion benches for the SMTP hot path: command parsing, the DATA receiver (MB/s), the
//! dot-stuffing writer (MB/s, with a plain slice copy of the same bytes as the baseline) and one
//! whole transaction through the sans-IO delivery client.
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

/// Outbound DATA: dot-stuffing applied while writing, as slices of the stored body (no copy).
/// Baseline in the same run: copying the same bytes once, the least a copying writer would do.
fn dot_stuffer(c: &mut Criterion) {
    // The stored (unstuffed) form: leading dots appear once.
    let unstuffed: Vec<u8> =
        String::from_utf8(message(10 * 1024)).unwrap().replace("\r\n..", "\r\n.").into_bytes();
    let body = bytes::Bytes::from(unstuffed);
    let mut g = c.benchmark_group("dot_stuff_10k");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.bench_function("slices", |b| {
        let mut out = Vec::with_capacity(64);
        b.iter(|| {
            out.clear();
            sluice::proto::smtp::data::dot_stuff(std::slice::from_ref(&body), &mut out);
            std::hint::black_box(out.len())
        })
    });
    g.bench_function("baseline_copy", |b| {
        let mut out = Vec::with_capacity(body.len());
        b.iter(|| {
            out.clear();
            out.extend_from_slice(std::hint::black_box(&body));
            std::hint::black_box(out.len())
        })
    });
    g.finish();
}

/// One pipelined transaction (MAIL, 3 RCPT, DATA, body, end) through the client state machine,
/// replies fed as one server would send them.
fn client_transaction(c: &mut Criterion) {
    use sluice::proto::smtp::client::{
        Client, ClientEvent, DsnParams, Outbound, SessionPolicy, TlsPolicy,
    };
    let body = bytes::Bytes::from(message(10 * 1024));
    let msg = Outbound {
        sender: "news@example.com".into(),
        recipients: vec!["a@example.org".into(), "b@example.org".into(), "c@example.org".into()],
        content: vec![body],
        eightbit: false,
        smtputf8: false,
        dsn: DsnParams::default(),
    };
    let mut g = c.benchmark_group("client");
    g.throughput(Throughput::Elements(1));
    g.bench_function("pipelined_transaction_10k", |b| {
        let policy = SessionPolicy { tls: TlsPolicy::Disabled, auth: None };
        let mut client = Client::new("mta.example.com", policy);
        client.handle_input(b"220 mx\r\n250-mx\r\n250-PIPELINING\r\n250 8BITMIME\r\n");
        while client.poll_transmit().is_some() {}
        assert!(matches!(client.poll_event(), Some(ClientEvent::Ready(_))));
        b.iter(|| {
            client.start(msg.clone());
            client.handle_input(b"250 ok\r\n250 ok\r\n250 ok\r\n250 ok\r\n354 go\r\n");
            client.handle_input(b"250 2.0.0 queued\r\n");
            let mut n = 0;
            while let Some(b) = client.poll_transmit() {
                n += b.len();
            }
            let ev = client.poll_event();
            debug_assert!(matches!(ev, Some(ClientEvent::Done(_))));
            std::hint::black_box((n, ev))
        })
    });
    g.finish();
}

criterion_group!(benches, commands, data_reader, dot_stuffer, client_transaction);
criterion_main!(benches);

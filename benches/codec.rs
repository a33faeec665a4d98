//! Codec micro-benchmarks: encoding and decoding frames of the sizes the load tests use.
//! `cargo bench --bench codec`.

// criterion_group! expands to a public function that cannot carry a doc comment.
#![allow(missing_docs)]

use bytes::{Bytes, BytesMut};
use courier::wire::{Codec, Frame};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::hint::black_box;
use tokio_util::codec::{Decoder, Encoder};

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    for size in [0usize, 64, 4096] {
        let frame = Frame::request(7, Bytes::from(vec![0xAB; size]));
        group.throughput(Throughput::Elements(1));
        group.bench_function(format!("request_{size}B"), |b| {
            let mut codec = Codec::new(1 << 20);
            let mut buf = BytesMut::with_capacity(64 * 1024);
            b.iter(|| {
                buf.clear();
                codec.encode(black_box(frame.clone()), &mut buf).unwrap();
                black_box(buf.len())
            });
        });
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for size in [0usize, 64, 4096] {
        // 100 frames back to back, as a pipelining client's read would hold them.
        let mut wire = BytesMut::new();
        let mut codec = Codec::new(1 << 20);
        for id in 1..=100 {
            codec
                .encode(Frame::request(id, Bytes::from(vec![0xAB; size])), &mut wire)
                .unwrap();
        }
        group.throughput(Throughput::Elements(100));
        group.bench_function(format!("100_requests_{size}B"), |b| {
            b.iter_batched(
                || wire.clone(),
                |mut buf| {
                    let mut frames = 0;
                    while let Some(frame) = codec.decode(&mut buf).unwrap() {
                        black_box(&frame);
                        frames += 1;
                    }
                    assert_eq!(frames, 100);
                },
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, encode, decode);
criterion_main!(benches);

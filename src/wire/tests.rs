//! Unit tests of the wire format: the documented vectors, every split point, the limits.

use bytes::{BufMut, Bytes, BytesMut};
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

use super::*;

/// Decodes hex with spaces, as the vectors are written in docs/PROTOCOL.md.
fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s.replace(' ', "")).expect("test vector is valid hex")
}

fn encode(frame: &Frame) -> Vec<u8> {
    let mut buf = BytesMut::new();
    Codec::new(MAX_PAYLOAD_LIMIT)
        .encode(frame.clone(), &mut buf)
        .expect("encode");
    buf.to_vec()
}

/// Decodes every frame in `bytes` (fed in one piece) and asserts nothing is left over.
fn decode_all(codec: &mut Codec, bytes: &[u8]) -> Vec<Frame> {
    let mut buf = BytesMut::from(bytes);
    let mut frames = Vec::new();
    while let Some(frame) = codec.decode(&mut buf).expect("decode") {
        frames.push(frame);
    }
    assert!(buf.is_empty(), "left over: {buf:?}");
    frames
}

/// HELLO, version 1, max_frame 65536, one field: tag 0x01, 3 bytes "abc".
const HELLO_WITH_FIELD: &str =
    "00 00 00 15 01 00 00 00 00 43 4f 55 52 00 01 00 01 00 00 01 00 03 61 62 63";

/// The test vectors of docs/PROTOCOL.md, section "Test vectors", byte for byte.
fn vectors() -> Vec<(Frame, &'static str)> {
    vec![
        (
            Frame::hello(&Hello::new(1_048_576)),
            "00 00 00 0f 01 00 00 00 00 43 4f 55 52 00 01 00 10 00 00",
        ),
        (
            Frame::request(1, &b"hi"[..]),
            "00 00 00 07 02 00 00 00 01 68 69",
        ),
        (Frame::reply(1, Bytes::new()), "00 00 00 05 03 00 00 00 01"),
        (
            Frame::oneway(0, &b"log"[..]),
            "00 00 00 08 04 00 00 00 00 6c 6f 67",
        ),
        (
            Frame::error(7, ErrorCode::FrameTooLarge, "too big"),
            "00 00 00 0e 05 00 00 00 07 00 04 74 6f 6f 20 62 69 67",
        ),
        (
            Frame::new(Kind::Ping, 3, &b"\x01"[..]),
            "00 00 00 06 06 00 00 00 03 01",
        ),
        (
            Frame::new(Kind::Pong, 3, &b"\x01"[..]),
            "00 00 00 06 07 00 00 00 03 01",
        ),
        (Frame::goaway(42), "00 00 00 09 08 00 00 00 00 00 00 00 2a"),
        (
            Frame::hello(&Hello {
                version: 1,
                max_frame: 1_048_576,
                fields: vec![(HELLO_REQUEST_OPTIONS, Bytes::new())],
            }),
            "00 00 00 12 01 00 00 00 00 43 4f 55 52 00 01 00 10 00 00 02 00 00",
        ),
        (
            Frame::new(
                Kind::RequestExt,
                1,
                RequestOptions {
                    idempotent: true,
                    timeout_ms: 1500,
                }
                .encode(b"hi"),
            ),
            "00 00 00 0c 0a 00 00 00 01 01 00 00 05 dc 68 69",
        ),
        (
            Frame::new(Kind::RequestExt, 2, RequestOptions::default().encode(b"")),
            "00 00 00 0a 0a 00 00 00 02 00 00 00 00 00",
        ),
    ]
}

#[test]
fn request_options_split_from_the_vectors_payload() {
    let frames = decode_all(
        &mut Codec::new(1024),
        &unhex("00 00 00 0c 0a 00 00 00 01 01 00 00 05 dc 68 69"),
    );
    assert_eq!(frames[0].kind, Kind::RequestExt);
    let (options, payload) = RequestOptions::split(frames[0].payload.clone()).unwrap();
    assert!(options.idempotent);
    assert_eq!(options.timeout_ms, 1500);
    assert_eq!(payload, &b"hi"[..]);
    // Flag bits other than bit 0 are ignored; bit 0 clear is not idempotent.
    let (options, payload) =
        RequestOptions::split(Bytes::from_static(b"\xfe\x00\x00\x00\x00")).unwrap();
    assert!(!options.idempotent);
    assert!(payload.is_empty());
    // Shorter than the 5 bytes of options.
    let err = RequestOptions::split(Bytes::from_static(b"\x01\x00\x00\x00")).unwrap_err();
    assert!(err.to_string().contains("REQUEST_EXT"), "{err}");
}

/// The hex strings of the "Test vectors" table in docs/PROTOCOL.md, in order.
fn documented_vectors() -> Vec<String> {
    let doc = include_str!("../../docs/PROTOCOL.md");
    let section = doc
        .split("## Test vectors")
        .nth(1)
        .expect("PROTOCOL.md has a Test vectors section");
    section
        .lines()
        .filter(|line| line.starts_with('|') && line.contains('`'))
        .map(|line| line.split('`').nth(1).unwrap().to_owned())
        .collect()
}

#[test]
fn protocol_document_lists_exactly_the_vectors_tested_here() {
    let mut tested: Vec<String> = vectors().iter().map(|(_, wire)| wire.to_string()).collect();
    tested.push(HELLO_WITH_FIELD.to_owned());
    assert_eq!(documented_vectors(), tested);
}

#[test]
fn test_vectors_encode_byte_for_byte() {
    for (frame, wire) in vectors() {
        assert_eq!(encode(&frame), unhex(wire), "encoding {frame:?}");
    }
}

#[test]
fn test_vectors_decode_to_their_frames() {
    for (frame, wire) in vectors() {
        let decoded = decode_all(&mut Codec::new(1024), &unhex(wire));
        assert_eq!(decoded, vec![frame]);
    }
}

#[test]
fn hello_vector_with_a_field_parses() {
    // HELLO, version 1, max_frame 65536, one field: tag 0x01, 3 bytes "abc".
    let wire = unhex("00 00 00 15 01 00 00 00 00 43 4f 55 52 00 01 00 01 00 00 01 00 03 61 62 63");
    let frames = decode_all(&mut Codec::new(1024), &wire);
    let hello = Hello::parse(&frames[0].payload).expect("valid HELLO");
    assert_eq!(hello.version, 1);
    assert_eq!(hello.max_frame, 65_536);
    assert_eq!(hello.fields, vec![(1, Bytes::from_static(b"abc"))]);
    assert_eq!(Frame::hello(&hello).payload, frames[0].payload);
}

#[test]
fn hello_with_wrong_magic_is_rejected_with_what_was_found() {
    let err = Hello::parse(&Bytes::from_static(b"GET / HTTP")).unwrap_err();
    assert_eq!(
        err,
        HelloError::BadMagic {
            found: "47455420".into()
        }
    );
}

#[test]
fn hello_with_a_field_overrunning_the_payload_is_malformed() {
    let mut body = BytesMut::from(&Hello::new(10).encode()[..]);
    body.put_u8(1);
    body.put_u16(10);
    body.put_slice(b"short");
    assert!(matches!(
        Hello::parse(&body.freeze()),
        Err(HelloError::Malformed(_))
    ));
}

#[test]
fn error_body_round_trips_and_short_bodies_are_rejected() {
    let frame = Frame::error(5, ErrorCode::Other(1234), "no such key");
    let body = ErrorBody::parse(&frame.payload).unwrap();
    assert_eq!(body.code, ErrorCode::Other(1234));
    assert_eq!(body.message, "no such key");
    assert!(ErrorBody::parse(&[0]).is_err());
    for code in 1..=20 {
        assert_eq!(ErrorCode::from_u16(code).as_u16(), code);
        assert!(!matches!(ErrorCode::from_u16(code), ErrorCode::Other(_)));
    }
}

#[test]
fn goaway_body_must_be_four_bytes() {
    assert_eq!(parse_goaway(&Frame::goaway(9).payload).unwrap(), 9);
    assert!(parse_goaway(&[0, 0, 9]).is_err());
}

fn sample_stream() -> (Vec<Frame>, Vec<u8>) {
    let frames = vec![
        Frame::hello(&Hello::new(1024)),
        Frame::request(1, &b"first"[..]),
        Frame::request(2, Bytes::new()),
        Frame::oneway(3, vec![0xAB; 300]),
        Frame::error(4, ErrorCode::HandlerFailed, "boom"),
    ];
    let bytes = frames.iter().flat_map(encode).collect();
    (frames, bytes)
}

#[test]
fn every_split_point_of_a_stream_decodes_the_same_frames() {
    let (frames, bytes) = sample_stream();
    for cut in 0..=bytes.len() {
        let mut codec = Codec::new(1024);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for part in [&bytes[..cut], &bytes[cut..]] {
            buf.extend_from_slice(part);
            while let Some(frame) = codec.decode(&mut buf).unwrap() {
                got.push(frame);
            }
        }
        assert_eq!(got, frames, "split at byte {cut}");
        assert!(buf.is_empty());
    }
}

#[test]
fn one_byte_at_a_time_decodes_the_same_frames() {
    let (frames, bytes) = sample_stream();
    let mut codec = Codec::new(1024);
    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for byte in bytes {
        buf.put_u8(byte);
        while let Some(frame) = codec.decode(&mut buf).unwrap() {
            got.push(frame);
        }
    }
    assert_eq!(got, frames);
}

#[test]
fn many_frames_coalesced_in_one_read_all_decode() {
    let frames: Vec<Frame> = (1..=1000u32)
        .map(|id| Frame::request(id, id.to_be_bytes().to_vec()))
        .collect();
    let bytes: Vec<u8> = frames.iter().flat_map(encode).collect();
    assert_eq!(decode_all(&mut Codec::new(16), &bytes), frames);
}

#[test]
fn payload_of_exactly_the_maximum_is_accepted() {
    let frame = Frame::request(1, vec![7; 100]);
    assert_eq!(
        decode_all(&mut Codec::new(100), &encode(&frame)),
        vec![frame]
    );
}

#[test]
fn oversize_is_rejected_from_the_header_alone_naming_the_limit() {
    let mut codec = Codec::new(100);
    // Header of a REQUEST id 9 declaring 101 payload bytes, and no payload yet.
    let mut buf = BytesMut::from(&unhex("00 00 00 6a 02 00 00 00 09")[..]);
    let capacity_before = buf.capacity();
    let err = codec.decode(&mut buf).unwrap_err();
    assert!(
        matches!(err, CodecError::FrameTooLarge { len: 101, max: 100 }),
        "{err:?}"
    );
    assert_eq!(err.error_code(), Some(ErrorCode::FrameTooLarge));
    assert!(err.to_string().contains("limit is 100 bytes"), "{err}");
    assert_eq!(buf.capacity(), capacity_before, "decoder must not allocate");
}

#[test]
fn a_header_declaring_the_maximum_does_not_reserve_it() {
    let mut codec = Codec::new(64 << 20);
    let mut buf = BytesMut::with_capacity(64);
    buf.extend_from_slice(&unhex("04 00 00 05 02 00 00 00 01 aa bb"));
    assert!(codec.decode(&mut buf).unwrap().is_none());
    assert!(buf.capacity() < 1024, "capacity grew to {}", buf.capacity());
}

#[test]
fn oversize_is_rejected_from_the_four_length_bytes_alone() {
    for cut in 4..HEADER_LEN {
        let mut buf = BytesMut::from(&unhex("ff ff ff ff 02 00 00 00 01")[..cut]);
        let err = Codec::new(1 << 20).decode(&mut buf).unwrap_err();
        assert!(
            matches!(err, CodecError::FrameTooLarge { len: 0xFFFF_FFFA, max } if max == 1 << 20),
            "{cut} bytes: {err:?}"
        );
    }
    // Three bytes of the length say nothing yet.
    let mut buf = BytesMut::from(&unhex("ff ff ff")[..]);
    assert!(Codec::new(1 << 20).decode(&mut buf).unwrap().is_none());
}

#[test]
fn all_ones_length_is_too_large() {
    let mut buf = BytesMut::from(&unhex("ff ff ff ff 02 00 00 00 01")[..]);
    let err = Codec::new(1 << 20).decode(&mut buf).unwrap_err();
    assert!(matches!(err, CodecError::FrameTooLarge { len, .. } if len == 0xFFFF_FFFA));
}

#[test]
fn length_below_five_is_rejected_after_four_bytes() {
    for len in 0..5u32 {
        let mut buf = BytesMut::from(&len.to_be_bytes()[..]);
        let err = Codec::new(100).decode(&mut buf).unwrap_err();
        assert!(matches!(err, CodecError::BadLength { len: l } if l == len));
    }
}

#[test]
fn unknown_kind_is_rejected_with_its_byte_and_id() {
    for kind in [0x00, 0x0b, 0x7f, 0xff] {
        let mut buf = BytesMut::from(&unhex(&format!("00 00 00 05 {kind:02x} 00 00 00 0c"))[..]);
        let err = Codec::new(100).decode(&mut buf).unwrap_err();
        assert!(
            matches!(err, CodecError::UnknownKind { kind: k, id: 12 } if k == kind),
            "{err:?}"
        );
    }
}

#[test]
fn truncated_header_at_eof_is_an_error() {
    for cut in 1..HEADER_LEN {
        let bytes = encode(&Frame::request(1, &b"x"[..]));
        let mut buf = BytesMut::from(&bytes[..cut]);
        let err = Codec::new(100).decode_eof(&mut buf).unwrap_err();
        assert!(matches!(err, CodecError::Truncated { buffered } if buffered == cut));
    }
}

#[test]
fn truncated_payload_at_eof_is_an_error() {
    let bytes = encode(&Frame::request(1, &b"hello"[..]));
    let mut buf = BytesMut::from(&bytes[..bytes.len() - 2]);
    let err = Codec::new(100).decode_eof(&mut buf).unwrap_err();
    assert!(
        matches!(err, CodecError::Truncated { buffered: 12 }),
        "{err:?}"
    );
}

#[test]
fn clean_eof_is_the_end_of_the_stream() {
    assert!(Codec::new(100)
        .decode_eof(&mut BytesMut::new())
        .unwrap()
        .is_none());
}

#[test]
fn plain_messages_round_trip_across_every_split_point() {
    let messages = [
        Bytes::from_static(b"one"),
        Bytes::new(),
        Bytes::from(vec![7; 300]),
    ];
    let mut bytes = BytesMut::new();
    for message in &messages {
        PlainCodec::new(0)
            .encode(message.clone(), &mut bytes)
            .unwrap();
    }
    assert_eq!(&bytes[..7], &[0, 0, 0, 3, b'o', b'n', b'e']);
    for cut in 0..=bytes.len() {
        let mut codec = PlainCodec::new(300);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for part in [&bytes[..cut], &bytes[cut..]] {
            buf.extend_from_slice(part);
            while let Some(message) = codec.decode(&mut buf).unwrap() {
                got.push(message);
            }
        }
        assert_eq!(got, messages, "split at {cut}");
    }
}

#[test]
fn plain_length_over_the_limit_is_rejected_from_the_prefix_alone() {
    let mut buf = BytesMut::from(&[0, 0, 1, 0][..]);
    let err = PlainCodec::new(255).decode(&mut buf).unwrap_err();
    assert!(
        matches!(err, CodecError::MessageTooLarge { len: 256, max: 255 }),
        "{err:?}"
    );
    assert!(err.to_string().contains("limit is 255"), "{err}");
}

#[test]
fn plain_truncated_at_eof_is_an_error() {
    let mut buf = BytesMut::from(&[0, 0, 0, 5, 1, 2][..]);
    let err = PlainCodec::new(10).decode_eof(&mut buf).unwrap_err();
    assert!(
        matches!(err, CodecError::Truncated { buffered: 6 }),
        "{err:?}"
    );
}

#[test]
fn raw_codec_hands_on_whatever_is_buffered() {
    let mut buf = BytesMut::from(&b"half a mess"[..]);
    assert_eq!(RawCodec.decode(&mut buf).unwrap().unwrap(), "half a mess");
    assert!(RawCodec.decode(&mut buf).unwrap().is_none());
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    (
        prop::sample::select(Kind::ALL.to_vec()),
        any::<u32>(),
        prop::collection::vec(any::<u8>(), 0..200),
    )
        .prop_map(|(kind, id, payload)| Frame::new(kind, id, payload))
}

proptest! {
    #[test]
    fn any_frames_cut_into_any_chunks_decode_back(
        frames in prop::collection::vec(arb_frame(), 0..20),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..30),
    ) {
        let bytes: Vec<u8> = frames.iter().flat_map(encode).collect();
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(bytes.len() + 1)).collect();
        points.push(0);
        points.push(bytes.len());
        points.sort_unstable();
        let mut codec = Codec::new(200);
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for pair in points.windows(2) {
            buf.extend_from_slice(&bytes[pair[0]..pair[1]]);
            while let Some(frame) = codec.decode(&mut buf).unwrap() {
                got.push(frame);
            }
        }
        prop_assert!(codec.decode_eof(&mut buf).unwrap().is_none());
        prop_assert_eq!(got, frames);
    }

    #[test]
    fn arbitrary_bytes_decode_only_to_frames_that_re_encode_to_them(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut codec = Codec::new(64);
        let mut buf = BytesMut::from(&bytes[..]);
        let mut consumed = 0;
        // Decode until the codec errors or wants more; a panic fails the test, and
        // every frame it does return must be exactly the bytes it consumed.
        while let Ok(Some(frame)) = codec.decode(&mut buf) {
            let used = bytes.len() - buf.len() - consumed;
            prop_assert_eq!(&encode(&frame)[..], &bytes[consumed..consumed + used]);
            consumed += used;
        }
        if let Ok(hello) = Hello::parse(&Bytes::from(bytes.clone())) {
            prop_assert_eq!(&bytes[..4], &MAGIC[..]);
            prop_assert!(hello.fields.len() <= bytes.len());
        }
        if let Ok(body) = ErrorBody::parse(&bytes) {
            prop_assert_eq!(body.code.as_u16(), u16::from_be_bytes([bytes[0], bytes[1]]));
        }
    }
}

/// What `encode_apart` leaves in the buffer followed by the payload it hands back.
fn encoded_apart<T, E: EncodeApart<T>>(codec: &mut E, item: T) -> (Vec<u8>, bool) {
    let mut buf = BytesMut::new();
    let apart = codec.encode_apart(item, &mut buf).expect("encode_apart");
    let handed_back = apart.is_some();
    buf.extend_from_slice(&apart.unwrap_or_default());
    (buf.to_vec(), handed_back)
}

#[test]
fn encoding_apart_gives_the_same_bytes_and_keeps_only_large_payloads_apart() {
    for (len, apart) in [
        (0, false),
        (64, false),
        (WRITE_APART - 1, false),
        (WRITE_APART, true),
        (1 << 20, true),
    ] {
        let payload = Bytes::from((0..len).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
        let frame = Frame::new(Kind::Reply, 7, payload.clone());
        let (bytes, handed_back) = encoded_apart(&mut Codec::new(MAX_PAYLOAD_LIMIT), frame.clone());
        assert_eq!(bytes, encode(&frame), "courier framing, {len}-byte payload");
        assert_eq!(handed_back, apart, "courier framing, {len}-byte payload");

        let mut whole = BytesMut::new();
        PlainCodec::new(usize::MAX)
            .encode(payload.clone(), &mut whole)
            .expect("encode");
        let (bytes, handed_back) = encoded_apart(&mut PlainCodec::new(usize::MAX), payload.clone());
        assert_eq!(bytes, whole.to_vec(), "plain framing, {len}-byte payload");
        assert_eq!(handed_back, apart, "plain framing, {len}-byte payload");

        let (bytes, handed_back) = encoded_apart(&mut RawCodec, payload.clone());
        assert_eq!(bytes, payload.to_vec(), "raw, {len}-byte payload");
        assert_eq!(handed_back, apart, "raw, {len}-byte payload");
    }
}

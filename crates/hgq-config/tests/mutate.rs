//! Property test: mutated golden strings (truncated, bytes flipped, tokens swapped, ...) never
//! make a reader panic; whatever is accepted writes text that reads back to the same text.
mod common;
use hgq_config::{
    BitwidthMapperConfig, KerasModel, PyValue, QuantizerConfig, QuantizerLayer, extract_quantizers,
};
use rstest::rstest;

/// xorshift64*: small, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[derive(Debug, Clone, Copy)]
enum Mutation {
    Truncate,
    FlipByte,
    SwapTokens,
    DeleteRange,
    DuplicateRange,
    Splice,
}

/// Token boundaries: runs of alphanumerics/`.`/`-`/`+`, or single other bytes.
fn tokens(b: &[u8]) -> Vec<(usize, usize)> {
    let word = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'+' | b'_');
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let s = i;
        if word(b[i]) {
            while i < b.len() && word(b[i]) {
                i += 1;
            }
        } else {
            i += 1;
        }
        out.push((s, i));
    }
    out
}

const INTERESTING: &[&[u8]] = &[
    b"Infinity",
    b"-Infinity",
    b"NaN",
    b"null",
    b"true",
    b"0",
    b"-1",
    b"1e400",
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\\u",
    b"\"x\"",
    b"9223372036854775808",
    b"0.0",
];

fn mutate(src: &[u8], m: Mutation, rng: &mut Rng) -> Vec<u8> {
    let mut b = src.to_vec();
    let n = b.len();
    match m {
        Mutation::Truncate => b.truncate(rng.below(n)),
        Mutation::FlipByte => {
            for _ in 0..1 + rng.below(3) {
                let i = rng.below(n);
                b[i] = if rng.below(2) == 0 {
                    b[i] ^ (1 << rng.below(8))
                } else {
                    rng.next() as u8
                };
            }
        }
        Mutation::SwapTokens => {
            let t = tokens(&b);
            let (x, y) = (t[rng.below(t.len())], t[rng.below(t.len())]);
            let (x, y) = if x.0 <= y.0 { (x, y) } else { (y, x) };
            if x.1 <= y.0 {
                let mut out = b[..x.0].to_vec();
                out.extend_from_slice(&b[y.0..y.1]);
                out.extend_from_slice(&b[x.1..y.0]);
                out.extend_from_slice(&b[x.0..x.1]);
                out.extend_from_slice(&b[y.1..]);
                b = out;
            }
        }
        Mutation::DeleteRange => {
            let s = rng.below(n);
            let e = (s + 1 + rng.below(40)).min(n);
            b.drain(s..e);
        }
        Mutation::DuplicateRange => {
            let s = rng.below(n);
            let e = (s + 1 + rng.below(60)).min(n);
            let chunk = b[s..e].to_vec();
            let at = rng.below(b.len());
            b.splice(at..at, chunk);
        }
        Mutation::Splice => {
            let t = tokens(&b);
            let (s, e) = t[rng.below(t.len())];
            let with = INTERESTING[rng.below(INTERESTING.len())];
            b.splice(s..e, with.iter().copied());
        }
    }
    b
}

/// Runs every reader; accepted inputs must be written stably.
fn exercise(bytes: &[u8]) -> bool {
    let Ok(v) = PyValue::parse_bytes(bytes) else {
        return false;
    };
    let text = v.to_json();
    let again = PyValue::parse(&text).expect("written text parses");
    assert_eq!(again.to_json(), text);
    let mut accepted = false;
    if let Ok(q) = QuantizerConfig::from_value(&v) {
        let t = q.to_json();
        assert_eq!(
            QuantizerConfig::from_json(&t).expect("re-read").to_json(),
            t
        );
        accepted = true;
    }
    if let Ok(l) = QuantizerLayer::from_value(&v) {
        let t = l.to_json();
        assert_eq!(QuantizerLayer::from_json(&t).expect("re-read").to_json(), t);
        accepted = true;
    }
    if let Ok(m) = BitwidthMapperConfig::from_value(&v) {
        let t = m.to_json();
        assert_eq!(
            BitwidthMapperConfig::from_json(&t)
                .expect("re-read")
                .to_json(),
            t
        );
        accepted = true;
    }
    if let Ok(m) = KerasModel::from_json(&text) {
        let t = m.to_json();
        assert_eq!(KerasModel::from_json(&t).expect("re-read").to_json(), t);
        let _ = extract_quantizers(&t);
    }
    accepted
}

#[rstest]
#[case::truncate(Mutation::Truncate, 1)]
#[case::flip_byte(Mutation::FlipByte, 2)]
#[case::swap_tokens(Mutation::SwapTokens, 3)]
#[case::delete_range(Mutation::DeleteRange, 4)]
#[case::duplicate_range(Mutation::DuplicateRange, 5)]
#[case::splice(Mutation::Splice, 6)]
fn mutated_golden_inputs_never_panic(#[case] m: Mutation, #[case] seed: u64) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ seed);
    let mut accepted = 0;
    let mut total = 0;
    for c in common::cases() {
        for _ in 0..150 {
            let bytes = mutate(c.json.as_bytes(), m, &mut rng);
            accepted += exercise(&bytes) as usize;
            total += 1;
        }
    }
    assert!(total > 0 && accepted <= total);
}

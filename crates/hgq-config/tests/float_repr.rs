//! Float formatting against Python: `tests/data/python_float_repr.txt` holds f64 bit patterns
//! (random bits, short decimals, quarter-ulp ties near 2^50) and what `json.dumps` wrote.
use hgq_config::PyValue;
use hgq_config::pyjson::float_repr;

#[test]
fn matches_python_json_dumps() {
    let text = include_str!("data/python_float_repr.txt");
    let mut n = 0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (bits, want) = line.split_once(' ').expect("two fields");
        let f = f64::from_bits(u64::from_str_radix(bits, 16).expect("hex bits"));
        assert_eq!(float_repr(f), want, "bits {bits}");
        // And Python's text reads back to the same bits and writes the same text.
        let v = PyValue::parse(want).expect("parse");
        match v {
            PyValue::Float(g) => assert!(g.to_bits() == f.to_bits() || (g.is_nan() && f.is_nan())),
            other => panic!("{want} read as {other:?}"),
        }
        assert_eq!(v.to_json(), want);
        n += 1;
    }
    assert!(n > 3000);
}

//! Corrupt archives and inputs that do not fit: errors, never panics.
mod common;

use std::io::{Cursor, Write};

use common::{Reference, data_dir};
use hgq_keras::{Array, ArrayData, Error, KerasArchive};

fn reference_bytes(name: &str) -> Vec<u8> {
    std::fs::read(data_dir().join(format!("{name}.keras"))).unwrap()
}

/// A zip of these members, stored.
fn zip_of(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut z = zip::ZipWriter::new(Cursor::new(Vec::new()));
    for (name, data) in members {
        z.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        z.write_all(data).unwrap();
    }
    z.finish().unwrap().into_inner()
}

fn members(name: &str) -> (String, String, Vec<u8>) {
    let bytes = reference_bytes(name);
    let mut z = zip::ZipArchive::new(Cursor::new(&bytes[..])).unwrap();
    let mut read = |m: &str| {
        let mut out = Vec::new();
        std::io::copy(&mut z.by_name(m).unwrap(), &mut out).unwrap();
        out
    };
    let config = String::from_utf8(read("config.json")).unwrap();
    let metadata = String::from_utf8(read("metadata.json")).unwrap();
    (config, metadata, read("model.weights.h5"))
}

#[test]
fn truncated_zip() {
    let bytes = reference_bytes("cnn");
    for cut in [
        0,
        10,
        100,
        bytes.len() / 2,
        bytes.len() - 30,
        bytes.len() - 1,
    ] {
        let e = KerasArchive::from_bytes(&bytes[..cut]).unwrap_err();
        assert!(matches!(e, Error::Zip(_)), "cut at {cut}: {e}");
    }
    assert!(matches!(
        KerasArchive::from_bytes(b"not a zip at all").unwrap_err(),
        Error::Zip(_)
    ));
}

#[test]
fn missing_members() {
    let (config, metadata, h5) = members("cnn");
    let all = [
        ("metadata.json", metadata.as_bytes()),
        ("config.json", config.as_bytes()),
        ("model.weights.h5", &h5[..]),
    ];
    for skip in 0..3 {
        let rest: Vec<(&str, &[u8])> = all
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != skip)
            .map(|(_, m)| *m)
            .collect();
        match KerasArchive::from_bytes(&zip_of(&rest)).unwrap_err() {
            Error::MissingMember(m) => assert_eq!(m, all[skip].0),
            e => panic!("{e}"),
        }
    }
    // Keras' other weights formats are named in the message.
    let e = KerasArchive::from_bytes(&zip_of(&all[..2])).unwrap_err();
    assert!(e.to_string().contains("npz"), "{e}");
}

#[test]
fn bad_json() {
    let (config, metadata, h5) = members("cnn");
    let e = KerasArchive::from_bytes(&zip_of(&[
        ("metadata.json", metadata.as_bytes()),
        ("config.json", &config.as_bytes()[..100]),
        ("model.weights.h5", &h5),
    ]))
    .unwrap_err();
    assert!(
        matches!(&e, Error::Json { member, .. } if member == "config.json"),
        "{e}"
    );
    let e = KerasArchive::from_bytes(&zip_of(&[
        ("metadata.json", b"\xff\xfe"),
        ("config.json", config.as_bytes()),
        ("model.weights.h5", &h5),
    ]))
    .unwrap_err();
    assert!(
        matches!(&e, Error::Json { member, .. } if member == "metadata.json"),
        "{e}"
    );
}

fn with_h5(h5: &[u8]) -> hgq_keras::Result<KerasArchive> {
    KerasArchive::from_bytes(&zip_of(&[
        ("metadata.json", b"{}"),
        ("config.json", b"{}"),
        ("model.weights.h5", h5),
    ]))
}

#[test]
fn garbage_h5() {
    for junk in [
        &b""[..],
        b"garbage",
        &[0u8; 4096],
        b"\x89HDF\r\n\x1a\n\x00\x00\x00",
    ] {
        let e = with_h5(junk).unwrap_err();
        assert!(matches!(e, Error::Hdf5 { .. }), "{e}");
    }
}

/// Every truncation of a real weights file, and many single-byte corruptions of it, are an error
/// or (where the byte did not matter) an archive: never a panic.
#[test]
fn corrupt_h5_never_panics() {
    let (_, _, h5) = members("mlp");
    let step = (h5.len() / 300).max(1);
    for cut in (0..h5.len()).step_by(step) {
        assert!(with_h5(&h5[..cut]).is_err(), "truncated at {cut}");
    }
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..600 {
        let mut bad = h5.clone();
        for _ in 0..1 + next() % 3 {
            let i = (next() % bad.len() as u64) as usize;
            bad[i] = next() as u8;
        }
        let _ = with_h5(&bad);
    }
}

#[test]
fn unsupported_dtype() {
    // A complex (compound) dataset: not a dtype Keras writes for hgq2.
    let mut b = hdf5_pure::FileBuilder::new();
    b.create_dataset("x").with_complex32_data(&[(1.0, 2.0)]);
    let e = with_h5(&b.finish().unwrap()).unwrap_err();
    assert!(
        matches!(&e, Error::UnsupportedDtype { path, .. } if path == "x"),
        "{e}"
    );
}

#[test]
fn mapping_errors() {
    let r = Reference::load("mlp");
    let (config, _, _) = members("mlp");
    let mut vars = r.arrays();
    let good = KerasArchive::from_variables(config.clone(), &vars).unwrap();

    // A variable of a layer the config does not have.
    vars.push(("nope/kernel".into(), vars[0].1.clone()));
    let e = KerasArchive::from_variables(config.clone(), &vars).unwrap_err();
    assert!(e.to_string().contains("no layer `nope`"), "{e}");
    vars.pop();

    // A sub-object whose group cannot be told.
    vars.push(("q_dense/mystery/w".into(), vars[0].1.clone()));
    let e = KerasArchive::from_variables(config.clone(), &vars).unwrap_err();
    assert!(
        e.to_string().contains("cannot tell the group of `mystery`"),
        "{e}"
    );
    vars.pop();

    // The same variable twice.
    vars.push(vars[0].clone());
    assert!(KerasArchive::from_variables(config.clone(), &vars).is_err());
    vars.pop();

    // An array whose shape does not hold its data.
    vars[0].1.shape.push(2);
    let e = KerasArchive::from_variables(config.clone(), &vars).unwrap_err();
    assert!(matches!(e, Error::Shape { .. }), "{e}");

    // Not a model config.
    for bad in ["[]", r#"{"class_name": "MyModel", "config": {}}"#, "{"] {
        assert!(
            KerasArchive::from_variables(bad.into(), &[]).is_err(),
            "{bad}"
        );
    }

    // Reading with names that do not fit the file.
    let names: Vec<&str> = r.variables.iter().map(|v| v.path.as_str()).collect();
    let short = &names[..names.len() - 1];
    let e = good.variable_paths(short).unwrap_err();
    assert!(
        e.to_string().contains("holds 4 variables, 3 are named"),
        "{e}"
    );
    let e = good.variable_paths(&["q_dense/q_dense_zq/x"]).unwrap_err();
    assert!(
        e.to_string()
            .contains("no saved object `q_dense/q_dense_zq`"),
        "{e}"
    );
    assert!(good.variable_paths(&["q_dense//x"]).is_err());

    // Shapes that cannot be written.
    assert!(matches!(
        Array::new(vec![2, 2], ArrayData::U8(vec![1, 2, 3])).unwrap_err(),
        Error::Shape { .. }
    ));
    let fine = r.arrays()[0].1.clone();
    let mut a = good.clone();
    a.weights.push(("layers/q_dense/vars".into(), fine.clone()));
    assert!(matches!(a.to_bytes().unwrap_err(), Error::BadPath { .. }));
    let mut a = good;
    a.weights.push(("a//b".into(), fine));
    assert!(matches!(a.to_bytes().unwrap_err(), Error::BadPath { .. }));
}

#[test]
fn missing_file() {
    let e = KerasArchive::read("/nonexistent/model.keras").unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
}

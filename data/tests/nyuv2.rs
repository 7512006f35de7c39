use std::path::Path;
use std::process::Command;

use overparam_data::npy;
use overparam_data::nyuv2::{CLASSES, NyuSplit};
use overparam_data::scenes::write_synthetic_nyuv2;

#[test]
fn synthetic_scenes_round_trip_and_are_plausible() {
    let dir = tempfile::tempdir().unwrap();
    write_synthetic_nyuv2(dir.path(), 6, 2, 48, 64, 3).unwrap();
    let train = NyuSplit::open(dir.path(), "train").unwrap();
    let val = NyuSplit::open(dir.path(), "val").unwrap();
    assert_eq!((train.len(), val.len()), (6, 2));
    let mut seen = [0usize; CLASSES];
    for i in 0..train.len() {
        let s = train.get(i).unwrap();
        assert_eq!((s.height, s.width), (48, 64));
        for &l in &s.label {
            if l >= 0.0 {
                seen[l as usize] += 1;
            }
        }
        for (k, &d) in s.depth.iter().enumerate() {
            let n = &s.normal[k * 3..k * 3 + 3];
            let norm: f32 = n.iter().map(|v| v * v).sum::<f32>().sqrt();
            if d == 0.0 {
                assert_eq!(norm, 0.0, "invalid depth and normal go together");
            } else {
                assert!((0.3..10.0).contains(&d), "depth {d}");
                assert!((norm - 1.0).abs() < 1e-5);
            }
        }
        assert!(s.image.iter().all(|v| (0.0..=1.0).contains(v)));
    }
    for c in [2, 4, 11] {
        assert!(
            seen[c] > 0,
            "ceiling, floor and wall appear in every room: {seen:?}"
        );
    }
    assert!(seen.iter().filter(|&&n| n > 0).count() >= 6, "{seen:?}");
    // Deterministic per seed.
    let again = tempfile::tempdir().unwrap();
    write_synthetic_nyuv2(again.path(), 1, 0, 48, 64, 3).unwrap();
    assert_eq!(
        std::fs::read(dir.path().join("train/depth/0.npy")).unwrap(),
        std::fs::read(again.path().join("train/depth/0.npy")).unwrap()
    );
}

#[test]
fn npy_interoperates_with_numpy() {
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("ours.npy");
    npy::write(&ours, &[2, 3, 1], &[1.0, -2.5, 3.0, 4.0, 5.0, 6.0]).unwrap();
    let theirs = dir.path().join("theirs.npy");
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    let o = Command::new(py)
        .arg("-c")
        .arg("import numpy as np,sys; a=np.load(sys.argv[1]); assert a.shape==(2,3,1) and a[0,1,0]==-2.5, a; np.save(sys.argv[2], np.arange(12, dtype=np.float32).reshape(3,4)*0.5)")
        .arg(&ours)
        .arg(&theirs)
        .output()
        .expect("the virtualenv's python (scripts/setup.sh)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let a = npy::read(&theirs).unwrap();
    assert_eq!(a.shape, vec![3, 4]);
    assert_eq!(a.data[11], 5.5);
}

#[test]
fn bad_samples_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    write_synthetic_nyuv2(dir.path(), 3, 0, 32, 40, 1).unwrap();
    let root = dir.path();
    // A NaN in depth.
    let d1 = root.join("train/depth/1.npy");
    let mut a = npy::read(&d1).unwrap();
    a.data[5] = f32::NAN;
    npy::write(&d1, &a.shape, &a.data).unwrap();
    let e = NyuSplit::open(root, "train")
        .unwrap()
        .get(1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("depth/1.npy") && e.contains("non-finite"), "{e}");
    // A label map of the wrong shape.
    let l2 = root.join("train/label/2.npy");
    npy::write(&l2, &[32, 39], &vec![0.0; 32 * 39]).unwrap();
    let e = NyuSplit::open(root, "train")
        .unwrap()
        .get(2)
        .unwrap_err()
        .to_string();
    assert!(e.contains("label/2.npy") && e.contains("shape"), "{e}");
    // A missing sibling file.
    std::fs::remove_file(root.join("train/depth/0.npy")).unwrap();
    let e = NyuSplit::open(root, "train").unwrap_err().to_string();
    assert!(e.contains("depth/0.npy") && e.contains("missing"), "{e}");
}

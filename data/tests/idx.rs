//! The IDX reader on fixtures written here (no test needs the real MNIST-family files).

use std::path::Path;

use overparam_data::cifar::{ImageShape, Split};
use overparam_data::idx::{self, synthetic_set, to_bytes, write_split};
use overparam_data::loader::{Augment, Loader, LoaderConfig, Normalize};

fn fixture(
    dir: &Path,
    gz: bool,
) -> (
    overparam_data::cifar::ImageSet,
    overparam_data::cifar::ImageSet,
) {
    let train = synthetic_set(40, 28, 10, 1, "train");
    let test = synthetic_set(12, 28, 10, 1, "test");
    write_split(dir, Split::Train, &train, gz).unwrap();
    write_split(dir, Split::Test, &test, gz).unwrap();
    (train, test)
}

fn err(dir: &Path) -> String {
    idx::load(dir, Split::Train, 10).unwrap_err().to_string()
}

#[test]
fn round_trip_raw_and_gzip() {
    for gz in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (train, test) = fixture(dir.path(), gz);
        let name = if gz {
            "train-images-idx3-ubyte.gz"
        } else {
            "train-images-idx3-ubyte"
        };
        assert!(dir.path().join(name).is_file());
        assert!(idx::is_idx_dir(dir.path()));
        let a = idx::load(dir.path(), Split::Train, 10).unwrap();
        let b = idx::load(dir.path(), Split::Test, 10).unwrap();
        assert_eq!(a, train);
        assert_eq!(b, test);
        assert_eq!(
            a.shape,
            ImageShape {
                channels: 1,
                height: 28,
                width: 28
            }
        );
        assert_eq!(a.image(3), &train.images[3 * 784..4 * 784]);
        let (mean, std) = a.channel_stats();
        assert_eq!((mean.len(), std.len()), (1, 1));
        assert!(mean[0] > 0.05 && std[0] > 0.05, "{mean:?} {std:?}");
    }
    // The header layout itself, byte for byte (MNIST's "FILE FORMATS" section).
    assert_eq!(
        to_bytes(&[2, 1, 3], &[1, 2, 3, 4, 5, 6]),
        [
            0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6
        ]
    );
}

#[test]
fn one_channel_batches_come_out_of_the_loader() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), true);
    let set = std::sync::Arc::new(idx::load(dir.path(), Split::Train, 10).unwrap());
    let cfg = LoaderConfig {
        batch_size: 8,
        shuffle: true,
        drop_last: false,
        augment: Some(Augment {
            crop_pad: 2,
            hflip: false,
        }),
        normalize: Normalize {
            mean: vec![0.5],
            std: vec![0.25],
        },
        seed: 3,
    };
    let batches: Vec<_> = Loader::spawn(set, cfg, 0, 0).collect();
    assert_eq!(batches.len(), 5);
    assert!(batches.iter().all(|b| b.images.len() == b.size * 784));
}

#[test]
fn truncated_files_are_refused_with_the_file_named() {
    for gz in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        fixture(dir.path(), gz);
        let name = if gz {
            "train-images-idx3-ubyte.gz"
        } else {
            "train-images-idx3-ubyte"
        };
        let path = dir.path().join(name);
        let raw = to_bytes(&[40, 28, 28], &synthetic_set(40, 28, 10, 1, "train").images);
        let cut = &raw[..raw.len() - 100];
        std::fs::write(&path, if gz { idx::gzip(cut) } else { cut.to_vec() }).unwrap();
        let e = err(dir.path());
        assert!(
            e.contains(name) && e.contains("truncated") && e.contains("31360"),
            "{e}"
        );
        // Cut inside the header, and a gzip stream cut short.
        std::fs::write(
            &path,
            if gz {
                idx::gzip(&raw[..10])
            } else {
                raw[..10].to_vec()
            },
        )
        .unwrap();
        let e = err(dir.path());
        assert!(e.contains(name) && e.contains("truncated"), "{e}");
        if gz {
            let z = idx::gzip(&raw);
            std::fs::write(&path, &z[..z.len() / 2]).unwrap();
            let e = err(dir.path());
            assert!(e.contains(name), "{e}");
        }
    }
}

#[test]
fn wrong_magic_is_refused_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), false);
    let path = dir.path().join("train-labels-idx1-ubyte");
    let mut raw = std::fs::read(&path).unwrap();
    // A CIFAR-like file in its place: not an IDX file at all.
    raw[0] = 7;
    std::fs::write(&path, &raw).unwrap();
    let e = err(dir.path());
    assert!(
        e.contains("train-labels-idx1-ubyte") && e.contains("wrong magic"),
        "{e}"
    );
    // f32 data (type 0x0D).
    raw[0] = 0;
    raw[2] = 0x0D;
    std::fs::write(&path, &raw).unwrap();
    let e = err(dir.path());
    assert!(
        e.contains("train-labels-idx1-ubyte") && e.contains("0x0d") && e.contains("f32"),
        "{e}"
    );
    // Images and labels swapped: a valid IDX file of the wrong rank.
    let images = std::fs::read(dir.path().join("train-images-idx3-ubyte")).unwrap();
    std::fs::write(&path, &images).unwrap();
    let e = err(dir.path());
    assert!(
        e.contains("train-labels-idx1-ubyte")
            && e.contains("wrong magic 0x00000803")
            && e.contains("0x00000801"),
        "{e}"
    );
}

#[test]
fn wrong_counts_are_refused_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let (train, _) = fixture(dir.path(), false);
    let path = dir.path().join("train-labels-idx1-ubyte");
    let labels: Vec<u8> = train.labels.iter().map(|&l| l as u8).collect();
    // One label short, with a header that says so: the counts disagree.
    std::fs::write(&path, to_bytes(&[39], &labels[..39])).unwrap();
    let e = err(dir.path());
    assert!(
        e.contains("train-labels-idx1-ubyte")
            && e.contains("wrong count")
            && e.contains("39 labels")
            && e.contains("40 images"),
        "{e}"
    );
    // A header count that disagrees with the data that follows.
    let mut raw = to_bytes(&[40], &labels);
    raw[7] = 30;
    std::fs::write(&path, &raw).unwrap();
    let e = err(dir.path());
    assert!(
        e.contains("train-labels-idx1-ubyte") && e.contains("declare 30") && e.contains("more"),
        "{e}"
    );
    // A header claiming terabytes is refused before any allocation.
    let mut raw = to_bytes(&[40, 28, 28], &train.images);
    raw[4..8].copy_from_slice(&u32::MAX.to_be_bytes());
    raw[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
    std::fs::write(dir.path().join("train-images-idx3-ubyte"), &raw).unwrap();
    let e = err(dir.path());
    assert!(
        e.contains("train-images-idx3-ubyte") && e.contains("more than"),
        "{e}"
    );
}

#[test]
fn labels_at_or_above_the_class_count_are_refused_with_file_and_record() {
    let dir = tempfile::tempdir().unwrap();
    let (train, _) = fixture(dir.path(), true);
    let mut labels: Vec<u8> = train.labels.iter().map(|&l| l as u8).collect();
    labels[17] = 10;
    std::fs::write(
        dir.path().join("train-labels-idx1-ubyte.gz"),
        idx::gzip(&to_bytes(&[40], &labels)),
    )
    .unwrap();
    let e = err(dir.path());
    assert!(
        e.contains("train-labels-idx1-ubyte.gz")
            && e.contains("record 17")
            && e.contains("label 10 out of range (0..10)"),
        "{e}"
    );
    // With more classes declared, the same file is fine.
    assert!(idx::load(dir.path(), Split::Train, 11).is_ok());
}

#[test]
fn a_missing_split_names_the_files_expected() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), false);
    std::fs::remove_file(dir.path().join("t10k-labels-idx1-ubyte")).unwrap();
    let e = idx::load(dir.path(), Split::Test, 10)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("t10k-images-idx3-ubyte[.gz]") && e.contains("t10k-labels-idx1-ubyte[.gz]"),
        "{e}"
    );
    assert!(!idx::is_idx_dir(tempfile::tempdir().unwrap().path()));
}

/// The layout is detected from the files present, or forced by name (then the other layout's
/// files are not looked at, and the error names the ones expected).
#[test]
fn data_kind_is_detected_or_forced() {
    use overparam_data::dataset::{DataKind, detect, load};
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path(), true);
    assert_eq!(detect(dir.path()), Some(DataKind::Idx));
    let s = load(dir.path(), Split::Test, None, 10).unwrap();
    assert_eq!((s.len(), s.shape.channels), (12, 1));
    let e = load(dir.path(), Split::Train, Some(DataKind::Cifar), 10)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("train.bin") && e.contains("data_batch_1.bin"),
        "{e}"
    );
    let cifar = tempfile::tempdir().unwrap();
    overparam_data::synth::write_synthetic_cifar100(cifar.path(), 10, 5, 0).unwrap();
    assert_eq!(detect(cifar.path()), Some(DataKind::Cifar));
    let e = load(cifar.path(), Split::Train, Some(DataKind::Idx), 10)
        .unwrap_err()
        .to_string();
    assert!(e.contains("train-images-idx3-ubyte[.gz]"), "{e}");
    let empty = tempfile::tempdir().unwrap();
    assert_eq!(detect(empty.path()), None);
    let e = load(empty.path(), Split::Train, None, 10)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no data set found") && e.contains("train.bin") && e.contains("idx3"),
        "{e}"
    );
    assert_eq!("idx".parse::<DataKind>().unwrap(), DataKind::Idx);
    assert!("png".parse::<DataKind>().is_err());
}

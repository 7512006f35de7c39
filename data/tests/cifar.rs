use std::sync::Arc;

use overparam_data::cifar::{self, CifarKind, ImageShape, PIXELS, Split};
use overparam_data::loader::{Augment, Loader, LoaderConfig, Normalize, prepare};
use overparam_data::synth::{CLASSES, write_synthetic_cifar100};

fn cfg(augment: Option<Augment>) -> LoaderConfig {
    LoaderConfig {
        batch_size: 16,
        shuffle: true,
        drop_last: true,
        augment,
        normalize: Normalize {
            mean: vec![0.5; 3],
            std: vec![0.25; 3],
        },
        seed: 7,
    }
}

#[test]
fn synthetic_set_round_trips_through_the_real_reader_and_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    write_synthetic_cifar100(dir.path(), 300, 100, 1).unwrap();
    let train = cifar::load(dir.path(), Split::Train).unwrap();
    let test = cifar::load(dir.path(), Split::Test).unwrap();
    assert_eq!(
        (train.len(), test.len(), train.num_classes),
        (300, 100, 100)
    );
    assert_eq!(train.images.len(), 300 * PIXELS);
    // Balanced: every class three times.
    let mut counts = vec![0; CLASSES];
    train.labels.iter().for_each(|&l| counts[l as usize] += 1);
    assert!(counts.iter().all(|&c| c == 3), "{counts:?}");
    // Coarse labels are fine / 5.
    let raw = std::fs::read(dir.path().join("train.bin")).unwrap();
    for r in raw.chunks(CifarKind::Cifar100.record_len()) {
        assert_eq!(r[0], r[1] / 5);
    }
    let again = tempfile::tempdir().unwrap();
    write_synthetic_cifar100(again.path(), 300, 100, 1).unwrap();
    assert!(std::fs::read(again.path().join("train.bin")).unwrap() == raw);
    write_synthetic_cifar100(again.path(), 300, 100, 2).unwrap();
    assert!(std::fs::read(again.path().join("train.bin")).unwrap() != raw);
    // Images are not degenerate: pixel statistics in a sane range.
    let (mean, std) = train.channel_stats();
    assert!(
        mean.iter().all(|m| (0.2..0.8).contains(m)) && std.iter().all(|s| *s > 0.1),
        "{mean:?} {std:?}"
    );
}

#[test]
fn truncated_files_and_bad_labels_name_the_file_and_record() {
    let dir = tempfile::tempdir().unwrap();
    write_synthetic_cifar100(dir.path(), 20, 10, 1).unwrap();
    let path = dir.path().join("train.bin");
    let mut raw = std::fs::read(&path).unwrap();
    std::fs::write(&path, &raw[..raw.len() - 10]).unwrap();
    let e = cifar::load(dir.path(), Split::Train)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("train.bin") && e.contains("record 19") && e.contains("truncated"),
        "{e}"
    );
    raw[3 * CifarKind::Cifar100.record_len() + 1] = 100;
    std::fs::write(&path, &raw).unwrap();
    let e = cifar::load(dir.path(), Split::Train)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("train.bin") && e.contains("record 3") && e.contains("fine label 100"),
        "{e}"
    );
    std::fs::remove_file(&path).unwrap();
    let e = cifar::load(dir.path(), Split::Train)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("train.bin") && e.contains("data_batch_1.bin"),
        "{e}"
    );
}

#[test]
fn cifar10_layout_is_read_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut rec = vec![9u8];
    rec.extend(std::iter::repeat_n(7u8, PIXELS));
    for i in 1..=5 {
        std::fs::write(dir.path().join(format!("data_batch_{i}.bin")), &rec).unwrap();
    }
    std::fs::write(dir.path().join("test_batch.bin"), &rec).unwrap();
    let s = cifar::load(dir.path(), Split::Train).unwrap();
    assert_eq!((s.len(), s.num_classes, s.labels[0]), (5, 10, 9));
}

#[test]
fn loader_is_deterministic_per_epoch_and_resumable() {
    let dir = tempfile::tempdir().unwrap();
    write_synthetic_cifar100(dir.path(), 100, 10, 3).unwrap();
    let set = Arc::new(cifar::load(dir.path(), Split::Train).unwrap());
    let aug = Some(Augment {
        crop_pad: 4,
        hflip: true,
    });
    let a: Vec<_> = Loader::spawn(set.clone(), cfg(aug), 0, 0).collect();
    let b: Vec<_> = Loader::spawn(set.clone(), cfg(aug), 0, 0).collect();
    assert_eq!(a.len(), 6); // 100 / 16, last partial batch dropped
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.images, y.images);
        assert_eq!(x.labels, y.labels);
    }
    let other: Vec<_> = Loader::spawn(set.clone(), cfg(aug), 1, 0).collect();
    assert_ne!(a[0].labels, other[0].labels);
    let resumed: Vec<_> = Loader::spawn(set.clone(), cfg(aug), 0, 4).collect();
    assert_eq!(resumed.len(), 2);
    assert_eq!(resumed[0].images, a[4].images);
    // Dropping a loader early does not hang.
    let mut l = Loader::spawn(set, cfg(aug), 2, 0);
    assert!(l.next().is_some());
    drop(l);
}

#[test]
fn augmentation_crops_with_zero_padding_and_flips() {
    let img: Vec<u8> = (0..PIXELS).map(|i| (i % 251) as u8).collect();
    let norm = Normalize {
        mean: vec![0.0; 3],
        std: vec![1.0; 3],
    };
    let mut plain = vec![0f32; PIXELS];
    prepare(&img, ImageShape::CIFAR, &norm, None, &mut plain);
    assert!((plain[5] - 5.0 / 255.0).abs() < 1e-7);
    let mut seen_flip = false;
    let mut seen_shift = false;
    for seed in 0..50 {
        let mut rng = overparam_base::Rng::new(seed);
        let mut out = vec![0f32; PIXELS];
        prepare(
            &img,
            ImageShape::CIFAR,
            &norm,
            Some((
                &Augment {
                    crop_pad: 4,
                    hflip: true,
                },
                &mut rng,
            )),
            &mut out,
        );
        seen_shift |= out.contains(&0.0) && out != plain;
        let mut flipped = vec![0f32; PIXELS];
        prepare(
            &img,
            ImageShape::CIFAR,
            &norm,
            Some((
                &Augment {
                    crop_pad: 0,
                    hflip: true,
                },
                &mut overparam_base::Rng::new(seed),
            )),
            &mut flipped,
        );
        if flipped != plain {
            seen_flip = true;
            // Row 0 of channel 0 is mirrored.
            assert_eq!(flipped[0], plain[31]);
        }
    }
    assert!(seen_flip && seen_shift);
}

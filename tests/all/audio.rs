//! Audio reading (PCM16 and float64 WAV, FLAC; real recordings in `fixtures/audio`),
//! corpora and their splits, and metric properties.
use sepprune::audio::{metrics, wav};
use std::path::PathBuf;

#[test]
fn float64_mixture_is_a_scaled_sum_of_its_references() {
    let (m, r) = wav::read(&fixture("speechbrain-mixture_1-0.5s.wav")).unwrap();
    let (a, _) = wav::read(&fixture("speechbrain-source1_1-0.5s.wav")).unwrap();
    let (b, _) = wav::read(&fixture("speechbrain-source2_1-0.5s.wav")).unwrap();
    assert_eq!(r, 16000);
    assert_eq!(m.len(), a.len());
    // the stored mixture is a rescaled sum of the references
    let sum: Vec<f32> = a.iter().zip(&b).map(|(&a, &b)| a + b).collect();
    let fit = metrics::si_sdr(&m, &sum);
    assert!(
        fit > 40.0,
        "mixture is not a scaled s1 + s2 (SI-SDR {fit} dB)"
    );
    // PIT: the references score +inf-like SI-SDR in either order
    let s = metrics::score(&[b.clone(), a.clone()], &[a.clone(), b.clone()], &m);
    assert!(s.si_sdr > 80.0 && s.si_sdri > 70.0, "{s:?}");
}

#[test]
fn pcm16_speech_reads_in_range() {
    let (x, r) = wav::read(&fixture("librispeech-103-1240-0000-1.5s.wav")).unwrap();
    assert_eq!(r, 16000);
    assert!(x.len() > 16000);
    let peak = x.iter().fold(0f32, |a, &v| a.max(v.abs()));
    assert!(peak > 0.01 && peak <= 1.0);
}

#[test]
fn both_metrics_are_scale_invariant_and_only_sdr_forgives_a_short_filter() {
    let (x, _) = wav::read(&fixture("librispeech-103-1240-0000-1.5s.wav")).unwrap();
    let noisy: Vec<f32> = x
        .iter()
        .enumerate()
        .map(|(i, &v)| v + 0.01 * ((i * 7919 % 101) as f32 / 50.0 - 1.0))
        .collect();
    let scaled: Vec<f32> = noisy.iter().map(|&v| 3.0 * v).collect();
    assert!((metrics::si_sdr(&noisy, &x) - metrics::si_sdr(&scaled, &x)).abs() < 1e-6);
    assert!((metrics::sdr(&noisy, &x) - metrics::sdr(&scaled, &x)).abs() < 1e-3);
    // a 5-sample delay (0.3 ms) is a distortion that BSS Eval's 512-tap filter absorbs
    let delayed: Vec<f32> = (0..noisy.len())
        .map(|i| if i >= 5 { noisy[i - 5] } else { 0.0 })
        .collect();
    let (sdr, si) = (metrics::sdr(&delayed, &x), metrics::si_sdr(&delayed, &x));
    assert!(sdr > metrics::sdr(&noisy, &x) - 1.0, "SDR {sdr}");
    assert!(si < sdr - 10.0, "SI-SDR {si}, SDR {sdr}");
}

#[test]
fn resampling_keeps_a_tone() {
    let x: Vec<f32> = (0..8000)
        .map(|i| (2.0 * std::f32::consts::PI * 440.0 * i as f32 / 8000.0).sin())
        .collect();
    let y = wav::resample(&x, 8000, 16000).unwrap();
    assert_eq!(y.len(), 16000);
    // frequency (zero crossings: 2 per period) and amplitude (RMS of a unit sine) survive
    let mid = &y[400..15600];
    let crossings = mid
        .windows(2)
        .filter(|w| (w[0] < 0.0) != (w[1] < 0.0))
        .count() as f64;
    let expected = 2.0 * 440.0 * mid.len() as f64 / 16000.0;
    assert!(
        (crossings - expected).abs() <= 2.0,
        "{crossings} zero crossings, expected {expected}"
    );
    let rms = (mid.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / mid.len() as f64).sqrt();
    assert!(
        (rms - std::f64::consts::FRAC_1_SQRT_2).abs() < 0.01,
        "rms {rms}"
    );
}

#[test]
fn missing_reference_is_reported_by_name() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("mix")).unwrap();
    std::fs::create_dir_all(dir.path().join("s1")).unwrap();
    wav::write(&dir.path().join("mix/a.wav"), &[0.1, 0.2, 0.3], 16000).unwrap();
    let err = sepprune::audio::dataset::load(dir.path(), 16000)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("a.wav") && err.contains("missing"), "{err}");
}

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/audio")
        .join(name)
}

/// FLAC is lossless: the decoded samples equal the PCM16 WAV written from the same PCM.
#[test]
fn flac_decodes_to_the_same_samples_as_its_wav() {
    let (f, rf) = wav::read(&fixture("librispeech-103-1240-0000-1.5s.flac")).unwrap();
    let (w, rw) = wav::read(&fixture("librispeech-103-1240-0000-1.5s.wav")).unwrap();
    assert_eq!((rf, rw), (16000, 16000));
    assert_eq!(f.len(), 24000);
    assert_eq!(f.len(), w.len());
    let diff = f
        .iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-7, "max difference {diff}");
    assert!(f.iter().any(|&v| v.abs() > 0.05), "speech, not silence");
}

/// A stereo FLAC at 22.05 kHz: channels averaged, and resampled to the asked rate.
#[test]
fn stereo_flac_is_mixed_down_and_resampled() {
    let p = fixture("stereo-22050.flac");
    let (x, r) = wav::read(&p).unwrap();
    assert_eq!(r, 22050);
    assert_eq!(x.len(), 11025);
    let (w, _) = wav::read(&fixture("librispeech-103-1240-0000-1.5s.wav")).unwrap();
    // the file's channels are the first and second halves of the 1.5 s
    let want: Vec<f32> = (0..11025).map(|i| (w[i] + w[11025 + i]) / 2.0).collect();
    let diff = x
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-4, "max difference {diff}");
    let y = wav::read_at(&p, 16000).unwrap();
    assert_eq!(y.len(), (11025.0f64 * 16000.0 / 22050.0).round() as usize);
    assert!(wav::read(&fixture("README.md")).is_err());
}

/// A corpus in two layouts: flat LibriSpeech names (`SPK-CHAPTER-UTT.wav`) and one folder
/// per speaker; noise takes named `Category<digit>.wav`.
fn tiny_corpus(root: &std::path::Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let tone =
        |f: f32, n: usize| -> Vec<f32> { (0..n).map(|i| (i as f32 * f).sin() * 0.3).collect() };
    let flat = root.join("flat");
    let folders = root.join("folders");
    let noise = root.join("noise");
    for spk in 0..12 {
        for utt in 0..2 {
            let p = flat.join(format!("{}-{}-{utt:04}.wav", 100 + spk, 7 + utt));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            wav::write(&p, &tone(0.01 * (spk + 1) as f32, 3000 + 100 * utt), 16000).unwrap();
        }
    }
    for spk in ["anna", "bob", "cleo", "dan", "eve"] {
        for utt in 0..2 {
            let p = folders
                .join(spk)
                .join("chapter")
                .join(format!("u{utt}.wav"));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            wav::write(&p, &tone(0.03, 2500), 16000).unwrap();
        }
    }
    std::fs::create_dir_all(&noise).unwrap();
    for (k, cat) in [
        "Farm", "Fire", "Harbor", "Mill", "Rocket", "Tip", "Water", "Green",
    ]
    .iter()
    .enumerate()
    {
        for take in 1..=2 {
            let n = sepprune::verify::test_signal(4000 + 10 * k + take, 16000.0);
            wav::write(&noise.join(format!("{cat}{take}.wav")), &n, 16000).unwrap();
        }
    }
    (vec![flat, folders], vec![noise])
}

/// Splits depend only on the names and the seed, and no speaker or noise category (so no
/// file) is in two splits.
#[test]
fn corpus_splits_are_deterministic_and_disjoint() {
    use sepprune::audio::corpus::{split, Corpus, SplitBy};
    use std::collections::BTreeSet;
    let dir = tempfile::tempdir().unwrap();
    let (speech, noise) = tiny_corpus(dir.path());
    let c = Corpus::scan(&speech, &noise).unwrap();
    let (speakers, categories) = c.groups();
    assert_eq!(speakers.len(), 17, "{speakers:?}");
    assert!(speakers.contains("100") && speakers.contains("anna"));
    assert_eq!(categories.len(), 8, "{categories:?}");
    assert!(categories.contains("harbor"));
    let by = [SplitBy::Speaker, SplitBy::Noise];
    let a = split(&c, &by, 0.2, 0.2, 3).unwrap();
    assert_eq!(
        a,
        split(&c, &by, 0.2, 0.2, 3).unwrap(),
        "same seed, same split"
    );
    assert_ne!(
        a,
        split(&c, &by, 0.2, 0.2, 4).unwrap(),
        "another seed, another split"
    );
    let parts = [&a.train, &a.val, &a.test];
    for field in [0, 1] {
        let groups: Vec<BTreeSet<String>> = parts
            .iter()
            .map(|p| {
                let v = if field == 0 { &p.speech } else { &p.noise };
                v.iter().map(|s| s.group.clone()).collect()
            })
            .collect();
        for i in 0..3 {
            assert!(!groups[i].is_empty());
            for j in i + 1..3 {
                assert!(groups[i].is_disjoint(&groups[j]), "{:?}", groups);
            }
        }
        let files: usize = parts
            .iter()
            .map(|p| {
                if field == 0 {
                    p.speech.len()
                } else {
                    p.noise.len()
                }
            })
            .sum();
        assert_eq!(
            files,
            if field == 0 {
                c.speech.len()
            } else {
                c.noise.len()
            }
        );
    }
    assert_eq!(a.test.groups().0.len(), 3, "20% of 17 speakers");
    // splitting only by speaker leaves every noise in every split
    let s = split(&c, &[SplitBy::Speaker], 0.2, 0.2, 3).unwrap();
    assert_eq!(s.test.noise, c.noise);
    assert!(split(&c, &by, 0.2, 0.2, 3).is_ok());
}

/// A split's set records each mixture's conditions and the split's sources.
#[test]
fn split_sets_record_conditions_and_sources() {
    use sepprune::audio::corpus::{split, Corpus, SplitBy};
    use sepprune::audio::dataset;
    let dir = tempfile::tempdir().unwrap();
    let (speech, noise) = tiny_corpus(dir.path());
    let c = Corpus::scan(&speech, &noise).unwrap();
    let s = split(&c, &[SplitBy::Speaker, SplitBy::Noise], 0.2, 0.2, 1).unwrap();
    let out = dir.path().join("set/test");
    let n = dataset::build_split(&s.test, &out, 7, &[0.0, 5.0], 0.1, 16000, 9).unwrap();
    assert_eq!(n, 7);
    let cond = dataset::conditions(&out).unwrap().unwrap();
    assert_eq!(cond.len(), 7);
    let (speakers, categories) = s.test.groups();
    for c in cond.values() {
        assert!(speakers.contains(c.speaker.as_str()));
        assert!(categories.contains(c.noise_category.as_str()));
        assert!(c.snr_db == 0.0 || c.snr_db == 5.0);
    }
    let ex = dataset::load(&out, 16000).unwrap();
    assert_eq!(ex.len(), 7);
    assert!(ex
        .iter()
        .all(|e| e.mix.len() <= 1600 && e.sources.len() == 1));
    // the measured SNR of each mixture is the one recorded
    for e in &ex {
        let noise: Vec<f32> = e
            .mix
            .iter()
            .zip(&e.sources[0])
            .map(|(m, s)| m - s)
            .collect();
        let p = |x: &[f32]| x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>();
        let snr = 10.0 * (p(&e.sources[0]) / p(&noise)).log10();
        assert!(
            (snr - cond[&e.name].snr_db).abs() < 0.01,
            "{} {snr}",
            e.name
        );
    }
    let back = Corpus::of_split(&out).unwrap().unwrap();
    assert_eq!(back, s.test);
}

#[test]
fn speaker_verification_scores_every_pair_of_speaker_folders() {
    use crate::common::G;
    use sepprune::onnx::{int_attr, ints_attr};
    // a waveform-in "speaker encoder": 4 filters, magnitude, mean over time -> [1, 4]
    let mut g = G::new(&[1, -1]);
    let ax = g.const_i("ax1", vec![1]);
    let x = g.node("Unsqueeze", &["x", &ax], vec![]); // [1, 1, T]
    let c = g.conv(&x, 1, 4, 8, 1, 0);
    let a = g.node("Abs", &[&c], vec![]);
    let e = g.node(
        "ReduceMean",
        &[&a],
        vec![ints_attr("axes", &[2]), int_attr("keepdims", 0)],
    );
    let model = g.output(&e, &[1, 4]);
    let dir = tempfile::tempdir().unwrap();
    // two "speakers": low and high tones, three utterances each of different lengths
    crate::common::speaker_tones(dir.path(), &[("a", 0.02), ("b", 0.6)], 1600);
    let r = sepprune::sv::evaluate(&model, dir.path(), sepprune::runtime::Runtime::Tract, false)
        .unwrap();
    assert_eq!((r.utterances, r.speakers), (6, 2));
    assert_eq!((r.trials, r.target_trials), (15, 6));
    assert!((0.0..=1.0).contains(&r.eer) && r.min_dcf >= 0.0);
    // tones this far apart are told apart by any four random filters' energies
    assert!(r.eer < 0.2, "EER {}", r.eer);
    // a flat directory has no speakers
    let flat = tempfile::tempdir().unwrap();
    std::fs::copy(dir.path().join("a/u0.wav"), flat.path().join("u0.wav")).unwrap();
    assert!(sepprune::sv::evaluate(
        &model,
        flat.path(),
        sepprune::runtime::Runtime::Tract,
        false
    )
    .is_err());
}
